"""The allocator setting a training run makes: freed large tensors are reused, not page-faulted in again."""

from __future__ import annotations

import ctypes
import subprocess
import sys

import pytest

GLIBC = sys.platform.startswith("linux") and hasattr(ctypes.CDLL(None), "gnu_get_libc_version")

# Faults while a 64 MiB tensor (16,384 pages, past glibc's largest mmap threshold) is made and freed ten times.
FAULTS = """
import resource, sys, torch
from slmtrain.hostmem import keep_freed_memory
tuned = keep_freed_memory() if sys.argv[1] == "on" else False
def resident():
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
x = torch.randn(4096, 4096)
for _ in range(8):  # the heap settles: a few aligned blocks before freed ones fit the next request
    x.exp()
before, size = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, resident()
for _ in range(10):
    x.exp()
print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, resident() - size)
"""


def _faults(mode: str) -> tuple[str, int, int]:
    out = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True).stdout
    tuned, faults, grown = out.split()
    return tuned, int(faults), int(grown)


@pytest.mark.skipif(not GLIBC, reason="the setting is glibc's (Linux); elsewhere keep_freed_memory is a no-op")
def test_freed_tensors_are_reused_without_page_faults() -> None:
    tuned, faults, grown = _faults("on")
    assert tuned == "True"
    assert faults < 1000, faults
    assert grown < 64 * 2**20, grown  # kept memory is reused: the process does not grow step after step
    untuned, plain, _ = _faults("off")  # the default allocator maps and faults in each one again
    assert untuned == "False" and plain > 10 * 16384 // 2, plain
