"""The training loop: resume from the run's latest checkpoint, then optimizer
steps with a progress bar, each followed by the loop's hooks (see
:mod:`jaxrec.train.hooks`: metrics and the non-finite guard, validation with
early stopping and the best state, checkpoints, stopping on SIGTERM or
Ctrl-C), and a checkpoint of the last step."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Literal, Sequence

import jax
import numpy as np

from jaxrec.progress import progress_bar
from jaxrec.train.checkpoint import Checkpointer
from jaxrec.train.engine import Engine
from jaxrec.train.hooks import Hook, PeriodicCheckpoints, StopOnSignal, TrainingMetrics, Validation, host_values
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


def mean_over_batches(engine: Engine, batches: Callable[[], Iterable[dict]]) -> Callable[[], dict[str, float]]:
    """A validation function: the eval step's metrics averaged over ``batches()``."""

    def validate() -> dict[str, float]:
        results = [host_values(engine.evaluate(b)) for b in batches()]
        return {k: float(np.mean([r[k] for r in results])) for k in results[0]}

    return validate


class LoopRun:
    """One run of the loop, as its hooks see it: the engine and data, the schedule
    in steps, the current step with its batch and metrics, the checkpoints, and
    ``record``, the loop's own state saved with every checkpoint (best validation,
    validations without a gain, whether it stopped early, and the seconds of
    training and validation, totals over every process that trained the run up
    to its last checkpoint). Built from the run's latest checkpoint if it has one."""

    def __init__(self, engine: Engine, data, spec: LoopSpec, run_dir: Path, identity: dict,
                 log: Callable[[str], None]):
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


def train(
    engine: Engine,
    data,
    spec: LoopSpec,
    run_dir: str | Path,
    identity: dict,
    validate: Callable[[], dict[str, float]] | None = None,
    log: Callable[[str], None] = print,
    count_tokens: Callable[[dict], int] = attention_mask_tokens,
    hooks: Sequence[Hook] = (),
) -> dict:
    """Train for ``spec``'s steps or epochs (resuming from the run's latest
    checkpoint if there is one); returns a summary. With ``validate`` (and
    ``spec.eval_every``), the state with the best ``spec.monitor`` is also kept
    under ``run_dir/best``. ``hooks`` run after the loop's metrics and validation,
    before its checkpoint of the step."""
    spec = spec.in_steps(getattr(data, "steps_per_epoch", 1))
    run = LoopRun(engine, data, spec, Path(run_dir), identity, log)
    attached: list[Hook] = []
    try:
        attached.append(TrainingMetrics(spec.log_every, count_tokens))
        if validate is not None and spec.eval_every:
            attached.append(Validation(validate, run_dir))
        attached += [*hooks, PeriodicCheckpoints(spec.save_every), StopOnSignal(spec.log_every)]
        with progress_bar("training", total=spec.steps, completed=run.start) as advance:
            while run.step < spec.steps and not run.stopped_early:
                run.batch = next(data)
                run.metrics = engine.train_step(run.batch)
                run.step += 1
                status = None
                for hook in attached:
                    status = hook.after_step(run) or status
                advance(1, status)
        run.save_if_unsaved()
    finally:
        for hook in attached:
            hook.close()
        run.close()
    return run.summary()

