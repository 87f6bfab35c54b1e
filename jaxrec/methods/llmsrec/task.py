"""Task ``llmsrec``: distil a trained SASRec's user vectors into a frozen
decoder (LLM-SRec), then evaluate the decoder as a recommender.

One training example per user: the prompt of its latest ``distill.max_history``
training items before its last training item, which is the target; the
teacher's user vector of the same history is precomputed once; each batch's
retrieval negatives are drawn on the host, distinct and never among the
user's training items. Only the heads and the added tokens' embeddings train. Validation ranks every item
(``loop.monitor``); the best state is tested with ``evaluation``'s settings
(LLM-SRec reports sampled 1 + 99 ranking and the shuffle diagnostics).

The run directory gets checkpoints, ``best/``, ``metrics.jsonl`` and the
outputs ``test_metrics``, ``heads`` (f_I, f_user, f_item, f_CF of the tested
state) and ``lm`` (the added token rows: a later stage's ``model.init_from``
gets the decoder with them).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec import runs
from jaxrec.config import non_default_fields
from jaxrec.data.batches import IndexBatches
from jaxrec.errors import ConfigError
from jaxrec.methods.llmsrec.model import (TRAINABLE, DistillHeads, Distiller, item_start_cache, item_start_cache_bytes,
                                  make_objective)
from jaxrec.methods.llmsrec.prompts import EXTRA_TOKENS, TOKEN_NAMES, InteractionDays, Prompts
from jaxrec.methods.llmsrec.spec import DistillSpec
from jaxrec.methods.llmsrec.teacher import Teacher
from jaxrec.models.decoder import Decoder
from jaxrec.runs import Run
from jaxrec.seqrec.evaluate import SplitRanking, batched, best_state_on_test, seeds_summary
from jaxrec.seqrec.histories import evaluation_examples, training_user_items
from jaxrec.seqrec.spec import EvalSpec, ranking_monitor
from jaxrec.tasks.specs import ModelSpec, Task, TrainingConfig
from jaxrec.train.session import TrainingSession, gather, trainable_count


@dataclasses.dataclass
class LlmsrecConfig(TrainingConfig):
    task: str = "llmsrec"
    model: ModelSpec = dataclasses.field(default_factory=ModelSpec)
    distill: DistillSpec = dataclasses.field(default_factory=DistillSpec)
    evaluation: EvalSpec = dataclasses.field(default_factory=EvalSpec)

    def __post_init__(self):
        self.loop = ranking_monitor(self.loop, self.evaluation)


def distiller(lm_config, spec: DistillSpec) -> Distiller:
    """The frozen decoder with LLM-SRec's added tokens, and the heads."""
    return Distiller(Decoder(lm_config.replace(extra_tokens=EXTRA_TOKENS)),
                     DistillHeads(lm_config.hidden_size, spec.head_hidden, spec.out_dim, spec.head_activation,
                                  spec.teacher_activation))


def prompts_for(lm, data, spec: DistillSpec) -> tuple[Prompts, InteractionDays | None]:
    """The prompts of ``data``'s users and items, and the days they show (None: prompts without dates)."""
    days = InteractionDays(data) if spec.dates else None
    return Prompts(lm.tokenizer, data.titles, lm.config.vocab_size, spec.max_history, spec.title_tokens,
                   None if days is None else days.all_days()), days


def frozen_constants(teacher: Teacher, prompts: Prompts, num_items: int) -> dict:
    """What the model reads and never trains: the teacher's item table and every item prompt's parts."""
    return {"teacher_items": teacher.item_table(), **{f"item_{k}": v for k, v in prompts.item_parts(num_items).items()}}


def every_item_vector(item_fn, variables: dict, num_items: int, batch_size: int, progress: str | None = None):
    """f_item of every item's prompt [num_items + 1, out] (row 0, padding, zero)."""
    items = batched(lambda ids: item_fn(variables, ids), np.arange(num_items + 1, dtype=np.int32),
                    batch_size=batch_size, progress=progress)
    items[0] = 0.0
    return items


def _variables(model: Distiller, lm, teacher: Teacher, prompts: Prompts, num_items: int, config: LlmsrecConfig,
               session: TrainingSession, log=print) -> dict:
    rng_tokens, rng_heads = jax.random.split(jax.random.key(config.seed))
    # an LM that already has the added rows (init_from an llmsrec run) starts from them
    added = lm.params.get("extra_embedding")
    if added is None:
        added = 0.02 * jax.random.normal(rng_tokens, (EXTRA_TOKENS, lm.config.hidden_size), jnp.float32)
    llm = session.place(model.decoder, {**lm.params, "extra_embedding": added}, rng_tokens)["params"]
    constants = frozen_constants(teacher, prompts, num_items)
    starts = constants["item_start_ids"]
    megabytes = item_start_cache_bytes(model.decoder.config, starts) * jax.local_device_count() / 2**20
    if megabytes <= config.distill.item_start_cache_mb:
        log(f"item prompts: the keys and values of their starts ({starts.shape[1]} tokens) computed once, "
            f"{megabytes:,.0f} MB")
        constants.update(item_start_cache(model.decoder, llm, starts, constants["item_start_mask"]))
    else:
        log(f"item prompts: their starts' keys and values would take {megabytes:,.0f} MB, above "
            f"distill.item_start_cache_mb; computed for each step's candidates instead")
    rest = session.replicate({"params": {"heads": model.init_heads(rng_heads, teacher.dim)}, "constants": constants})
    return {"params": {"llm": llm, **rest["params"]}, "constants": rest["constants"]}


class _Evaluator:
    """Scores a split with the current variables: every item's vector once,
    then each user's from its prompt (row u of a split is user u)."""

    def __init__(self, model: Distiller, prompts: Prompts, days: InteractionDays | None, data, config: LlmsrecConfig):
        self.prompts, self.days, self.config, self.num_items = prompts, days, config, data.num_items
        self.ranking = SplitRanking(data, config.evaluation, config.distill.max_history)
        self.user_fn = jax.jit(model.user_vectors)
        self.item_fn = jax.jit(model.item_vectors)

    def __call__(self, variables, part: str, diagnostics: bool) -> dict:
        spec = self.config.evaluation
        items = every_item_vector(self.item_fn, variables, self.num_items, spec.batch_size, f"{part}: item vectors")
        prompt = lambda h, u: self.prompts.users(h, None if self.days is None else self.days(u, h))
        users = lambda histories: batched(lambda h, u: self.user_fn(variables, prompt(h, u)), histories,
                                          np.arange(len(histories)), batch_size=spec.batch_size,
                                          progress=f"{part}: user vectors")
        return self.ranking(users, items, part, self.config.seed, diagnostics)


@dataclasses.dataclass
class _Training:
    """Everything a run trains and tests with."""

    model: Distiller
    session: TrainingSession
    engine: object
    batches: IndexBatches
    evaluator: _Evaluator
    prompts: Prompts
    teacher: Teacher


def build_training(config: LlmsrecConfig, data, lm, log=print, session: TrainingSession | None = None) -> _Training:
    spec = config.distill
    teacher = Teacher(spec.teacher, [str(i) for i in data.item_ids])
    prompts, days = prompts_for(lm, data, spec)
    history, target, _ = evaluation_examples(data, "train", max(spec.max_history, teacher.spec.backbone.max_history))
    users = np.flatnonzero(history[:, 0] > 0)
    history, target = history[users], target[users]
    history_days = None if days is None else days(users, history)
    teacher_users = teacher.user_vectors(history)
    log(f"data: {data.num_users} users, {data.num_items} items; {len(users)} training users; "
        f"prompts up to {prompts.user_length} (user) / {prompts.item_length} (item) tokens")

    model = distiller(lm.config, spec)
    session = session or TrainingSession(config.mesh, config.optimizer, config.loop, config.seed)
    variables = _variables(model, lm, teacher, prompts, data.num_items, config, session, log)
    own_items = training_user_items(data)

    def collate(rows, rng):
        return {**prompts.users(history[rows], None if history_days is None else history_days[rows]),
                "target": target[rows], "teacher": teacher_users[rows],
                "negatives": own_items.sample(rng, users[rows], spec.negatives).astype(np.int32)}

    block, blocks = session.batch_block
    batches = IndexBatches(len(users), config.batch.size, collate, seed=config.seed,
                           process_index=block, process_count=blocks)
    engine = session.engine(model, variables, make_objective(model, spec), TRAINABLE, batches.steps_per_epoch)
    return _Training(model, session, engine, batches, _Evaluator(model, prompts, days, data, config), prompts, teacher)


def run(config: LlmsrecConfig, run: Run, log=print) -> dict:
    spec = config.distill
    if spec.teacher is None:
        raise ConfigError("distill.teacher is not set: train an ID SASRec with the seqrec task first and point "
                          "distill.teacher at its run directory")
    data = config.data.load(config.seed, log)
    session = TrainingSession(config.mesh, config.optimizer, config.loop, config.seed)
    lm = config.model.load(shardings=session.param_shardings)
    if lm.tokenizer is None:
        raise ConfigError(f"{lm.source} has no tokenizer: set model.tokenizer")
    if lm.config.extra_tokens not in (0, EXTRA_TOKENS):
        raise ConfigError(f"{lm.source} already has {lm.config.extra_tokens} added tokens; LLM-SRec adds {EXTRA_TOKENS}")
    run.set_model(lm)
    training = build_training(config, data, lm, log, session)
    engine = training.engine
    log(f"model: {lm}; teacher: {training.teacher.source}")
    trainable = trainable_count(engine)
    log(f"trainable: {trainable:,} parameters (heads and {EXTRA_TOKENS} added token embeddings)")

    identity = {**lm.identity(), "task": "llmsrec", "teacher": training.teacher.source,
                "distill": non_default_fields(spec)}  # options added later at their defaults keep it resumable
    validate = lambda: training.evaluator(engine.variables(), "valid", diagnostics=False)["full"]
    fitted = training.session.fit(engine, training.batches, run.path, identity, validate=validate, log=log,
                                  count_tokens=lambda batch: int(np.sum(batch["attention_mask"])))
    test = best_state_on_test(fitted, lambda: training.evaluator(engine.variables(), "test", diagnostics=True), log)
    trained = gather(engine.state.trainable["model"]["params"])
    run.save_arrays("heads", "heads.safetensors", trained["heads"], spec=dataclasses.asdict(spec))
    runs.save_lm(run, {"params": {"extra_embedding": trained["llm"]["extra_embedding"]}}, "subtrees",
                 extra_tokens=EXTRA_TOKENS, token_names=TOKEN_NAMES)
    run.save_json("test_metrics", "test_metrics.json", test)
    for section in ("full", "sampled"):
        if section in test:
            log(f"test ({section}): " + "  ".join(f"{k} {v:.4f}" for k, v in test[section].items()))
    return {"task": "llmsrec", "trainable_parameters": trainable,
            **seeds_summary([{"seed": config.seed, "training": fitted.summary, "test": test}])}


TASK = Task("llmsrec", LlmsrecConfig, run, "distil a seqrec SASRec's user vectors into a frozen LM through heads "
            "and added tokens, then rank with it (LLM-SRec)", tests_recommender=True)
