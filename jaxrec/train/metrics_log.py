"""Metric sinks: a JSONL file and TensorBoard event files (tensorboardX).

A resumed run first drops what was logged after the checkpoint it resumes
from, so ``metrics.jsonl`` and TensorBoard hold each step once: the steps
between that checkpoint and a crash are trained, and logged, again.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from jaxrec.io import write_bytes_atomic


def _truncate_after(path: Path, step: int) -> None:
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a crash
            continue
        if row.get("step", 0) <= step:
            kept.append(line)
    write_bytes_atomic(path, "".join(line + "\n" for line in kept).encode())


class MetricsLog:
    """Appends one JSON object per call to ``metrics.jsonl`` and mirrors the
    scalars to TensorBoard under ``tensorboard/``. ``resume_step``: the step
    the run resumes from; rows logged after it are dropped."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = True, resume_step: int | None = None):
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / "metrics.jsonl"
        if resume_step is not None:
            _truncate_after(path, resume_step)
        self._jsonl = open(path, "a")
        self._tb = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            purge = None if resume_step is None else resume_step + 1
            self._tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge, flush_secs=30)

    def write(self, step: int, values: dict[str, float], split: str = "train") -> None:
        row = {"step": step, "split": split, "time": round(time.time(), 3), **values}
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for name, value in values.items():
                self._tb.add_scalar(f"{split}/{name}", value, step)

    def close(self) -> None:
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
