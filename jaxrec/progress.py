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
def progress_bar(
    description: str, total: int | None, enabled: bool | None = None, completed: int = 0
) -> Iterator[Callable[..., None]]:
    """Yields ``advance(n=1, status=None)``; shows a bar with count, elapsed
    time, ETA and an optional status text (loss, throughput)."""
    if not (_enabled() if enabled is None else enabled):
        yield lambda n=1, status=None: None
        return
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
    ]
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        task = progress.add_task(description, total=total, completed=completed, status="")

        def advance(n: int = 1, status: str | None = None) -> None:
            progress.update(task, advance=n, **({"status": status} if status is not None else {}))

        yield advance
