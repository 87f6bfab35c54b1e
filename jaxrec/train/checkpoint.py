"""Orbax checkpoints of the trainable state, the data-iterator position and
the run's identity.

Saves are asynchronous; Orbax writes each step into a temporary directory and
renames it when complete, so a crash never leaves a half-written checkpoint as
the latest. Only the trainable partition and its optimizer state are saved
(the frozen base is identified by path and checksum instead), and a run
refuses to resume on a different base model.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from jaxrec.train.step import TrainState


class ResumeError(RuntimeError):
    """A checkpoint exists but does not belong to this run."""


class CorruptCheckpoints(RuntimeError):
    """Checkpoints exist but none of them can be read."""


class Checkpointer:
    def __init__(self, directory: str | Path, keep: int = 3, async_save: bool = True):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, state: TrainState, data_state: dict, identity: dict, loop_state: dict | None = None) -> None:
        step = int(state.step)
        extra = {"data": data_state, "identity": identity, "loop": loop_state or {}}
        self.manager.save(
            step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), extra=ocp.args.JsonSave(extra))
        )

    def restore(self, like: TrainState, identity: dict, step: int | None = None) -> tuple[TrainState, dict]:
        """Restore into arrays with the shardings of ``like``; returns the state
        and the saved extras (``data``: the iterator state, ``loop``: the loop's)."""
        step = self.latest_step() if step is None else step
        extra = self.manager.restore(step, args=ocp.args.Composite(extra=ocp.args.JsonRestore()))["extra"]
        if extra["identity"] != identity:
            raise ResumeError(_mismatch(self.directory, step, extra["identity"], identity))
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
        return restored["state"], extra

    def restore_latest_intact(self, like: TrainState, identity: dict, warn=print) -> tuple[TrainState, dict] | None:
        """Restore the newest checkpoint that reads back whole (None: there is
        none). Corrupt newer ones (a truncated array file, missing or broken
        metadata) are named in a warning and moved aside to
        ``corrupt-<dir>-<step>`` beside this directory; when none is intact,
        nothing is moved and the error names each one and its cause."""
        corrupt = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                restored = self.restore(like, identity, step)
            except ResumeError:
                raise
            except Exception as err:  # Orbax and tensorstore raise many kinds for a damaged file
                corrupt.append((step, _first_line(err)))
                continue
            for bad, cause in corrupt:
                self._move_aside(bad, cause, warn)
            return restored
        if corrupt:
            causes = "; ".join(f"{self.directory / str(step)}: {cause}" for step, cause in corrupt)
            raise CorruptCheckpoints(f"no intact checkpoint to resume from ({causes}); "
                                     f"delete {self.directory} to train from the start")
        return None

    def _move_aside(self, step: int, cause: str, warn) -> None:
        aside = self.directory.parent / f"corrupt-{self.directory.name}-{step}"
        warn(f"warning: the checkpoint {self.directory / str(step)} is corrupt ({cause}); resuming from an earlier "
             f"one and moving it to {aside}")
        if jax.process_index() == 0:
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(self.directory / str(step), aside)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"moved aside {aside}")
        self.manager.reload()

    def read(self, step: int | None = None) -> tuple[dict, dict]:
        """(trainable variables, saved extras) as saved, without a template: for
        reusing a finished run's weights elsewhere (e.g. a frozen teacher)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{self.directory} holds no checkpoint")
        args = ocp.args.Composite(state=ocp.args.StandardRestore(), extra=ocp.args.JsonRestore())
        restored = self.manager.restore(step, args=args)
        return restored["state"]["trainable"], restored["extra"]

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _mismatch(directory: Path, step: int, saved: dict, wanted: dict) -> str:
    differing = sorted(k for k in saved.keys() | wanted.keys() if saved.get(k) != wanted.get(k))
    message = f"{directory}: the checkpoint at step {step} was made for {saved}, not {wanted} (differing: {', '.join(differing)})"
    if "chain" in differing:
        return (f"{message}. model.init_from's run changed since this run started (it was trained again, or another "
                "run is named); start this stage in a new run directory")
    return f"{message}; use another run directory or the original base model"


def _first_line(err: BaseException, limit: int = 300) -> str:
    text = str(err).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(err).__name__}: {first[:limit]}"
