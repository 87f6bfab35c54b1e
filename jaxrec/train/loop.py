"""The training loop: steps, progress, metrics, validation, early stopping,
checkpoints, resume, a guard against non-finite losses, and a checkpoint of
the current step when SIGTERM or Ctrl-C stops it."""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Callable, Iterable, Literal

import jax
import numpy as np

from jaxrec.progress import progress_bar
from jaxrec.train.checkpoint import Checkpointer
from jaxrec.train.engine import Engine
from jaxrec.train.interrupt import Interrupted, StopRequests
from jaxrec.train.metrics_log import MetricsLog


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclasses.dataclass
class LoopSpec:
    steps: int | None = None
    """Optimizer steps to train (default 1000 when ``epochs`` is not set)."""
    epochs: int | None = None
    """Passes over the training examples instead of ``steps``; ``save_every``
    and ``eval_every`` then count epochs too."""
    log_every: int = 10
    save_every: float = 200
    """Checkpoint every this many steps (0: only at the end). With ``epochs``,
    epochs, and a fraction checkpoints within an epoch: 0.2 saves about every
    fifth of one, so a long epoch stopped midway loses little."""
    keep_checkpoints: int = 3
    eval_every: int = 0
    """Validate every this many steps (epochs) (0: never)."""
    patience: int = 0
    """Stop after this many validations without improving ``monitor`` (0: never stop early)."""
    monitor: str = "loss"
    """The validation metric that decides early stopping and the best checkpoint."""
    monitor_mode: Literal["min", "max"] = "min"

    def __post_init__(self):
        if self.steps is not None and self.epochs is not None:
            raise ValueError("set either steps or epochs, not both")
        length = self.epochs if self.epochs is not None else self.steps
        if (length is not None and length < 1) or self.log_every < 1 or self.save_every < 0 or self.eval_every < 0:
            raise ValueError("steps / epochs and log_every must be >= 1; save_every and eval_every >= 0")
        if float(self.save_every).is_integer():
            self.save_every = int(self.save_every)
        elif self.epochs is None:
            raise ValueError(f"save_every counts steps when epochs is not set: a whole number, got {self.save_every}")
        if self.patience < 0 or self.keep_checkpoints < 1:
            raise ValueError(f"patience must be >= 0 (0: never stop early) and keep_checkpoints >= 1, "
                             f"got {self.patience} and {self.keep_checkpoints}")

    def in_steps(self, steps_per_epoch: int) -> "LoopSpec":
        """The same schedule counted in optimizer steps."""
        if self.epochs is None:
            return dataclasses.replace(self, steps=self.steps or 1000)
        return dataclasses.replace(
            self, steps=self.epochs * steps_per_epoch, epochs=None,
            save_every=max(1, round(self.save_every * steps_per_epoch)) if self.save_every else 0,
            eval_every=self.eval_every * steps_per_epoch,
        )

    def improved(self, value: float, best: float | None) -> bool:
        if best is None:
            return math.isfinite(value)
        return value < best if self.monitor_mode == "min" else value > best

    def out_of_patience(self, stale: int) -> bool:
        """Whether ``stale`` validations without improvement end training."""
        return bool(self.patience) and stale >= self.patience


def attention_mask_tokens(batch: dict) -> int:
    """Real tokens in a batch: the sum of its attention masks."""
    return sum(int(np.asarray(v).sum()) for k, v in batch.items() if k.endswith("attention_mask"))


def _host(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in jax.device_get(metrics).items()}


def mean_over_batches(engine: Engine, batches: Callable[[], Iterable[dict]]) -> Callable[[], dict[str, float]]:
    """A validation function: the eval step's metrics averaged over ``batches()``."""

    def validate() -> dict[str, float]:
        results = [_host(engine.evaluate(b)) for b in batches()]
        return {k: float(np.mean([r[k] for r in results])) for k in results[0]}

    return validate


def best_checkpoints(run_dir: str | Path) -> Checkpointer:
    """Where the loop keeps the state with the best validation ``monitor``."""
    return Checkpointer(Path(run_dir) / "best", keep=1)


def restore_best(engine: Engine, run_dir: str | Path, identity: dict) -> int | None:
    """Load the state kept under ``best/`` into ``engine``; returns its step
    (None: the run kept no best state and ``engine`` is unchanged)."""
    best = best_checkpoints(run_dir)
    step = best.latest_step()
    if step is not None:
        engine.state, _ = best.restore(engine.state, identity)
    best.close()
    return step


def _agreed_stop(stop: StopRequests, step: int, every: int) -> int | None:
    """The signal that stops training after ``step``, if any. In a multi-process
    job every process stops at the same step: the next multiple of ``every``
    after a signal reached any of them."""
    if jax.process_count() == 1:
        return stop.received
    if step % every:
        return None
    from jax.experimental import multihost_utils

    received = multihost_utils.process_allgather(np.int32(stop.received or 0))
    return int(np.max(received)) or None


def train(
    engine: Engine,
    data,
    spec: LoopSpec,
    run_dir: str | Path,
    identity: dict,
    validate: Callable[[], dict[str, float]] | None = None,
    log: Callable[[str], None] = print,
    count_tokens: Callable[[dict], int] = attention_mask_tokens,
) -> dict:
    """Train for ``spec``'s steps or epochs (resuming from the run's latest
    checkpoint if there is one); returns a summary. With ``validate``, the
    state with the best ``spec.monitor`` is also kept under ``run_dir/best``."""
    run_dir = Path(run_dir)
    spec = spec.in_steps(getattr(data, "steps_per_epoch", 1))
    checkpoints = Checkpointer(run_dir / "checkpoints", keep=spec.keep_checkpoints)
    best_kept = best_checkpoints(run_dir) if validate is not None and spec.eval_every else None
    # the seconds are totals over every process that trained this run, up to its last checkpoint
    loop_state = {"best": None, "best_step": None, "stale": 0, "best_metrics": None, "stopped_early": False,
                  "training_seconds": 0.0, "validation_seconds": 0.0}
    timed_from = 0
    restored = checkpoints.restore_latest_intact(engine.state, identity, warn=log)
    last_saved = None
    if restored is not None:
        engine.state, extra = restored
        last_saved = int(engine.state.step)
        data.set_state(extra["data"])
        saved = extra.get("loop", {})
        if "training_seconds" not in saved:  # written before the totals were kept: time this process's steps only
            timed_from = int(engine.state.step)
        loop_state.update(saved)
        log(f"resumed from the checkpoint at step {int(engine.state.step)}")
    # one writer per job; what was logged after the restored checkpoint is logged again
    metrics_log = MetricsLog(run_dir, resume_step=last_saved or 0) if jax.process_index() == 0 else None
    step = start = int(engine.state.step)
    # a run that stopped early is finished, unless it is relaunched with more patience
    stopped_early = loop_state["stopped_early"] = loop_state["stopped_early"] and spec.out_of_patience(loop_state["stale"])
    if stopped_early:
        log(f"the run already stopped early at step {step}; nothing left to train")
    loop_start, validation_seconds = time.perf_counter(), 0.0
    earlier_training, earlier_validation = loop_state["training_seconds"], loop_state["validation_seconds"]
    tokens, window_start = 0, time.perf_counter()
    metrics: dict = {}

    def guard(values: dict[str, float]) -> None:
        bad = {k: v for k, v in values.items() if not math.isfinite(v)}
        if bad:
            kept = f"step {last_saved} in {checkpoints.directory}" if last_saved is not None else "none yet"
            raise TrainingDiverged(f"non-finite {bad} at step {step}; stopped. Last good checkpoint: {kept}")

    def totals() -> dict[str, float]:
        training = time.perf_counter() - loop_start - validation_seconds
        return {"training_seconds": earlier_training + training, "validation_seconds": earlier_validation + validation_seconds}

    def save() -> None:
        nonlocal last_saved
        guard(_host(metrics))
        loop_state.update(totals())
        checkpoints.save(engine.state, data.get_state(), identity, loop_state)
        last_saved = step

    def run_validation() -> str:
        nonlocal validation_seconds
        jax.block_until_ready(engine.state)  # queued training steps count as training, not validation
        started = time.perf_counter()
        validation = validate()
        validation_seconds += time.perf_counter() - started
        if spec.monitor not in validation:
            raise KeyError(f"loop.monitor={spec.monitor!r} is not a validation metric; available: {sorted(validation)}")
        if metrics_log:
            metrics_log.write(step, validation, split="validation")
        value = validation[spec.monitor]
        if spec.improved(value, loop_state["best"]):
            loop_state.update(best=value, best_step=step, stale=0, best_metrics=validation)
            best_kept.save(engine.state, {}, identity, loop_state)
        else:
            loop_state["stale"] += 1
        return f"validation {spec.monitor} {value:.4f} (best {loop_state['best']:.4f} at step {loop_state['best_step']})"

    try:
        with StopRequests() as stop, progress_bar("training", total=spec.steps, completed=start) as advance:
            while step < spec.steps and not stopped_early:
                batch = next(data)
                metrics = engine.train_step(batch)
                step += 1
                tokens += count_tokens(batch)
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
                if best_kept is not None and step % spec.eval_every == 0:
                    status = run_validation()
                    if spec.out_of_patience(loop_state["stale"]):
                        log(f"early stop at step {step}: {loop_state['stale']} validations without improvement")
                        stopped_early = loop_state["stopped_early"] = True
                if spec.save_every and step % spec.save_every == 0:
                    save()
                advance(1, status)
                signum = _agreed_stop(stop, step, spec.log_every)
                if signum is not None:
                    if last_saved != step:
                        save()
                    raise Interrupted(signum, step, str(checkpoints.directory / str(step)))
                if stopped_early:
                    break
        if last_saved != step:
            save()
    finally:
        checkpoints.close()
        if best_kept is not None:
            best_kept.close()
        if metrics_log:
            metrics_log.close()
        if hasattr(data, "close"):
            data.close()
    return {
        "steps": step, "resumed_from": start or None, "stopped_early": stopped_early,
        f"best_validation_{spec.monitor}": loop_state["best"], "best_step": loop_state["best_step"],
        # as of the last checkpoint, which is the last step
        **{k: round(loop_state[k], 3) for k in ("training_seconds", "validation_seconds")},
        "timed_steps": step - timed_from,
    }
