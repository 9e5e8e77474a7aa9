"""Allocator tuning for the long-running MPC processes (parties and dealer).

Every round and every dealer batch allocates and frees arrays of megabytes.
With glibc's defaults such blocks are mapped and unmapped (or trimmed) each
time, so every new array pays a page fault per 4 KiB page on first touch;
measured on the dealer this was 40 % of its CPU time. :func:`retain_freed_memory`
raises the mmap and trim thresholds so freed blocks stay in the heap and are
reused: the process keeps its peak working set (a few hundred MB here) instead
of returning it to the operating system between batches.

Worker threads (the correlation expansion, the dealer's generation) would each
get their own arena, whose heaps glibc unmaps as soon as they are entirely
free, whatever the trim threshold: every batch expanded in a thread and freed
in the event loop then faulted its pages in anew (40 % of a party's page faults
were the joined party-0 corrections, 24 % the keystream written into fresh
arrays). One arena for the whole process (``M_ARENA_MAX = 1``) keeps that
memory too; the threads only share the arena lock, taken once per array.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Final

_M_TRIM_THRESHOLD: Final = -1
_M_TOP_PAD: Final = -2
_M_MMAP_THRESHOLD: Final = -3
_M_ARENA_MAX: Final = -8
#: Blocks below this size come from the heap (and are reused after ``free``).
MMAP_THRESHOLD: Final = 1 << 30
#: Free memory at the top of the heap kept before giving it back.
TRIM_THRESHOLD: Final = 1 << 31
TOP_PAD: Final = 256 << 20


def retain_freed_memory() -> bool:
    """Tune glibc malloc to keep freed memory for reuse; False where that is not glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    ok &= mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    ok &= mallopt(_M_TOP_PAD, TOP_PAD) == 1
    ok &= mallopt(_M_ARENA_MAX, 1) == 1
    return bool(ok)
