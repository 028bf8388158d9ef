"""Recycled CPU output buffers, reused only when nothing outside the pool still references their memory.

Why: a fresh float32 batch (77 MB at 128 x 3 x 224 x 224) is a fresh mmap, and the kernel that fills it then pays
a page fault per 4 KB: measured 330 us per 224x224 crop into fresh memory against 97 us into a recycled buffer,
on this project's 2-core machine with DALI's threads busy. Safety does not rest on the caller: a batch the
training loop still holds (or any view of it: torch tensors made by `torch.from_numpy` and NumPy views keep the
array alive) raises the buffer's reference count, and the pool hands out a different buffer instead.
"""

from __future__ import annotations

import sys

import numpy as np

__all__ = ["BufferPool"]


class BufferPool:
    """Up to `keep` recycled arrays; beyond that, plain new arrays (never blocks, never waits for a caller)."""

    def __init__(self, keep: int = 4):
        self.keep = keep
        self._buffers: list[np.ndarray] = [np.empty(0)]
        self._unreferenced = sys.getrefcount(self._buffers[0])  # the list's and the argument's, on this Python
        self._buffers.clear()

    def _free(self, index: int) -> bool:
        return sys.getrefcount(self._buffers[index]) <= self._unreferenced

    def take(self, shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
        """An uninitialised C-contiguous array that nothing else references."""
        shape, dtype = tuple(shape), np.dtype(dtype)
        for index in range(len(self._buffers)):  # by index: a loop variable would hold a reference of its own
            if self._buffers[index].shape == shape and self._buffers[index].dtype == dtype and self._free(index):
                return self._buffers[index]
        buffer = np.empty(shape, dtype)
        if len(self._buffers) >= self.keep:  # room for the new shape: drop a free buffer of another shape
            free = [i for i in range(len(self._buffers)) if self._free(i)]
            if free:
                del self._buffers[free[0]]
        if len(self._buffers) < self.keep:
            self._buffers.append(buffer)
        return buffer
