"""Task ``seqrec``: train a sequential recommender (SASRec, GRU4Rec or BERT4Rec
on ID, frozen-LLM or combined item representations), early-stop on a
validation metric, and evaluate the best state on the test split.

Per seed, the run directory (``seed-<n>/`` when several seeds are configured)
gets checkpoints, the best state under ``best/``, ``metrics.jsonl``,
``test_metrics.json``, and ``item_table.npy`` + ``item_ids.json`` (the trained
item vectors, which a later RAT run can align to). ``summary.json`` holds each
seed's test metrics and their mean and standard deviation.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from jaxrec.config import ConfigError, RunConfig
from jaxrec.data.items import DataError
from jaxrec.data.pipeline import IndexBatches
from jaxrec.data.prep import SeqData, load_dataset
from jaxrec.io import save_npy_atomic, write_json_atomic
from jaxrec.seqrec.evaluate import batched, evaluate
from jaxrec.seqrec.examples import evaluation_examples, item_popularity, training_examples
from jaxrec.seqrec.items import load_item_embeddings, pca
from jaxrec.seqrec.recommender import Recommender, adapter_output_width, init_variables, make_objective
from jaxrec.train import mesh as mesh_lib
from jaxrec.train.engine import Engine
from jaxrec.train.loop import restore_best, train
from jaxrec.train.optim import make_optimizer


def _embedding_files(location: str) -> tuple[Path, Path]:
    """(matrix .npy, item_ids.json) of an encode run directory or an .npy file."""
    path = Path(location)
    matrix = path / "item_embeddings.npy" if path.is_dir() else path
    ids = matrix.parent / "item_ids.json"
    for needed in (matrix, ids):
        if not needed.exists():
            raise DataError(f"{needed} does not exist; point recommender.embeddings at an encode run directory "
                            "or an .npy file with item_ids.json beside it")
    return matrix, ids


def _llm_items(config: RunConfig, item_ids: list[str]) -> np.ndarray | None:
    spec = config.recommender
    if spec.items == "id":
        return None
    table = load_item_embeddings(*_embedding_files(spec.embeddings), item_ids)
    if spec.pca is not None:
        table = np.concatenate([np.zeros((1, spec.pca), np.float32), pca(table[1:], spec.pca)])
    return table


def _align_items(config: RunConfig, item_ids: list[str]) -> np.ndarray | None:
    location = config.recommender.align_to
    if location is None:
        return None
    run = Path(location)
    if not (run / "item_table.npy").exists():
        raise DataError(f"{run / 'item_table.npy'} does not exist; recommender.align_to must be the run "
                        "directory of a finished seqrec run with ID items (or one of its seed-<n> directories)")
    table = load_item_embeddings(run / "item_table.npy", run / "item_ids.json", item_ids)
    width = adapter_output_width(config.recommender)
    if table.shape[1] != width:
        raise ConfigError(f"recommender.align_to: its item vectors are {table.shape[1]}-wide but the adapter "
                          f"outputs {width}; train the ID model with hidden {width}")
    return table


class _Setup:
    """What every seed shares: the model, the examples, the frozen item
    matrices, the evaluation splits and the jitted scoring functions."""

    def __init__(self, config: RunConfig, data: SeqData):
        spec = self.spec = config.recommender
        self.config, self.data = config, data
        self.item_ids = [str(i) for i in data.item_ids]
        self.llm_items, self.align_items = _llm_items(config, self.item_ids), _align_items(config, self.item_ids)
        self.model = Recommender(
            spec, data.num_items, 0 if self.llm_items is None else self.llm_items.shape[1],
            0 if self.align_items is None else self.align_items.shape[1],
        )
        bert = spec.model == "bert4rec"
        self.examples = training_examples(data, spec.max_history, "windows" if bert else spec.examples)
        eval_length = spec.max_history - 1 if bert else spec.max_history  # BERT4Rec appends a mask
        self.splits = {part: evaluation_examples(data, part, eval_length) for part in ("valid", "test")}
        self.popularity = item_popularity(data)
        self.user_fn = jax.jit(lambda v, h, items: self.model.apply(v, h, items, method=Recommender.user_vectors))
        self.item_fn = jax.jit(lambda v: self.model.apply(v, method=Recommender.items))

    def evaluate(self, variables, part: str, seed: int, diagnostics: bool) -> dict:
        items = self.item_fn(variables)
        history, targets, lengths = self.splits[part]
        eval_spec = self.config.evaluation
        users = lambda rows: batched(lambda h: self.user_fn(variables, h, items), rows, batch_size=eval_spec.batch_size)
        return evaluate(users, np.asarray(items), history, targets, lengths, self.popularity, eval_spec, seed, diagnostics)


def _identity(config: RunConfig, seed: int) -> dict:
    return {"task": "seqrec", "data": str(config.data.name), "seed": seed,
            "recommender": dataclasses.asdict(config.recommender)}


def train_and_test(setup: _Setup, seed: int, run_dir: Path, log=print) -> dict:
    config, examples = setup.config, setup.examples
    mesh = mesh_lib.make_mesh(config.mesh)
    batch_axes = mesh_lib.rules_of(config.mesh).get("batch", ())
    replicated = NamedSharding(mesh, PartitionSpec())
    variables = init_variables(setup.model, jax.random.key(seed), setup.llm_items, setup.align_items)
    batches = IndexBatches(
        len(examples), config.batch.size, lambda rows: {"history": examples.history[rows], "targets": examples.targets[rows]},
        seed=seed, process_index=jax.process_index(), process_count=jax.process_count(),
    )
    optimizer = make_optimizer(config.optimizer, config.loop.in_steps(batches.steps_per_epoch).steps)
    engine = Engine(
        setup.model, jax.device_put(variables, replicated), make_objective(setup.model), ("^params/",), optimizer,
        mesh, seed, batch_axes=batch_axes,
    )
    trainable = sum(x.size for x in jax.tree.leaves(engine.state.trainable))
    log(f"seed {seed}: {len(examples)} training examples ({batches.steps_per_epoch} steps per epoch), "
        f"{trainable:,} trainable parameters, batches split over {mesh.size} {mesh.devices.flat[0].platform} device(s)")

    identity = _identity(config, seed)
    validate = lambda: setup.evaluate(engine.variables(), "valid", seed, diagnostics=False)["full"]
    summary = train(engine, batches, config.loop, run_dir, identity, validate=validate, log=log,
                    count_tokens=lambda batch: int(np.count_nonzero(batch["history"])))
    summary["epochs"] = round(summary["steps"] / batches.steps_per_epoch, 2)
    epochs_timed = summary["timed_steps"] / batches.steps_per_epoch
    summary["seconds_per_epoch"] = round(summary["training_seconds"] / epochs_timed, 3) if epochs_timed else None
    best_step = restore_best(engine, run_dir, identity)
    if best_step is not None:
        log(f"seed {seed}: testing the best validation state (step {best_step})")
    start = time.perf_counter()
    test = setup.evaluate(engine.variables(), "test", seed, diagnostics=True)
    test["seconds"] = round(time.perf_counter() - start, 2)
    result = {"seed": seed, "training": summary, "test": test}
    if jax.process_index() == 0:
        write_json_atomic(run_dir / "test_metrics.json", result)
        save_npy_atomic(run_dir / "item_table.npy", np.asarray(setup.item_fn(engine.variables()))[1:])
        write_json_atomic(run_dir / "item_ids.json", setup.item_ids[1:])
    log(f"seed {seed}: test " + "  ".join(f"{k} {v:.4f}" for k, v in test["full"].items()))
    return result


def _mean_std(results: list[dict]) -> dict:
    """Mean and standard deviation over seeds of every overall test metric."""
    out = {}
    for section in ("full", "sampled"):
        if section in results[0]["test"]:
            values = {k: [r["test"][section][k] for r in results] for k in results[0]["test"][section]}
            out[section] = {k: {"mean": float(np.mean(v)), "std": float(np.std(v))} for k, v in values.items()}
    return out


def run(config: RunConfig, run_dir: Path, log=print) -> dict:
    data = load_dataset(config.data.name, config.data.prep(config.seed))
    log(f"data: {data.num_users} users, {data.num_items} items, {len(data.items)} interactions")
    seeds = config.evaluation.seeds or [config.seed]
    setup = _Setup(config, data)
    results = []
    for seed in seeds:
        seed_dir = run_dir / f"seed-{seed}" if len(seeds) > 1 else run_dir
        results.append(train_and_test(setup, seed, seed_dir, log))
    summary = {"task": "seqrec", "model": config.recommender.model, "items": config.recommender.items,
               "seeds": seeds, "per_seed": results, "over_seeds": _mean_std(results)}
    if jax.process_index() == 0:
        write_json_atomic(run_dir / "summary.json", summary)
    for section, metrics in summary["over_seeds"].items():
        log(f"test ({section}, {len(seeds)} seed(s)): " + "  ".join(
            f"{name} {v['mean']:.4f}" + (f" ± {v['std']:.4f}" if len(seeds) > 1 else "") for name, v in metrics.items()))
    return summary
