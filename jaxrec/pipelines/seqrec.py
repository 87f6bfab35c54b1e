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
from jaxrec.train.loop import best_checkpoints, train
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


def _llm_items(config: RunConfig, data: SeqData) -> np.ndarray | None:
    spec = config.recommender
    if spec.items == "id":
        return None
    table = load_item_embeddings(*_embedding_files(spec.embeddings), [str(i) for i in data.item_ids])
    if spec.pca is not None:
        reduced = pca(table[1:], spec.pca)
        table = np.concatenate([np.zeros((1, spec.pca), np.float32), reduced])
    return table


def _align_items(config: RunConfig, data: SeqData) -> np.ndarray | None:
    location = config.recommender.align_to
    if location is None:
        return None
    run = Path(location)
    if not (run / "item_table.npy").exists():
        raise DataError(f"{run / 'item_table.npy'} does not exist; recommender.align_to must be the run "
                        "directory of a finished seqrec run with ID items (or one of its seed-<n> directories)")
    return load_item_embeddings(run / "item_table.npy", run / "item_ids.json", [str(i) for i in data.item_ids])


def _identity(config: RunConfig, seed: int) -> dict:
    return {"task": "seqrec", "data": str(config.data.name), "seed": seed,
            "recommender": dataclasses.asdict(config.recommender)}


def train_and_test(config: RunConfig, data: SeqData, seed: int, run_dir: Path, log=print) -> dict:
    spec, eval_spec = config.recommender, config.evaluation
    llm_items, align_items = _llm_items(config, data), _align_items(config, data)
    model = Recommender(
        spec, data.num_items, 0 if llm_items is None else llm_items.shape[1],
        0 if align_items is None else align_items.shape[1],
    )
    adapter_width = adapter_output_width(spec)
    if align_items is not None and align_items.shape[1] != adapter_width:
        raise ConfigError(f"recommender.align_to: its item vectors are {align_items.shape[1]}-wide but the adapter "
                          f"outputs {adapter_width}; train the ID model with hidden {adapter_width}")
    bert = spec.model == "bert4rec"
    examples = training_examples(data, spec.max_history, "windows" if bert else spec.examples)
    mesh = mesh_lib.make_mesh(config.mesh)
    batch_axes = mesh_lib.rules_of(config.mesh).get("batch", ())
    replicated = NamedSharding(mesh, PartitionSpec())
    variables = jax.device_put(init_variables(model, jax.random.key(seed), llm_items, align_items), replicated)
    batches = IndexBatches(
        len(examples), config.batch.size, lambda rows: {"history": examples.history[rows], "targets": examples.targets[rows]},
        seed=seed, process_index=jax.process_index(), process_count=jax.process_count(),
    )
    loop = config.loop
    optimizer = make_optimizer(config.optimizer, loop.in_steps(batches.steps_per_epoch).steps)
    engine = Engine(model, variables, make_objective(model), ("^params/",), optimizer, mesh, seed, batch_axes=batch_axes)
    trainable = sum(x.size for x in jax.tree.leaves(engine.state.trainable))
    log(f"seed {seed}: {len(examples)} training examples ({batches.steps_per_epoch} steps per epoch), "
        f"{trainable:,} trainable parameters")

    user_fn = jax.jit(lambda v, h: model.apply(v, h, method=Recommender.user_vectors))
    item_fn = jax.jit(lambda v: model.apply(v, method=Recommender.items))
    eval_length = spec.max_history - 1 if bert else spec.max_history  # BERT4Rec appends a mask
    popularity = item_popularity(data)

    def run_eval(part: str, diagnostics: bool) -> dict:
        variables = engine.variables()
        history, targets, lengths = evaluation_examples(data, part, eval_length)
        users = lambda rows: batched(lambda h: user_fn(variables, h), rows, batch_size=eval_spec.batch_size)
        return evaluate(users, np.asarray(item_fn(variables)), history, targets, lengths, popularity, eval_spec,
                        seed, diagnostics)

    identity = _identity(config, seed)
    summary = train(engine, batches, loop, run_dir, identity, validate=lambda: run_eval("valid", False)["full"], log=log,
                    count_tokens=lambda batch: int(np.count_nonzero(batch["history"])))
    summary["epochs"] = round(summary["steps"] / batches.steps_per_epoch, 2)
    epochs_run = (summary["steps"] - (summary["resumed_from"] or 0)) / batches.steps_per_epoch
    summary["seconds_per_epoch"] = round(summary["training_seconds"] / epochs_run, 3) if epochs_run else None
    best = best_checkpoints(run_dir)
    if best.latest_step() is not None:
        engine.state, _ = best.restore(engine.state, identity)
        log(f"seed {seed}: testing the best validation state (step {best.latest_step()})")
    best.close()
    start = time.perf_counter()
    test = run_eval("test", True)
    test["seconds"] = round(time.perf_counter() - start, 2)
    result = {"seed": seed, "training": summary, "test": test}
    if jax.process_index() == 0:
        write_json_atomic(run_dir / "test_metrics.json", result)
        save_npy_atomic(run_dir / "item_table.npy", np.asarray(item_fn(engine.variables()))[1:])
        write_json_atomic(run_dir / "item_ids.json", [str(i) for i in data.item_ids[1:]])
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
    results = []
    for seed in seeds:
        seed_dir = run_dir / f"seed-{seed}" if len(seeds) > 1 else run_dir
        results.append(train_and_test(config, data, seed, seed_dir, log))
    summary = {"task": "seqrec", "model": config.recommender.model, "items": config.recommender.items,
               "seeds": seeds, "per_seed": results, "over_seeds": _mean_std(results)}
    if jax.process_index() == 0:
        write_json_atomic(run_dir / "summary.json", summary)
    for section, metrics in summary["over_seeds"].items():
        log(f"test ({section}, {len(seeds)} seed(s)): " + "  ".join(
            f"{name} {v['mean']:.4f}" + (f" ± {v['std']:.4f}" if len(seeds) > 1 else "") for name, v in metrics.items()))
    return summary
