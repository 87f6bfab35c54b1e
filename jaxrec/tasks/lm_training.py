"""What the tasks that train an LM on one objective share: the
:class:`Objective` contract and the task around it.

An objective is one module in its method's package (LLM2Rec's ``csft``,
``mntp`` and ``contrastive``, LLMEmb's ``scft``): its config class, its
examples and their collation, the binding of its loss to the decoder, and its
``TASK``, made here with :func:`lm_task`. The task loads the LM (a base model,
or a run's trained LM through ``model.init_from``), trains it and writes
checkpoints, ``metrics.jsonl`` and its trained LM (the ``lm`` output: LoRA
factors, full weights or the chosen subtrees; the best validation state if
validation ran, else the last), which a later stage loads with
``model.init_from``.
"""

from __future__ import annotations

import functools

import jax
import numpy as np

from jaxrec import runs
from jaxrec.data.batches import GrainBatches
from jaxrec.data.prep import SeqData
from jaxrec.errors import ConfigError
from jaxrec.models.decoder import Decoder
from jaxrec.models.lm import LM
from jaxrec.runs import Run
from jaxrec.tasks.specs import LMTrainingConfig, Task
from jaxrec.train.loop import mean_over_batches
from jaxrec.train.session import TrainingSession, gather, trainable_count


def pad_id(lm: LM) -> int:
    tok = lm.tokenizer
    for candidate in (lm.config.pad_token_id, tok.pad_token_id, tok.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def apply_decoder(model: Decoder, variables, ids, mask, kind: str, output: str, rng, **options):
    """The decoder in training mode (dropout on) with ``kind`` attention."""
    return model.apply(variables, ids, mask, mask=kind, output=output, deterministic=False,
                       rngs={"dropout": rng}, **options)


def no_params(rng) -> dict:
    """``init_params`` of an objective that trains nothing of its own."""
    return {}


class Objective:
    """One objective's examples, batches and loss. ``count`` examples, each
    built by ``example(index, rng)`` (rng: Grain's per-example generator) and
    batched by ``collate``; ``validation_examples`` are fixed. ``loss(model)``
    returns ``(init_params, loss)``: ``init_params(rng)`` gives the objective's
    own trainable parameters (a learnable temperature; often none) and
    ``loss(variables, objective_params, batch, rng) -> (loss, metrics)``.
    ``blocks``: the devices this process's part of a batch is split over
    (packed rows are packed per device); ``packable``: whether ``batch.pack``
    applies."""

    packable = False

    def __init__(self, config: LMTrainingConfig, lm: LM, data: SeqData, blocks: int = 1):
        self.config, self.lm, self.tok, self.blocks = config, lm, lm.tokenizer, blocks
        self.spec, self.pad_id = config.batch, pad_id(lm)

    count: int

    def example(self, index: int, rng: np.random.Generator):
        raise NotImplementedError

    def collate(self, examples) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def loss(self, model: Decoder):
        raise NotImplementedError

    def validation_examples(self) -> list:
        """At most ``batch.size * eval_batches`` fixed examples: a sample of
        items (CSFT overrides: the first users' validation targets)."""
        rng = np.random.default_rng([self.config.seed, 1])
        order = rng.permutation(self.count)[: self.spec.size * self.spec.eval_batches]
        return [self.example(int(i), rng) for i in order]

    def validation_batches(self, block: int = 0, blocks: int = 1) -> list[dict[str, np.ndarray]]:
        """This process's part (``block`` of ``blocks``) of each validation batch."""
        size, examples = self.spec.size, self.validation_examples()
        part = size // blocks
        return [self.collate(examples[i + block * part : i + (block + 1) * part])
                for i in range(0, len(examples) - size + 1, size)]


def lm_task(name: str, config: type[LMTrainingConfig], objective: type[Objective], help: str) -> Task:
    """The task that trains ``objective`` on an LM."""
    return Task(name, config, functools.partial(train_objective, objective), help, packs_examples=objective.packable)


def train_objective(objective_class: type[Objective], config: LMTrainingConfig, run: Run, log=print) -> dict:
    if config.batch.with_replacement:
        raise ConfigError(f"batch.with_replacement is a seqrec option; the {config.task} task passes over its "
                          "examples in shuffled epochs: set batch.with_replacement=false")
    mode = config.trainable.mode
    session = TrainingSession(config.mesh, config.optimizer, config.loop, config.seed)
    lm = config.model.load(param_dtype="float32" if mode != "lora" else config.model.dtype,
                           shardings=session.param_shardings)
    if lm.tokenizer is None:
        raise ConfigError(f"{lm.source} has no tokenizer: set model.tokenizer")
    run.set_model(lm)
    log(f"model: {lm}" + (f", trained along {len(lm.lineage)} run(s) up to {lm.lineage[-1]['run']}" if lm.lineage else ""))
    data = config.data.load(config.seed, log)
    objective = objective_class(config, lm, data, session.local_batch_rows)
    log(f"{objective.count} {config.task} examples")
    log(f"mesh: {dict(session.mesh.shape)} over {jax.device_count()} device(s), {jax.process_count()} process(es)")

    lora = config.trainable.lora_spec()
    model = Decoder(lm.config.replace(lora=lora))
    variables = session.place(model, lm.params)
    block, blocks = session.batch_block
    batches = GrainBatches(
        objective.count, config.batch.size, objective.example, objective.collate, seed=config.seed,
        process_index=block, process_count=blocks, workers=config.batch.workers,
    )
    engine = session.engine(model, variables, objective.loss(model), config.trainable.patterns(), batches.steps_per_epoch)
    trainable = trainable_count(engine)
    log(f"trainable: {trainable:,} parameters ({mode})")

    identity = {**lm.identity(), "task": config.task, "trainable": mode}
    # built once: the same fixed batches at every validation
    validation = objective.validation_batches(block, blocks) if config.loop.eval_every else []
    if config.loop.eval_every and not validation:
        raise ConfigError(f"{len(objective.validation_examples())} validation examples do not fill one batch of "
                          f"batch.size={config.batch.size}: lower batch.size, or set loop.eval_every=0 to "
                          "train without validation")
    validate = mean_over_batches(engine, lambda: validation)
    result = session.fit(engine, batches, run.path, identity, validate=validate, log=log)
    runs.save_lm(run, gather(engine.state.trainable["model"]), mode, lora, lm.config.extra_tokens)
    summary = {**result.summary, "task": config.task, "trainable_parameters": trainable,
               "lm_from_step": result.best_step or result.summary["steps"]}
    log(f"done: {summary}")
    return summary
