"""Process-wide settings for jaxrec's entry points (``jaxrec.launch``,
``jaxrec.bench``), applied before JAX starts its threads: the host allocator,
and how many devices JAX makes of the CPU.

XLA's CPU runtime allocates each step's temporary buffer (hundreds of MB for a
recommender batch) with ``malloc`` from a worker thread. glibc serves requests
that large from a thread arena with a fresh ``mmap`` and unmaps it on free, so
every step page-faults the whole buffer in again: on a 2-core machine that was
a quarter of SASRec's step time. One arena with ``mmap`` off and no trimming
keeps freed buffers in the heap for the next step.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

# <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


def reuse_host_buffers() -> bool:
    """Tune glibc's allocator as above; returns whether it applied (False on
    other C libraries and systems, where nothing changes)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))
    return all(libc.mallopt(option, value) == 1 for option, value in settings)


def split_cpu(devices: int | None) -> None:
    """Make JAX's CPU platform ``devices`` devices per process
    (``mesh.cpu_devices``); None leaves JAX's default. Must run before JAX
    starts its backends: ``make_mesh`` refuses a mesh whose CPU device count
    disagrees."""
    if devices is None:
        return
    import jax

    jax.config.update("jax_num_cpu_devices", devices)
