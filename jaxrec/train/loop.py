"""The training loop: steps, progress, metrics, validation, early stopping,
checkpoints, resume, and a guard against non-finite losses."""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Callable, Iterable

import jax
import numpy as np

from jaxrec.progress import progress_bar
from jaxrec.train.checkpoint import Checkpointer
from jaxrec.train.engine import Engine
from jaxrec.train.metrics import MetricsLog


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclasses.dataclass
class LoopSpec:
    steps: int = 1000
    log_every: int = 10
    save_every: int = 200
    keep_checkpoints: int = 3
    eval_every: int = 0
    """Validate every this many steps (0: never)."""
    patience: int = 0
    """Stop after this many validations without a lower validation loss (0: never stop early)."""

    def __post_init__(self):
        if self.steps < 1 or self.log_every < 1 or self.save_every < 0 or self.eval_every < 0:
            raise ValueError("steps and log_every must be >= 1; save_every and eval_every >= 0")


def _host(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in jax.device_get(metrics).items()}


def train(
    engine: Engine,
    data,
    spec: LoopSpec,
    run_dir: str | Path,
    identity: dict,
    eval_batches: Callable[[], Iterable[dict]] | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Train until ``spec.steps`` optimizer steps (resuming from the run's latest
    checkpoint if there is one); returns a summary."""
    run_dir = Path(run_dir)
    checkpoints = Checkpointer(run_dir / "checkpoints", keep=spec.keep_checkpoints)
    if checkpoints.latest_step() is not None:
        engine.state, data_state = checkpoints.restore(engine.state, identity)
        data.set_state(data_state)
        log(f"resumed from the checkpoint at step {int(engine.state.step)}")
    metrics_log = MetricsLog(run_dir) if jax.process_index() == 0 else None  # one writer per job
    step = start = int(engine.state.step)
    last_saved = checkpoints.latest_step()
    best, stale, stopped_early = math.inf, 0, False
    tokens, window_start = 0, time.perf_counter()
    metrics: dict = {}

    def guard(values: dict[str, float]) -> None:
        bad = {k: v for k, v in values.items() if not math.isfinite(v)}
        if bad:
            kept = f"step {last_saved} in {checkpoints.directory}" if last_saved is not None else "none yet"
            raise TrainingDiverged(f"non-finite {bad} at step {step}; stopped. Last good checkpoint: {kept}")

    def save() -> None:
        nonlocal last_saved
        guard(_host(metrics))
        checkpoints.save(engine.state, data.get_state(), identity)
        last_saved = step

    try:
        with progress_bar("training", total=spec.steps, completed=start) as advance:
            while step < spec.steps:
                batch = next(data)
                metrics = engine.train_step(batch)
                step += 1
                tokens += sum(int(np.asarray(v).sum()) for k, v in batch.items() if k.endswith("attention_mask"))
                status = None
                if step % spec.log_every == 0 or step == spec.steps:
                    values = _host(metrics)
                    guard(values)
                    now = time.perf_counter()
                    # this process's tokens times the process count: the job's rate
                    values["tokens_per_s"] = tokens * jax.process_count() / max(now - window_start, 1e-9)
                    tokens, window_start = 0, now
                    if metrics_log:
                        metrics_log.write(step, values)
                    status = f"loss {values['loss']:.4f}  {values['tokens_per_s']:.0f} tok/s"
                if spec.save_every and step % spec.save_every == 0:
                    save()
                if eval_batches is not None and spec.eval_every and step % spec.eval_every == 0:
                    results = [_host(engine.evaluate(b)) for b in eval_batches()]
                    validation = {k: float(np.mean([r[k] for r in results])) for k in results[0]}
                    if metrics_log:
                        metrics_log.write(step, validation, split="validation")
                    if validation["loss"] < best:
                        best, stale = validation["loss"], 0
                    else:
                        stale += 1
                    status = f"validation loss {validation['loss']:.4f} (best {best:.4f})"
                    if spec.patience and stale >= spec.patience:
                        log(f"early stop at step {step}: {stale} validations without improvement")
                        stopped_early = True
                advance(1, status)
                if stopped_early:
                    break
        if last_saved != step:
            save()
    finally:
        checkpoints.close()
        if metrics_log:
            metrics_log.close()
        if hasattr(data, "close"):
            data.close()
    return {"steps": step, "resumed_from": start or None, "stopped_early": stopped_early,
            "best_validation_loss": None if best == math.inf else best}
