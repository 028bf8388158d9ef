"""Keeps glibc's malloc from giving the CPU loader's batch memory back to the OS between batches.

Why: a CPU loader allocates large blocks every batch (uint8 crops, float32 outputs, DALI's per-sample buffers) on
DALI's threads and frees them a batch or two later. With glibc's defaults, blocks above a threshold that glibc moves
at run time are mmap'ed and unmapped on free, and a thread arena's extra heap is deleted as soon as it is empty.
Whether a process crosses those lines every batch depends on which arenas its threads happen to land in, so some
processes map, fault in and zero fresh pages for every batch, and run slower for their whole life, while others
never do. With the two settings below every process keeps its batch memory mapped after its first batches, with
the same resident memory (bench/loader_bench.py prints page faults per image).

The settings are process-wide, as malloc is: blocks up to MMAP_THRESHOLD (glibc's largest allowed threshold on
64-bit) come from the heaps, and a heap is trimmed or deleted only when more than TOP_PAD beyond its top is free.
A process keeps that much more of its freed memory mapped; nothing else changes. Both are needed: a fixed threshold
alone makes glibc stop raising its trim threshold, so every process faults; the pad alone leaves the large blocks
to mmap. They are not applied where the user already tunes malloc through the environment, or where the C library
is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

__all__ = ["keep_batch_memory_mapped", "MMAP_THRESHOLD", "TOP_PAD"]

log = logging.getLogger(__name__)

MMAP_THRESHOLD = 32 << 20  # glibc refuses more than HEAP_MAX_SIZE / 2 = 32 MB on 64-bit
TOP_PAD = 64 << 20  # one thread-arena heap (HEAP_MAX_SIZE): an emptied heap is kept, not unmapped
_M_TOP_PAD, _M_MMAP_THRESHOLD = -2, -3  # <malloc.h>
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_MAX_")
_applied: bool | None = None  # once per process: None = not decided yet


def keep_batch_memory_mapped() -> bool:
    """Applies the settings above once per process; returns whether they are in effect."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    user = [name for name in _USER_SETTINGS if name in os.environ]
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        user.append("GLIBC_TUNABLES")
    if user:
        log.info("malloc left as configured by %s", ", ".join(user))
        return False
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    # mallopt returns 1 on success; a threshold glibc finds too large is refused, not clamped
    _applied = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(_M_TOP_PAD, TOP_PAD))
    if not _applied:
        log.warning("mallopt refused the loader's malloc settings: CPU throughput may vary between runs")
    return _applied
