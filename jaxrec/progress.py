"""Progress bars for long work (rich), quiet when stderr is not a terminal
unless ``JAXREC_PROGRESS=1``.

Inside :func:`shared_display` (the pipeline runner's), every bar joins one
display below the pipeline's own bar instead of opening its own.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def _enabled() -> bool:
    """Bars on a terminal (``JAXREC_PROGRESS`` forces them on or off), and in a
    multi-process job only on process 0."""
    jax = sys.modules.get("jax")
    if jax is not None and jax.distributed.is_initialized() and jax.process_index() != 0:
        return False
    setting = os.environ.get("JAXREC_PROGRESS")
    if setting is not None:
        return setting not in ("0", "false", "no")
    return sys.stderr.isatty()


_shared: Progress | None = None


def _columns():
    return [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
    ]


@contextlib.contextmanager
def shared_display(enabled: bool | None = None) -> Iterator[bool]:
    """One display for every bar opened inside the block; yields whether it shows."""
    global _shared
    if not (_enabled() if enabled is None else enabled) or _shared is not None:
        yield False
        return
    with Progress(*_columns(), console=Console(stderr=True), transient=False) as progress:
        _shared = progress
        try:
            yield True
        finally:
            _shared = None


@contextlib.contextmanager
def progress_bar(
    description: str, total: int | None, enabled: bool | None = None, completed: int = 0
) -> Iterator[Callable[..., None]]:
    """Yields ``advance(n=1, status=None)``; shows a bar with count, elapsed
    time, ETA and an optional status text (loss, throughput)."""
    if not (_enabled() if enabled is None else enabled):
        yield lambda n=1, status=None: None
        return
    with contextlib.ExitStack() as stack:
        progress = _shared or stack.enter_context(Progress(*_columns(), console=Console(stderr=True), transient=False))
        task = progress.add_task(description, total=total, completed=completed, status="")

        def advance(n: int = 1, status: str | None = None) -> None:
            progress.update(task, advance=n, **({"status": status} if status is not None else {}))

        try:
            yield advance
        finally:
            if progress is _shared:  # the next stage's bars take its place
                progress.remove_task(task)
