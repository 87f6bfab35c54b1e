"""Benchmark: one seqrec stage's training step (default: the quickstart's
``sasrec_id``, SASRec on ml-100k), this checkout's code against another's
(``--tree``), each in its own process, the processes alternating round by
round so a slower stretch of the machine hits both alike; each side keeps its
best round. Stages on LLM items get a random frozen matrix of the LM's width
(a step's cost does not depend on its values).

    git worktree add ../before <commit>
    python -m jaxrec.bench seqrec-step --tree ../before --rounds 3
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_CHILD = r"""
import json, sys, time
from pathlib import Path
import jax, numpy as np
from jaxrec.data.batches import IndexBatches
from jaxrec.pipelines.config import load_pipeline, stage_config
from jaxrec.seqrec.recommender import init_variables, make_objective
from jaxrec.tasks.seqrec import _Setup
from jaxrec.train.session import TrainingSession

config_path, stage, steps, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
config = stage_config(load_pipeline(Path(config_path), []), stage)
data = config.data.load(config.seed, lambda *_: None)
if config.recommender.items.uses_llm:
    from jaxrec.bench.llmemb_step import setup_on_random_items
    setup = setup_on_random_items(config, data, 576, np.random.default_rng(0))
else:
    setup = _Setup(config, data)
session = TrainingSession(config.mesh, config.optimizer, config.loop, 0)
variables = session.replicate(init_variables(setup.model, jax.random.key(0), setup.llm_items, None))
batches = IndexBatches(setup.count, config.batch.size, setup.batch, seed=0)
engine = session.engine(setup.model, variables, make_objective(setup.model, data.cold), ("^params/",),
                        batches.steps_per_epoch)
timed = [next(batches) for _ in range(steps)]
for batch in {tuple(sorted((k, v.shape) for k, v in b.items())): b for b in timed}.values():
    jax.block_until_ready(engine.train_step(batch))  # compiles every shape first
best = float("inf")
for _ in range(repeats):
    start = time.perf_counter()
    for batch in timed:
        metrics = engine.train_step(batch)
    jax.block_until_ready(metrics)
    best = min(best, (time.perf_counter() - start) / steps)
print(json.dumps({"ms_per_step": best * 1000, "steps_per_epoch": batches.steps_per_epoch,
                  "loss": float(metrics["loss"])}))
"""


def _measure(tree: Path, config: str, stage: str, steps: int, repeats: int) -> dict:
    command = [sys.executable, "-c", _CHILD, str(tree / config), stage, str(steps), str(repeats)]
    done = subprocess.run(command, cwd=tree, capture_output=True, text=True)  # -c imports from cwd first
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"seqrec-step in {tree} failed (exit {done.returncode}):\n{tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(config: str, stage: str, steps: int, rounds: int, tree: str | None = None, log=print) -> dict:
    trees = {"this checkout": ROOT, **({f"tree {tree}": Path(tree).resolve()} if tree else {})}
    best: dict[str, dict] = {}
    for round_index in range(rounds):
        for name, path in trees.items():
            measured = _measure(path, config, stage, steps, repeats=2)
            if name not in best or measured["ms_per_step"] < best[name]["ms_per_step"]:
                best[name] = measured
            log(f"round {round_index + 1} {name}: {measured['ms_per_step']:.1f} ms per step "
                f"(best {best[name]['ms_per_step']:.1f}); loss after the steps {measured['loss']:.4f}")
    result = {"bench": "seqrec-step", "config": config, "stage": stage, "steps": steps,
              "ms_per_step": {name: round(m["ms_per_step"], 1) for name, m in best.items()},
              "seconds_per_epoch": {name: round(m["ms_per_step"] * m["steps_per_epoch"] / 1000, 2)
                                    for name, m in best.items()}}
    if tree:
        result["speedup"] = round(best[f"tree {tree}"]["ms_per_step"] / best["this checkout"]["ms_per_step"], 2)
    return result
