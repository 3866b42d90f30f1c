"""Keep freed host memory inside the process instead of handing it back to the kernel after every step.

glibc serves a large allocation with a fresh `mmap` (above a threshold that starts at 128 KiB and grows to
at most 32 MiB) and gives the top of its heap back once more than twice that lies free. A training step
frees and allocates the same activations every step, so each large tensor was page-faulted in again,
zero-filled by the kernel: about 40,000 faults per step at 4 layers / d128 on this CPU, ~2 us each, a fifth
of a compiled fp32 step. With both thresholds raised the heap keeps that memory for the next step, and the
resident size stays at the step's peak, which every step reaches anyway.
"""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers (malloc.h)
_MMAP_ABOVE = 1 << 30  # only single allocations over 1 GiB still get their own mapping
_TRIM_ABOVE = (1 << 31) - 1


def keep_freed_memory() -> bool:
    """Tune glibc's allocator to reuse freed memory; True when it took the settings. A no-op (False) on other
    C libraries and systems, whose allocators keep their own policies."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None)  # the C library this process already runs on
    if not hasattr(libc, "gnu_get_libc_version"):  # musl and others: mallopt there is a stub or absent
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_ABOVE)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_ABOVE))
