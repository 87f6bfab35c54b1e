"""The entry points' process settings: freed large buffers are reused, not
unmapped and page-faulted in again on the next step; compiled programs are
kept on disk for the next process."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

_PROBE = """
import ctypes, resource, sys, threading
from jaxrec.runtime import reuse_host_buffers
if sys.argv[1] == "tuned":
    assert reuse_host_buffers()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
faults = []

def steps():  # as XLA does: a worker thread allocates, fills and frees each step's buffer
    for _ in range(4):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        buffer = libc.malloc(256 << 20)
        ctypes.memset(buffer, 1, 256 << 20)
        libc.free(buffer)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

worker = threading.Thread(target=steps)
worker.start()
worker.join()
print(min(faults[1:]))
"""

def _faults_per_reallocation(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's malloc")
def test_large_buffers_are_reused_after_tuning():
    pages = (256 << 20) // 4096
    assert _faults_per_reallocation("default") > pages // 2  # glibc maps and unmaps each one
    assert _faults_per_reallocation("tuned") < pages // 50


_CACHE_PROBE = """
import jax, jax.numpy as jnp
from jaxrec.runtime import keep_compiled_programs
hits = []
jax.monitoring.register_event_listener(
    lambda event, **_: hits.append(event) if event == "/jax/compilation_cache/cache_hits" else None)
print(keep_compiled_programs())
jax.jit(lambda x: jnp.tanh(x @ x.T).sum())(jnp.ones((8, 8))).block_until_ready()
print(len(hits))
"""


def _cache_probe(tmp_path, setting: str | None) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_COMPILATION_CACHE_DIR", "JAXREC_COMPILATION_CACHE")}
    env.update(JAXREC_CACHE=str(tmp_path / "cache"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    if setting is not None:
        env["JAXREC_COMPILATION_CACHE"] = setting
    out = subprocess.run([sys.executable, "-c", _CACHE_PROBE], capture_output=True, text=True, check=True, env=env)
    directory, hits = out.stdout.split()
    return directory, int(hits)


def test_a_second_process_loads_compiled_programs_from_the_cache(tmp_path):
    directory, hits = _cache_probe(tmp_path, None)
    assert directory.startswith(str(tmp_path / "cache" / "xla")) and hits == 0
    assert any(os.scandir(directory))
    again, hits = _cache_probe(tmp_path, None)
    assert again == directory and hits > 0


def test_the_compilation_cache_can_move_or_be_turned_off(tmp_path):
    assert _cache_probe(tmp_path, str(tmp_path / "mine")) == (str(tmp_path / "mine"), 0)
    assert _cache_probe(tmp_path, "off") == ("None", 0)
    assert not (tmp_path / "cache" / "xla").exists()
