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


class _TensorBoardEvents:
    """Scalars into a TensorBoard event file, written by the calling thread:
    a failed write (a full disk) raises here instead of killing a writer
    thread that the training loop would then wait on forever."""

    def __init__(self, directory: Path, purge_step: int | None, flush_seconds: float = 30.0):
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto.event_pb2 import Event, SessionLog
        from tensorboardX.summary import scalar

        directory.mkdir(parents=True, exist_ok=True)
        self._event, self._scalar = Event, scalar
        self._events = EventsWriter(str(directory / "events"))
        if purge_step is not None:  # TensorBoard hides the events at and after this step of the earlier attempt
            self._events.write_event(Event(wall_time=time.time(), step=purge_step,
                                           session_log=SessionLog(status=SessionLog.START)))
        self._flush_seconds, self._flushed = flush_seconds, time.monotonic()

    def write(self, prefix: str, step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            self._events.write_event(self._event(wall_time=time.time(), step=step,
                                                 summary=self._scalar(f"{prefix}/{name}", float(value))))
        if time.monotonic() - self._flushed > self._flush_seconds:
            self._events.flush()
            self._flushed = time.monotonic()

    def close(self) -> None:
        self._events.close()


class MetricsLog:
    """Appends one JSON object per call to ``metrics.jsonl`` and mirrors the
    scalars to TensorBoard under ``tensorboard/``. ``resume_step``: the step
    the run resumes from; rows logged after it are dropped. Every write happens
    in the caller's thread, so a write that fails raises at once."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = True, resume_step: int | None = None):
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / "metrics.jsonl"
        if resume_step is not None:
            _truncate_after(path, resume_step)
        self._jsonl = open(path, "a")
        self._tb = None
        if tensorboard:
            self._tb = _TensorBoardEvents(run_dir / "tensorboard", None if resume_step is None else resume_step + 1)

    def write(self, step: int, values: dict[str, float], split: str = "train") -> None:
        row = {"step": step, "split": split, "time": round(time.time(), 3), **values}
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            self._tb.write(split, step, values)

    def close(self) -> None:
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
