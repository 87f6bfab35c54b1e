"""The entry points' allocator setting: freed large buffers are reused, not
unmapped and page-faulted in again on the next step."""

from __future__ import annotations

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
