"""What the step loop does besides stepping: hooks it calls after every
optimizer step, in order. The loop attaches its own (training metrics and the
non-finite guard, validation with early stopping and the best state, periodic
checkpoints, stopping on a signal); a task adds more with ``train(hooks=...)``.

A hook reads and changes the run through :class:`jaxrec.train.loop.LoopRun`:
its step, the step's batch and metrics, ``record`` (the loop's own state,
saved with every checkpoint), ``save()``, ``guard()``, ``write_metrics()``,
``timed_validation()`` and ``stop_early()``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import jax
import numpy as np

from jaxrec.train.checkpoint import Checkpointer
from jaxrec.train.interrupt import Interrupted, StopRequests

if TYPE_CHECKING:
    from jaxrec.train.loop import LoopRun


class Hook:
    """Something the loop does after every step. Both methods are optional."""

    def after_step(self, run: "LoopRun") -> str | None:
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

    def after_step(self, run: "LoopRun") -> str | None:
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

    def after_step(self, run: "LoopRun") -> str | None:
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

    def after_step(self, run: "LoopRun") -> None:
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

    def after_step(self, run: "LoopRun") -> None:
        signum = agreed_stop(self.requests, run.step, self.every)
        if signum is not None:
            run.save_if_unsaved()
            raise Interrupted(signum, run.step, str(run.checkpoints.directory / str(run.step)))

    def close(self) -> None:
        self.requests.__exit__(None, None, None)
