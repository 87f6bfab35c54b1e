"""Progress bars for long work (rich), quiet when stderr is not a terminal
unless ``JAXREC_PROGRESS=1``."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def _enabled() -> bool:
    setting = os.environ.get("JAXREC_PROGRESS")
    if setting is not None:
        return setting not in ("0", "false", "no")
    return sys.stderr.isatty()


@contextlib.contextmanager
def progress_bar(description: str, total: int | None, enabled: bool | None = None) -> Iterator[Callable[[int], None]]:
    """Yields ``advance(n)``; shows a bar with count, elapsed time and ETA."""
    if not (_enabled() if enabled is None else enabled):
        yield lambda n=1: None
        return
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)
