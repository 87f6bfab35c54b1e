"""What the step loop does besides stepping: hooks it calls after every
optimizer step, in order. The loop attaches its own (training metrics and the
non-finite guard, validation with early stopping and the best state, periodic
checkpoints, stopping on a signal); a task adds more with ``train(hooks=...)``.

A hook reads and changes the run through :class:`LoopRun`:
its step, the step's batch and metrics, ``record`` (the loop's own state,
saved with every checkpoint), ``save()``, ``guard()``, ``write_metrics()``,
``timed_validation()`` and ``stop_early()``.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Callable, Iterator

import jax
import numpy as np

from jaxrec.train.checkpoint import Checkpointer
from jaxrec.train.engine import Engine
from jaxrec.train.interrupt import Interrupted, StopRequests
from jaxrec.train.metrics_log import MetricsLog


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class LoopRun:
    """One run of the loop, as its hooks see it: the engine and data, the schedule
    in steps, the current step with its batch and metrics, the checkpoints, and
    ``record``, the loop's own state saved with every checkpoint (best validation,
    validations without a gain, whether it stopped early, and the seconds of
    training and validation, totals over every process that trained the run up
    to its last checkpoint). Built from the run's latest checkpoint if it has one."""

    def __init__(self, engine: Engine, data, spec, run_dir: Path, identity: dict, log: Callable[[str], None]):
        """``spec``: the loop's ``LoopSpec``, counted in steps."""
        self.engine, self.data, self.spec, self.run_dir, self.identity, self.log = engine, data, spec, run_dir, identity, log
        self.checkpoints = Checkpointer(run_dir / "checkpoints", keep=spec.keep_checkpoints)
        self.record = {"best": None, "best_step": None, "stale": 0, "best_metrics": None, "stopped_early": False,
                       "training_seconds": 0.0, "validation_seconds": 0.0}
        self.last_saved: int | None = None
        self.timed_from = 0
        """The first step this run's time totals cover."""
        restored = self.checkpoints.restore_latest_intact(engine.state, identity, warn=log)
        if restored is not None:
            engine.state, extra = restored
            self.last_saved = int(engine.state.step)
            data.set_state(extra["data"])
            saved = extra.get("loop", {})
            if "training_seconds" not in saved:  # written before the totals were kept: time this process's steps only
                self.timed_from = self.last_saved
            self.record.update(saved)
            log(f"resumed from the checkpoint at step {self.last_saved}")
        # one writer per job; what was logged after the restored checkpoint is logged again
        self.metrics_log = MetricsLog(run_dir, resume_step=self.last_saved or 0) if jax.process_index() == 0 else None
        self.step = self.start = int(engine.state.step)
        self.batch: dict = {}
        self.metrics: dict = {}
        # a run that stopped early is finished, unless it is relaunched with more patience
        self.record["stopped_early"] = self.record["stopped_early"] and spec.out_of_patience(self.record["stale"])
        if self.stopped_early:
            log(f"the run already stopped early at step {self.step}; nothing left to train")
        self._earlier = (self.record["training_seconds"], self.record["validation_seconds"])
        self._started, self._validation_seconds = time.perf_counter(), 0.0

    @property
    def stopped_early(self) -> bool:
        return self.record["stopped_early"]

    def stop_early(self) -> None:
        """End training after this step (its checkpoint is still written). A relaunch
        trains on unless the run is out of validation patience."""
        self.record["stopped_early"] = True

    def guard(self, values: dict[str, float]) -> None:
        """Raise :class:`TrainingDiverged` if a metric is NaN or infinite."""
        bad = {k: v for k, v in values.items() if not math.isfinite(v)}
        if bad:
            kept = f"step {self.last_saved} in {self.checkpoints.directory}" if self.last_saved is not None else "none yet"
            raise TrainingDiverged(f"non-finite {bad} at step {self.step}; stopped. Last good checkpoint: {kept}")

    def write_metrics(self, values: dict[str, float], split: str = "train") -> None:
        if self.metrics_log:
            self.metrics_log.write(self.step, values, split=split)

    @contextlib.contextmanager
    def timed_validation(self) -> Iterator[None]:
        """Count the seconds inside as validation's, not training's."""
        jax.block_until_ready(self.engine.state)  # queued training steps count as training
        started = time.perf_counter()
        try:
            yield
        finally:
            self._validation_seconds += time.perf_counter() - started

    def save(self) -> None:
        """A checkpoint of this step (after checking its metrics are finite), with ``record``."""
        self.guard(host_values(self.metrics))
        training = time.perf_counter() - self._started - self._validation_seconds
        self.record.update(training_seconds=self._earlier[0] + training,
                           validation_seconds=self._earlier[1] + self._validation_seconds)
        self.checkpoints.save(self.engine.state, self.data.get_state(), self.identity, self.record)
        self.last_saved = self.step

    def save_if_unsaved(self) -> None:
        if self.last_saved != self.step:
            self.save()

    def summary(self) -> dict:
        record = self.record
        return {
            "steps": self.step, "resumed_from": self.start or None, "stopped_early": self.stopped_early,
            f"best_validation_{self.spec.monitor}": record["best"], "best_step": record["best_step"],
            # as of the last checkpoint, which is the last step
            **{k: round(record[k], 3) for k in ("training_seconds", "validation_seconds")},
            "timed_steps": self.step - self.timed_from,
        }

    def close(self) -> None:
        self.checkpoints.close()
        if self.metrics_log:
            self.metrics_log.close()
        if hasattr(self.data, "close"):
            self.data.close()


class Hook:
    """Something the loop does after every step. Both methods are optional."""

    def after_step(self, run: LoopRun) -> str | None:
        """Called after every optimizer step; returns a status for the progress bar (None: nothing to say)."""
        return None

    def close(self) -> None:
        """Called once when the loop ends, however it ends."""


def host_values(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in jax.device_get(metrics).items()}


class TrainingMetrics(Hook):
    """Every ``every`` steps and at the last: the step's metrics, checked finite,
    with the job's tokens per second since the previous write, into the metrics log."""

    def __init__(self, every: int, count_tokens: Callable[[dict], int]):
        self.every, self.count_tokens = every, count_tokens
        self.tokens, self.window_start = 0, time.perf_counter()

    def after_step(self, run: LoopRun) -> str | None:
        self.tokens += self.count_tokens(run.batch)
        if run.step % self.every and run.step != run.spec.steps:
            return None
        values = host_values(run.metrics)
        run.guard(values)
        now = time.perf_counter()
        # this process's tokens times the process count: the job's rate
        values["tokens_per_s"] = self.tokens * jax.process_count() / max(now - self.window_start, 1e-9)
        self.tokens, self.window_start = 0, now
        run.write_metrics(values)
        return f"loss {values['loss']:.4f}  {values['tokens_per_s']:.0f} tok/s"


def best_checkpoints(run_dir: str | Path) -> Checkpointer:
    """Where the loop keeps the state with the best validation ``monitor``."""
    return Checkpointer(Path(run_dir) / "best", keep=1)


def restore_best(engine, run_dir: str | Path, identity: dict) -> int | None:
    """Load the state kept under ``best/`` into ``engine``; returns its step
    (None: the run kept no best state and ``engine`` is unchanged)."""
    best = best_checkpoints(run_dir)
    step = best.latest_step()
    if step is not None:
        engine.state, _ = best.restore(engine.state, identity)
    best.close()
    return step


class Validation(Hook):
    """Every ``eval_every`` steps: ``validate()``, logged; the state with the best
    ``monitor`` kept under ``best/``; training stops early after ``patience``
    validations without a gain. Its seconds are counted apart from training's."""

    def __init__(self, validate: Callable[[], dict[str, float]], run_dir: str | Path):
        self.validate = validate
        self.best_kept = best_checkpoints(run_dir)

    def after_step(self, run: LoopRun) -> str | None:
        spec, record = run.spec, run.record
        if run.step % spec.eval_every:
            return None
        with run.timed_validation():
            validation = self.validate()
        if spec.monitor not in validation:
            raise KeyError(f"loop.monitor={spec.monitor!r} is not a validation metric; available: {sorted(validation)}")
        run.write_metrics(validation, split="validation")
        value = validation[spec.monitor]
        if spec.improved(value, record["best"]):
            record.update(best=value, best_step=run.step, stale=0, best_metrics=validation)
            self.best_kept.save(run.engine.state, {}, run.identity, record)
        else:
            record["stale"] += 1
        if spec.out_of_patience(record["stale"]):
            run.log(f"early stop at step {run.step}: {record['stale']} validations without improvement")
            run.stop_early()
        return f"validation {spec.monitor} {value:.4f} (best {record['best']:.4f} at step {record['best_step']})"

    def close(self) -> None:
        self.best_kept.close()


class PeriodicCheckpoints(Hook):
    """A checkpoint every ``every`` steps (0: none; the loop always saves its last step)."""

    def __init__(self, every: int):
        self.every = every

    def after_step(self, run: LoopRun) -> None:
        if self.every and run.step % self.every == 0:
            run.save()


def agreed_stop(requests: StopRequests, step: int, every: int) -> int | None:
    """The signal that stops training after ``step``, if any. In a multi-process
    job every process stops at the same step: the next multiple of ``every``
    after a signal reached any of them."""
    if jax.process_count() == 1:
        return requests.received
    if step % every:
        return None
    from jax.experimental import multihost_utils

    received = multihost_utils.process_allgather(np.int32(requests.received or 0))
    return int(np.max(received)) or None


class StopOnSignal(Hook):
    """SIGTERM or Ctrl-C ends training after the step it arrives in, with a checkpoint
    of that step, by raising :class:`Interrupted` (see :mod:`jaxrec.train.interrupt`).
    ``every``: how often a multi-process job checks whether any process got one."""

    def __init__(self, every: int):
        self.every = every
        self.requests = StopRequests().__enter__()

    def after_step(self, run: LoopRun) -> None:
        signum = agreed_stop(self.requests, run.step, self.every)
        if signum is not None:
            run.save_if_unsaved()
            raise Interrupted(signum, run.step, str(run.checkpoints.directory / str(run.step)))

    def close(self) -> None:
        self.requests.__exit__(None, None, None)
