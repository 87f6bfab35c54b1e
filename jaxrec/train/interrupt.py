"""Stopping on SIGTERM or Ctrl-C without losing work.

While the training loop runs, either signal only records itself
(:class:`StopRequests`); the loop then saves a checkpoint of the step it is
on and raises :class:`Interrupted`, which marks the run ``interrupted`` and
ends the launch with one line and exit status 128 + the signal's number. A
second signal while that checkpoint is written stops at once. Outside the
loop, :func:`sigterm_raises` makes SIGTERM end a launch as Ctrl-C does.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal (a KeyboardInterrupt, so that nothing that catches
    ``Exception`` swallows it); ``step``: the step whose checkpoint was saved."""

    def __init__(self, signum: int, step: int | None = None, checkpoint: str | None = None):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        name = signal.Signals(signum).name
        saved = f" at step {step}; saved {checkpoint}" if step is not None else ""
        super().__init__(f"stopped by {name}{saved}")

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


def exit_status(err: KeyboardInterrupt) -> int:
    return err.exit_status if isinstance(err, Interrupted) else 128 + signal.SIGINT


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """While active, SIGTERM raises :class:`Interrupted` (by default it ends
    the process with no cleanup, so the manifest would say ``running`` and
    the steps since the last checkpoint would be lost)."""

    def handle(signum, frame):
        raise Interrupted(signum)

    if not _in_main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class StopRequests:
    """While active, SIGINT and SIGTERM set :attr:`received` instead of
    stopping the program; a second one raises :class:`Interrupted` at once.
    Outside the main thread (where Python cannot take signals) it does nothing."""

    def __init__(self):
        self.received: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame):
        if self.received is not None:
            raise Interrupted(signum)
        self.received = signum

    def __enter__(self) -> "StopRequests":
        if _in_main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
