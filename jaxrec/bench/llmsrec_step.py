"""Benchmark: LLM-SRec's training step as ``configs/llmsrec/smollm2_ml100k_200users.yaml``
trains it (SmolLM2-135M frozen, batches of 20 user prompts, 3 negatives), with
the item prompts' starts computed at every step against gathered from the
catalogue's keys and values, computed once (``distill.item_start_cache_mb``),
alternating in one process on the same batches. The teacher is a SASRec
trained for two epochs first (its quality does not change the step's work).

    python -m jaxrec.bench llmsrec-step --steps 6 --rounds 2
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import tempfile
from pathlib import Path

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "llmsrec" / "smollm2_ml100k_200users.yaml"


def run(steps: int, rounds: int, log=print) -> dict:
    import jax

    from jaxrec.bench.alternate import best_seconds_per_step
    from jaxrec.pipelines.config import load_pipeline, stage_config
    from jaxrec.methods.llmsrec.task import build_training
    from jaxrec.train.session import TrainingSession

    with tempfile.TemporaryDirectory() as scratch:
        overrides = [f"run_dir={scratch}", "stages.teacher.loop.epochs=2"]
        command = [sys.executable, "-m", "jaxrec.launch", "--config", str(CONFIG), "--stages", "teacher"]
        subprocess.run(command + [a for o in overrides for a in ("--set", o)], check=True, capture_output=True)
        config = stage_config(load_pipeline(CONFIG, overrides), "llmsrec")
        data = config.data.load(config.seed, log)
        session = TrainingSession(config.mesh, config.optimizer, config.loop, config.seed)
        lm = config.model.load(shardings=session.param_shardings)
        variants, timed = {}, None
        for name, megabytes in (("recomputed", 0), ("cached", config.distill.item_start_cache_mb)):
            variant = dataclasses.replace(config, distill=dataclasses.replace(config.distill,
                                                                              item_start_cache_mb=megabytes))
            training = build_training(variant, data, lm, log, session)
            variants[name] = training.engine
            timed = timed or [next(training.batches) for _ in range(steps)]
    for engine in variants.values():  # compile every width of user prompt first
        for batch in {b["input_ids"].shape: b for b in timed}.values():
            jax.block_until_ready(engine.train_step(batch))
    best = best_seconds_per_step({name: engine.train_step for name, engine in variants.items()}, timed, rounds,
                                 log, jax.block_until_ready)
    return {"seconds_per_step": {name: round(s, 3) for name, s in best.items()},
            "speedup": round(best["recomputed"] / best["cached"], 2)}
