"""The training loop: resume from the run's latest checkpoint, then optimizer
steps with a progress bar, each followed by the loop's hooks (see
:mod:`jaxrec.train.hooks`: metrics and the non-finite guard, validation with
early stopping and the best state, checkpoints, stopping on SIGTERM or
Ctrl-C), and a checkpoint of the last step."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Callable, Iterable, Literal, Sequence

import numpy as np

from jaxrec.progress import progress_bar
from jaxrec.train.engine import Engine
from jaxrec.train.hooks import (Hook, LoopRun, PeriodicCheckpoints, StopOnSignal, TrainingMetrics, Validation,
                                host_values)


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

