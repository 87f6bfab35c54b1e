"""Task ``llmsrec``: distil a trained SASRec's user vectors into a frozen
decoder (LLM-SRec), then evaluate the decoder as a recommender.

One training example per user: the prompt of its latest ``distill.max_history``
training items before its last training item, which is the target; the
teacher's user vector of the same history is precomputed once. Only the
heads and the added tokens' embeddings train. Validation ranks every item
(``loop.monitor``); the best state is tested with ``evaluation``'s settings
(LLM-SRec reports sampled 1 + 99 ranking and the shuffle diagnostics).

The run directory gets checkpoints, ``best/``, ``metrics.jsonl``,
``test_metrics.json`` and ``summary.json``.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from jaxrec.config import ConfigError, RunConfig
from jaxrec.data.pipeline import IndexBatches
from jaxrec.data.prep import load_dataset
from jaxrec.io import write_json_atomic
from jaxrec.llmsrec.model import TRAINABLE, DistillHeads, Distiller, make_objective
from jaxrec.llmsrec.prompts import EXTRA_TOKENS, Prompts
from jaxrec.llmsrec.teacher import Teacher
from jaxrec.models.decoder import Decoder
from jaxrec.models.lm import load_lm
from jaxrec.seqrec.evaluate import batched, evaluate
from jaxrec.seqrec.examples import evaluation_examples, item_popularity
from jaxrec.train import mesh as mesh_lib
from jaxrec.train.engine import Engine, place_variables
from jaxrec.train.loop import restore_best, train
from jaxrec.train.optim import make_optimizer


def _variables(model: Distiller, lm, teacher: Teacher, prompts: Prompts, num_items: int, config: RunConfig,
               mesh, rules: dict) -> dict:
    rng_tokens, rng_heads = jax.random.split(jax.random.key(config.seed))
    added = 0.02 * jax.random.normal(rng_tokens, (EXTRA_TOKENS, lm.config.hidden_size), jnp.float32)
    llm = place_variables(model.decoder, {**lm.params, "extra_embedding": added}, mesh, rules, rng_tokens)["params"]
    item_prompts = prompts.all_items(num_items)
    constants = {"teacher_items": teacher.item_table(), **{f"item_{k}": v for k, v in item_prompts.items()}}
    rest = {"params": {"heads": model.init_heads(rng_heads, teacher.dim)}, "constants": constants}
    rest = jax.device_put(rest, NamedSharding(mesh, PartitionSpec()))
    return {"params": {"llm": llm, **rest["params"]}, "constants": rest["constants"]}


class _Evaluator:
    """Scores a split with the current variables: every item's vector once,
    then each user's from its prompt."""

    def __init__(self, model: Distiller, prompts: Prompts, data, config: RunConfig):
        self.prompts, self.config, self.num_items = prompts, config, data.num_items
        self.splits = {part: evaluation_examples(data, part, config.distill.max_history) for part in ("valid", "test")}
        self.popularity = item_popularity(data)
        self.user_fn = jax.jit(model.user_vectors)
        self.item_fn = jax.jit(model.item_vectors)

    def __call__(self, variables, part: str, diagnostics: bool) -> dict:
        spec = self.config.evaluation
        items = batched(lambda ids: self.item_fn(variables, ids), np.arange(self.num_items + 1, dtype=np.int32),
                        batch_size=spec.batch_size, progress=f"{part}: item vectors")
        items[0] = 0.0
        history, targets, lengths = self.splits[part]
        users = lambda rows: batched(lambda h: self.user_fn(variables, self.prompts.users(h)), rows,
                                     batch_size=spec.batch_size, progress=f"{part}: user vectors")
        return evaluate(users, items, history, targets, lengths, self.popularity, spec, self.config.seed, diagnostics)


def run(config: RunConfig, run_dir: Path, log=print) -> dict:
    spec = config.distill
    if spec.teacher is None:
        raise ConfigError("distill.teacher is not set: train an ID SASRec with the seqrec task first and point "
                          "distill.teacher at its run directory")
    data = load_dataset(config.data.name, config.data.prep(config.seed))
    item_ids = [str(i) for i in data.item_ids]
    teacher = Teacher(spec.teacher, item_ids)
    lm = load_lm(config.model.name, config.model.dtype, tokenizer=config.model.tokenizer)
    if lm.tokenizer is None:
        raise ConfigError(f"{lm.source} has no tokenizer: set model.tokenizer")
    log(f"model: {lm}; teacher: {teacher.source}")

    prompts = Prompts(lm.tokenizer, data.titles, lm.config.vocab_size, spec.max_history, spec.title_tokens)
    history, target, _ = evaluation_examples(data, "train", max(spec.max_history, teacher.spec.max_history))
    users = np.flatnonzero(history[:, 0] > 0)
    history, target = history[users], target[users]
    teacher_users = teacher.user_vectors(history)
    log(f"data: {data.num_users} users, {data.num_items} items; {len(users)} training users; "
        f"prompts up to {prompts.user_length} (user) / {prompts.item_length} (item) tokens")

    model = Distiller(Decoder(lm.config.replace(extra_tokens=EXTRA_TOKENS)),
                      DistillHeads(lm.config.hidden_size, spec.head_hidden, spec.out_dim))
    mesh, rules = mesh_lib.make_mesh(config.mesh), mesh_lib.rules_of(config.mesh)
    variables = _variables(model, lm, teacher, prompts, data.num_items, config, mesh, rules)
    batches = IndexBatches(
        len(users), config.batch.size,
        lambda rows: {**prompts.users(history[rows]), "target": target[rows], "teacher": teacher_users[rows]},
        seed=config.seed, process_index=jax.process_index(), process_count=jax.process_count(),
    )
    optimizer = make_optimizer(config.optimizer, config.loop.in_steps(batches.steps_per_epoch).steps)
    engine = Engine(model, variables, make_objective(model, spec, data.num_items), TRAINABLE, optimizer, mesh,
                    config.seed, batch_axes=rules.get("batch", ()))
    trainable = sum(x.size for x in jax.tree.leaves(engine.state.trainable))
    log(f"trainable: {trainable:,} parameters (heads and {EXTRA_TOKENS} added token embeddings)")

    identity = {**lm.identity(), "task": "llmsrec", "teacher": teacher.source, "distill": dataclasses.asdict(spec)}
    evaluator = _Evaluator(model, prompts, data, config)
    validate = lambda: evaluator(engine.variables(), "valid", diagnostics=False)["full"]
    summary = train(engine, batches, config.loop, run_dir, identity, validate=validate, log=log,
                    count_tokens=lambda batch: int(np.sum(batch["attention_mask"])))
    best_step = restore_best(engine, run_dir, identity)
    if best_step is not None:
        log(f"testing the best validation state (step {best_step})")
    start = time.perf_counter()
    test = evaluator(engine.variables(), "test", diagnostics=True)
    test["seconds"] = round(time.perf_counter() - start, 2)
    result = {"task": "llmsrec", "training": summary, "trainable_parameters": trainable, "test": test}
    if jax.process_index() == 0:
        write_json_atomic(run_dir / "test_metrics.json", test)
        write_json_atomic(run_dir / "summary.json", result)
    for section in ("full", "sampled"):
        if section in test:
            log(f"test ({section}): " + "  ".join(f"{k} {v:.4f}" for k, v in test[section].items()))
    return result
