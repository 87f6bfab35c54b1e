"""Tasks ``csft``, ``mntp``, ``contrastive`` and ``scft``: train one objective
on an LM (a base model, or a run's trained LM through ``model.init_from``).

Each objective is a unit that owns its examples, their collation and the
binding of its loss to the decoder; the task around them is the same. The run
writes checkpoints, ``metrics.jsonl`` and its trained LM (the ``lm`` output:
LoRA factors, full weights or the chosen subtrees; the best validation state
if validation ran, else the last), which a later stage loads with
``model.init_from``.
"""

from __future__ import annotations

import dataclasses
import itertools

import jax
import numpy as np

from jaxrec import runs
from jaxrec.data.prep import SeqData
from jaxrec.data.text_examples import (attribute_text, attribute_view, csft_example, csft_targets, item_attributes,
                                      pad_batch)
from jaxrec.data.batches import GrainBatches
from jaxrec.errors import ConfigError
from jaxrec.models.decoder import Decoder
from jaxrec.models.lm import LM
from jaxrec.objectives import csft, model_losses
from jaxrec.objectives.model_losses import ContrastiveSpec, MaskingSpec, ScftSpec
from jaxrec.runs import Run
from jaxrec.shapes import pack_sequences
from jaxrec.tasks.specs import LMTrainingConfig, Task
from jaxrec.train.loop import mean_over_batches
from jaxrec.train.session import TrainingSession, gather, trainable_count


@dataclasses.dataclass
class CsftConfig(LMTrainingConfig):
    task: str = "csft"


@dataclasses.dataclass
class MntpConfig(LMTrainingConfig):
    task: str = "mntp"
    masking: MaskingSpec = dataclasses.field(default_factory=MaskingSpec)


@dataclasses.dataclass
class ContrastiveConfig(LMTrainingConfig):
    task: str = "contrastive"
    masking: MaskingSpec = dataclasses.field(default_factory=MaskingSpec)
    contrastive: ContrastiveSpec = dataclasses.field(default_factory=ContrastiveSpec)


@dataclasses.dataclass
class ScftConfig(LMTrainingConfig):
    task: str = "scft"
    scft: ScftSpec = dataclasses.field(default_factory=ScftSpec)


def pad_id(lm: LM) -> int:
    tok = lm.tokenizer
    for candidate in (lm.config.pad_token_id, tok.pad_token_id, tok.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def mask_token_id(lm: LM, masking: MaskingSpec) -> int:
    """The id that replaces masked tokens: ``mask_token_id``, else the single
    token ``mask_token`` stands for, else the tokenizer's mask / pad token."""
    if masking.mask_token_id is not None:
        if not 0 <= masking.mask_token_id < lm.config.vocab_size:
            raise ConfigError(f"masking.mask_token_id {masking.mask_token_id} is outside the vocabulary "
                              f"(0..{lm.config.vocab_size - 1})")
        return masking.mask_token_id
    tok = lm.tokenizer
    if masking.mask_token is None:
        return int(tok.mask_token_id if tok.mask_token_id is not None else pad_id(lm))
    ids = tok(masking.mask_token, add_special_tokens=False)["input_ids"]
    if len(ids) != 1 or ids[0] == tok.unk_token_id:
        raise ConfigError(f"masking.mask_token {masking.mask_token!r} is not one token of {lm.source}'s tokenizer "
                          f"(it encodes to {ids}); choose another mask_token, set masking.mask_token_id, or "
                          "masking.mask_token=null for the tokenizer's own mask / pad token")
    return int(ids[0])


class Objective:
    """One objective's examples, batches and loss. ``count`` examples, each
    built by ``example(index, rng)`` (rng: Grain's per-example generator) and
    batched by ``collate``; ``validation_examples`` are fixed. ``blocks``: the
    devices this process's part of a batch is split over (packed rows are
    packed per device)."""

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


class _TitleObjective(Objective):
    """mntp and contrastive: one example per item title, padded or packed rows."""

    def __init__(self, config, lm, data, blocks=1):
        super().__init__(config, lm, data, blocks)
        # held-out cold items' titles are never trained on
        self.titles = self.tok([data.titles[i] for i in data.warm_items()], add_special_tokens=True, truncation=True,
                               max_length=self.spec.max_length)["input_ids"]
        self.count = len(self.titles)
        self.specials = tuple(int(i) for i in self.tok.all_special_ids)
        self.mask_id = mask_token_id(lm, config.masking)

    def example(self, index, rng):
        return self.titles[index]

    def collate(self, examples):
        if self.spec.pack:  # packed per device, each device's rows holding its own titles
            return pack_sequences(list(examples), self.spec.max_length, self.pad_id, self.spec.max_length,
                                  self.blocks)
        return pad_batch(list(examples), self.pad_id, self.spec.max_length)


class Mntp(_TitleObjective):
    def loss(self, model):
        return model_losses.make_mntp(model, self.config.masking, self.mask_id, self.specials)


class Contrastive(_TitleObjective):
    def loss(self, model):
        spec = self.config.contrastive
        if spec.views == "dropout" and not model.config.attention_dropout:
            raise ConfigError(
                "contrastive.views=dropout needs dropout to differ between the two views: "
                "set model.attention_dropout (LLM2Rec uses 0.2) or contrastive.views=masking"
            )
        return model_losses.make_contrastive(model, spec, self.config.masking, self.mask_id, self.specials)


class Scft(Objective):
    """Two attribute-prompt views of each item, attributes shuffled and dropped
    independently; drawn once per item (seeded by it) unless scft.views=per_epoch."""

    def __init__(self, config, lm, data, blocks=1):
        super().__init__(config, lm, data, blocks)
        warm = data.warm_items()
        self.items = item_attributes([data.titles[i] for i in warm], [data.attributes[i] for i in warm])
        self.count = len(self.items)

    def example(self, index, rng):
        if self.config.scft.views == "fixed":
            rng = np.random.default_rng([self.config.seed, 3, index])
        scft = self.config.scft
        return tuple(attribute_text(attribute_view(self.items[index], rng, self.spec.attribute_drop, scft.drop_rounding),
                                    self.spec.domain) for _ in range(2))

    def collate(self, examples):
        batch = {}
        for view, texts in zip(("view_a", "view_b"), zip(*examples)):
            ids = self.tokenize(list(texts))
            padded = pad_batch(ids, self.pad_id, self.spec.max_length)
            batch[f"{view}_input_ids"], batch[f"{view}_attention_mask"] = padded["input_ids"], padded["attention_mask"]
        return batch

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Prompt ids within max_length: with scft.special_tokens=eos, no special tokens and EOS last."""
        if self.config.scft.special_tokens == "bos":
            return self.tok(texts, truncation=True, max_length=self.spec.max_length)["input_ids"]
        ids = self.tok(texts, add_special_tokens=False, truncation=True, max_length=self.spec.max_length - 1)["input_ids"]
        return [row + [self.tok.eos_token_id] for row in ids]

    def loss(self, model):
        return model_losses.make_scft(model, self.config.scft)


class Csft(Objective):
    """Next-title generation: each position of a user's training sequence is
    the target of the titles before it (left-padded)."""

    def __init__(self, config, lm, data, blocks=1):
        super().__init__(config, lm, data, blocks)
        self.sequences = [[data.titles[i] for i in data.sequence(u)] for u in range(data.num_users)]
        self.pairs = csft_targets(self.sequences)
        self.count = len(self.pairs)

    def example(self, index, rng):
        user, position = self.pairs[index]
        return self._example(int(user), int(position))

    def _example(self, user: int, position: int):
        history = self.sequences[user][max(0, position - self.spec.max_history) : position]
        return csft_example(self.tok, history, self.sequences[user][position], self.spec.max_length,
                            self.spec.csft_separator)

    def collate(self, examples):
        return csft.collate(examples, self.pad_id, self.spec.max_length, self.spec.pack, self.blocks)

    def validation_examples(self):
        """Each of the first users' second-to-last item, from the titles before it."""
        users = (u for u, s in enumerate(self.sequences) if len(s) >= 3)
        return [self._example(u, len(self.sequences[u]) - 2)
                for u in itertools.islice(users, self.spec.size * self.spec.eval_batches)]

    def loss(self, model):
        return model_losses.make_csft(model)


OBJECTIVES: dict[str, type[Objective]] = {"csft": Csft, "mntp": Mntp, "contrastive": Contrastive, "scft": Scft}
PACKABLE = ("csft", "mntp", "contrastive")


def run(config: LMTrainingConfig, run: Run, log=print) -> dict:
    if config.batch.pack and config.task not in PACKABLE:
        raise ConfigError(f"batch.pack works for the {', '.join(PACKABLE)} tasks; set batch.pack=false")
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
    objective = OBJECTIVES[config.task](config, lm, data, session.local_batch_rows)
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


_HELP = {
    "csft": (CsftConfig, "causal LM fine-tuning on users' title sequences (LLM2Rec step 1)"),
    "mntp": (MntpConfig, "masked next-token prediction on item titles, bidirectional (LLM2Rec step 2a)"),
    "contrastive": (ContrastiveConfig, "item-level contrastive learning on titles (LLM2Rec step 2b)"),
    "scft": (ScftConfig, "supervised contrastive fine-tuning on attribute prompts (LLMEmb step 1)"),
}
TASKS = [Task(name, cls, run, text) for name, (cls, text) in _HELP.items()]
