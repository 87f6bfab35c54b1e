"""Process-wide settings for jaxrec's entry points (``jaxrec.launch``,
``jaxrec.bench``), applied before JAX starts its threads: the host allocator,
how many devices JAX makes of the CPU, and (the launcher only) the on-disk
cache of compiled programs.

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
import os
import platform
from pathlib import Path

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


def machine_fingerprint() -> str:
    """A short hash of the CPU model and its feature flags: compiled CPU
    programs use the host's instructions, so a cache shared by machines (a
    network home directory) keeps one folder per kind of machine."""
    import hashlib

    details = [platform.machine(), platform.processor()]
    try:
        with open("/proc/cpuinfo") as info:
            details += sorted({line.strip() for line in info if line.startswith(("model name", "flags"))})
    except OSError:
        pass
    return hashlib.sha256("\n".join(details).encode()).hexdigest()[:16]


def compilation_cache_dir() -> Path | None:
    """Where compiled XLA programs are kept between processes, from
    ``JAXREC_COMPILATION_CACHE``: unset, a folder per machine kind under the
    jaxrec cache; ``off``, nowhere; else that folder. None also when JAX's own
    ``JAX_COMPILATION_CACHE_DIR`` is set, which then applies as it is."""
    from jaxrec.assets import cache_root

    setting = os.environ.get("JAXREC_COMPILATION_CACHE", "")
    if setting.lower() == "off" or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return None
    return Path(setting) if setting else cache_root() / "xla" / machine_fingerprint()


def keep_compiled_programs() -> Path | None:
    """Turn on JAX's persistent compilation cache (see
    ``compilation_cache_dir``): a resumed run, and every later stage whose
    steps have the same shapes (the same SASRec on another embedding table,
    another encode of the same catalogue), loads its programs instead of
    compiling them again. Programs that compile in under a second are not
    kept. The cache runs code it finds, so it lives in the user's own cache
    folder, never a shared writable one."""
    directory = compilation_cache_dir()
    if directory is None:
        return None
    import jax

    directory.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(directory))
    return directory
