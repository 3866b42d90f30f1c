"""The allocator setting a training run makes: freed large tensors are reused, not page-faulted in again."""

from __future__ import annotations

import ctypes
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import write_recipe

GLIBC = sys.platform.startswith("linux") and hasattr(ctypes.CDLL(None), "gnu_get_libc_version")
pytestmark = pytest.mark.skipif(not GLIBC, reason="the setting is glibc's (Linux); elsewhere it is a no-op")

# After SETUP, the page faults and the growth of the resident size while a 64 MiB tensor (16,384 pages, past
# glibc's largest mmap threshold) is made and freed ROUNDS times.
PROBE = """
import resource, sys
import torch
{setup}
def resident():
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
x = torch.randn(4096, 4096)
for _ in range(8):  # the heap settles: a few aligned blocks before freed ones fit the next request
    x.exp()
before, size = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, resident()
for _ in range({rounds}):
    x.exp()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, resident() - size)
"""
ROUNDS, PAGES, BLOCK = 30, 16384, 64 * 2**20
PLAIN_FAULTS = ROUNDS // 2 * PAGES  # the default allocator maps and faults in (nearly) every one again
# Kept memory: at most a couple of blocks more while the heap finishes settling, never one per round.
KEPT_FAULTS, KEPT_GROWTH = 3 * PAGES, 3 * BLOCK


def _probe(setup: str) -> tuple[int, int]:
    code = PROBE.format(setup=setup, rounds=ROUNDS)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    faults, grown = out.split()[-2:]
    return int(faults), int(grown)


def test_kept_memory_is_reused_without_page_faults_or_growth() -> None:
    faults, grown = _probe("from slmtrain.hostmem import keep_freed_memory\nassert keep_freed_memory()")
    assert faults < KEPT_FAULTS, faults
    assert grown < KEPT_GROWTH, grown  # reused: the process does not grow step after step
    plain, _ = _probe("")
    assert plain > PLAIN_FAULTS, plain


@pytest.mark.parametrize("reuse", [True, False])
def test_a_training_run_sets_it_unless_told_not_to(tmp_path: Path, cache: Path, reuse: bool) -> None:
    recipe = write_recipe(tmp_path, cache)
    setup = (f"from slmtrain import cli\nassert cli.main(['run', {str(recipe)!r}, '--run-dir', "
             f"{str(tmp_path / 'run')!r}, '--set', 'train.max_steps=2', '--set', 'eval.every_steps=0', "
             f"'--set', 'run.reuse_host_memory={str(reuse).lower()}']) == 0")
    faults, _ = _probe(setup)
    assert (faults < KEPT_FAULTS) if reuse else (faults > PLAIN_FAULTS), faults
