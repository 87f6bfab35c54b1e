"""Orbax checkpoints of the trainable state, the data-iterator position and
the run's identity.

Saves are asynchronous; Orbax writes each step into a temporary directory and
renames it when complete, so a crash never leaves a half-written checkpoint as
the latest. Only the trainable partition and its optimizer state are saved
(the frozen base is identified by path and checksum instead), and a run
refuses to resume on a different base model.
"""

from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp

from jaxrec.train.step import TrainState


class ResumeError(RuntimeError):
    """A checkpoint exists but does not belong to this run."""


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
