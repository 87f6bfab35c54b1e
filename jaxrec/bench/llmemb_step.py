"""Benchmark: the LLMEmb recommender's training step (RAT: frozen LLM rows ->
adapter -> SASRec under BCE, aligned to an ID model) as
``configs/llmemb/smollm2_beauty.yaml`` trains it, on the whole of Amazon Beauty,
with the adapter over the whole catalogue against over the batch's items only
(``item_slots``), and both against the batches at their full width (200
columns, before they were cut to their longest history), alternating in one
process on the same batches. The frozen
matrix and the ID table RAT aligns to are random (timing does not depend on
their values; the equality of the two paths is a test).

    python -m jaxrec.bench llmemb-step --steps 20 --rounds 3
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

import numpy as np

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "llmemb" / "smollm2_beauty.yaml"


def run(data: str | None, steps: int, rounds: int, log=print) -> dict:
    import jax

    from jaxrec.bench.alternate import best_seconds_per_step
    from jaxrec.data.batches import IndexBatches
    from jaxrec.pipelines.config import load_pipeline, stage_config
    from jaxrec.seqrec.recommender import init_variables, make_objective
    from jaxrec.train.session import TrainingSession

    overrides = [f"data.name={data}"] if data else []
    config = stage_config(load_pipeline(CONFIG, overrides), "llmemb")
    dataset = config.data.load(config.seed, log)
    rng = np.random.default_rng(0)
    setup = setup_on_random_items(config, dataset, 576, rng)
    spec = setup.spec
    aligned = rng.standard_normal((dataset.num_items + 1, spec.backbone.hidden)).astype(np.float32)
    session = TrainingSession(config.mesh, config.optimizer, config.loop, config.seed)
    variables = session.replicate(init_variables(setup.model, jax.random.key(0), setup.llm_items, aligned))
    batches = IndexBatches(setup.count, config.batch.size, setup.batch, seed=0)
    engine = session.engine(setup.model, variables, make_objective(setup.model), ("^params/",), batches.steps_per_epoch)
    timed = [next(batches) for _ in range(steps)]
    slots = [b["item_slots"].size for b in timed if "item_slots" in b]
    log(f"{dataset.num_items} items, batches of {config.batch.size}: the batch's items take {np.mean(slots):.0f} "
        f"slots on average ({len(slots)} of {steps} batches; the rest use the whole catalogue)")
    full = spec.backbone.max_history
    widen = lambda b: {k: np.pad(v, [(0, 0), (0, full - v.shape[1])] + [(0, 0)] * (v.ndim - 2))
                       if k in ("history", "targets", "negatives") else v for k, v in b.items() if k != "item_slots"}
    variants = {"full_width_whole_catalogue": [widen(b) for b in timed],  # as before both changes
                "whole_catalogue": [{k: v for k, v in b.items() if k != "item_slots"} for b in timed],
                "batch_items": timed}
    for name, these in variants.items():  # compile every shape first
        for batch in {tuple(sorted((k, v.shape) for k, v in b.items())): b for b in these}.values():
            jax.block_until_ready(engine.train_step(batch))
    best = best_seconds_per_step({name: engine.train_step for name in variants}, variants, rounds, log,
                                 jax.block_until_ready)
    per_epoch = {name: round(seconds * batches.steps_per_epoch, 1) for name, seconds in best.items()}
    return {"items": dataset.num_items, "steps_per_epoch": batches.steps_per_epoch,
            "ms_per_step": {name: round(s * 1000, 2) for name, s in best.items()},
            "seconds_per_epoch": per_epoch,
            "speedup_of_batch_items": round(best["whole_catalogue"] / best["batch_items"], 2),
            "speedup_over_full_width_whole_catalogue": round(best["full_width_whole_catalogue"] / best["batch_items"], 2)}


def setup_on_random_items(config, dataset, width: int, rng: np.random.Generator):
    """The seqrec task's setup for ``config`` (LLM items) with a random frozen matrix ``width`` wide
    in place of its embeddings: what a step costs, or what its batches hold, does not depend on them."""
    from jaxrec.tasks.seqrec import _Setup

    with tempfile.TemporaryDirectory() as scratch:
        matrix = Path(scratch) / "item_embeddings.npy"
        np.save(matrix, rng.standard_normal((dataset.num_items, width)).astype(np.float32))
        (Path(scratch) / "item_ids.json").write_text(json.dumps([str(i) for i in dataset.item_ids[1:]]))
        items = dataclasses.replace(config.recommender.items, embeddings=str(matrix))
        return _Setup(dataclasses.replace(config, recommender=dataclasses.replace(config.recommender, items=items)),
                      dataset)
