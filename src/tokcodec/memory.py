"""Allocation policy for the exact prior's passes over large token grids.

glibc serves every block over its mmap threshold (at most 32 MB, adjusted at run time) with a
fresh mmap and unmaps it when freed, so each new block costs a page fault per 4 KB page, the
kernel zeroing it. A pass of the exact prior over a 12-MP photo's grid (46,080 tokens) makes
dozens of whole-grid tensors of 47 MB and more (the float twin's: 24-71 MB); the page faults
took half its time (docs/performance.md, session 14). Since session 18 both evaluations work
in bands of window rows and hold only the residual stream whole (47 MB at 12 MP), but a stage
loop still makes one per pass. `reuse_large_blocks` raises the thresholds while the passes run, so freed blocks stay in
the heap and serve the next ones, and trims the heap when it ends, so the memory goes back to
the system before the pixel decoder runs. Elsewhere than glibc it does nothing. Only speed and
resident memory depend on it, never a value.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from contextlib import contextmanager
from functools import lru_cache

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
HELD_THRESHOLD = 1 << 30  # blocks up to 1 GB come from the heap while the passes run
DEFAULT_MMAP_THRESHOLD = 32 << 20  # glibc's dynamic threshold's ceiling (DEFAULT_MMAP_THRESHOLD_MAX)
DEFAULT_TRIM_THRESHOLD = 2 * DEFAULT_MMAP_THRESHOLD  # what glibc sets along with it


@lru_cache(maxsize=1)
def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes, libc.malloc_trim.argtypes = [ctypes.c_int, ctypes.c_int], [ctypes.c_size_t]
        return libc if hasattr(libc, "gnu_get_libc_version") else None
    except (OSError, AttributeError):
        return None


_depth = [0]  # reuse_large_blocks contexts open (one thread runs the passes)


@contextmanager
def reuse_large_blocks(enabled: bool = True):
    """Inside: freed large blocks are kept for reuse (glibc). On leaving the outermost such
    context: the thresholds are set to glibc's usual ceiling and the heap's free memory is
    returned to the system. (A stage loop holds one around its passes: trimming after each pass
    cost 20 ms, and the next pass faulted the same pages in again; session 16.)"""
    libc = _glibc() if enabled else None
    if libc is None:
        yield
        return
    if not _depth[0]:
        libc.mallopt(M_MMAP_THRESHOLD, HELD_THRESHOLD)
        libc.mallopt(M_TRIM_THRESHOLD, 2 * HELD_THRESHOLD)
    _depth[0] += 1
    try:
        yield
    finally:
        _depth[0] -= 1
        if not _depth[0]:
            libc.mallopt(M_MMAP_THRESHOLD, DEFAULT_MMAP_THRESHOLD)
            libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
            libc.malloc_trim(0)


def trim() -> None:
    """Return the heap's free memory to the system now (glibc; elsewhere nothing)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
