"""This process's resident memory, for benchmarks and memory tests (Linux
``/proc/self/status``; the peak falls back to ``getrusage`` elsewhere)."""

from __future__ import annotations

import resource
from pathlib import Path

_STATUS = Path("/proc/self/status")


def _status_bytes(field: str) -> int | None:
    if not _STATUS.exists():
        return None
    for line in _STATUS.read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    return None


def resident_bytes() -> int:
    value = _status_bytes("VmRSS")
    if value is None:
        raise RuntimeError("resident memory is read from /proc/self/status, which this system lacks")
    return value


def peak_resident_bytes() -> int:
    """The resident peak since the process started or since :func:`reset_peak`."""
    value = _status_bytes("VmHWM")
    return value if value is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak() -> None:
    """Reset the peak to the current resident size (Linux ``clear_refs``)."""
    Path("/proc/self/clear_refs").write_text("5")
