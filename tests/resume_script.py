"""Run by test_loop in subprocesses: train a tiny LoRA MNTP model for a number
of steps in a run directory, optionally SIGKILLing itself when the data
iterator is asked for a given batch."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import jax
import numpy as np
from flax import traverse_util

import jaxrec
from jaxrec.data.batches import GrainBatches
from jaxrec.train.loop import LoopSpec, train
from tests.train_helpers import build_engine, title_batches


class Recording(GrainBatches):
    """Records which batches it hands out (by the iterator's position) and
    SIGKILLs the process when asked for batch ``kill_at``."""

    def __init__(self, *args, kill_at=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.kill_at, self.consumed = kill_at, []

    def __next__(self):
        position = self.get_state()["next_index"]
        if position == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        self.consumed.append(position)
        return super().__next__()


def main(model_dir: str, run_dir: str, steps: int, kill_at: int | None) -> None:
    run_dir = Path(run_dir)
    lm = jaxrec.load_lm(model_dir)
    engine = build_engine(lm, "mntp", dropout=0.1)
    pool = title_batches(8, batch=8, seed=7)
    examples = {k: np.concatenate([b[k] for b in pool]) for k in pool[0]}
    rows = len(examples["input_ids"])
    data = Recording(rows, 8, lambda i, rng: {k: v[i] for k, v in examples.items()},
                     lambda rows: {k: np.stack([r[k] for r in rows]) for k in rows[0]}, seed=3, kill_at=kill_at)
    train(engine, data, LoopSpec(steps=steps, log_every=1, save_every=2, keep_checkpoints=2), run_dir,
          identity={"model": model_dir})
    flat = traverse_util.flatten_dict(jax.device_get(engine.state.trainable), sep="/")
    np.savez(run_dir / "final.npz", **{k: np.asarray(v) for k, v in flat.items()})
    with open(run_dir / "consumed.jsonl", "a") as f:
        f.write(json.dumps(data.consumed) + "\n")


if __name__ == "__main__":
    kill = int(sys.argv[4]) if len(sys.argv) > 4 else None
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), kill)
