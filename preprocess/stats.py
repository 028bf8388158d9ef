"""Train-split pixel statistics from exact integer sums, so that any split of the work merges to the same result.

Per image we add the uint8 pixels to a per-pixel sum (the paper's mean image; the channel sums follow from it)
and the channel cross-products to a 3x3 sum (the RGB covariance for PCA lighting). All sums are integers: merging the partial
sums of any number of workers in any order gives bit-identical statistics. Both sums are taken in one pass over
the image's memory (numba), with integer arithmetic throughout.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from pipeline.contract import Stats

__all__ = ["PixelSums", "finalize", "max_images"]

# The per-pixel sums take the narrowest unsigned type that holds them exactly: uint16 for the up to 257 images of
# a worker's chunk (a quarter of uint64's memory to add into and to send), uint32 for a shard, uint64 for a
# build. Widening happens as counts grow, so any number of images (up to max_images) sums exactly.
_SUM_TYPES = (np.uint16, np.uint32, np.uint64)
_HOLDS = {np.dtype(t): np.iinfo(t).max // 255 for t in _SUM_TYPES}  # images each type sums exactly


def _sum_type(count: int) -> type:
    return next(t for t in _SUM_TYPES if count <= _HOLDS[np.dtype(t)])


def max_images(size: int) -> int:
    """Images whose pixel sums stay exact: each adds up to 255**2 per pixel to the int64 cross-product sum."""
    return (2**63 - 1) // (255**2 * size * size)


@dataclass
class PixelSums:
    """Mergeable integer sums over uint8 RGB images of one size."""

    size: int
    count: int = 0
    image_sum: np.ndarray | None = None  # [size, size, 3], of the narrowest type that holds `count` images
    cross_sum: np.ndarray | None = None  # int64 [3, 3], sum of x x^T over pixels

    def __post_init__(self):
        if self.image_sum is None:
            self.image_sum = np.zeros((self.size, self.size, 3), _SUM_TYPES[0])
            self.cross_sum = np.zeros((3, 3), np.int64)

    @property
    def channel_sum(self) -> list[int]:
        """Per-channel pixel sums, exact (derived from the per-pixel sums)."""
        return [int(v) for v in self.image_sum.sum(axis=(0, 1), dtype=np.uint64)]

    def add(self, pixels: np.ndarray) -> None:
        if pixels.shape != (self.size, self.size, 3) or pixels.dtype != np.uint8:
            raise ValueError(f"expected uint8 {(self.size, self.size, 3)}, got {pixels.dtype} {pixels.shape}")
        self._check_room(1)
        self._widen(self.count + 1)
        _accumulate(np.ascontiguousarray(pixels), self.image_sum, self.cross_sum)
        self.count += 1

    def merge(self, other: PixelSums) -> None:
        if other.size != self.size:
            raise ValueError(f"cannot merge sums of size {other.size} into size {self.size}")
        self._check_room(other.count)
        self._widen(self.count + other.count)
        self.count += other.count
        self.image_sum += other.image_sum
        self.cross_sum += other.cross_sum

    def _widen(self, count: int) -> None:
        if count > _HOLDS[self.image_sum.dtype]:
            self.image_sum = self.image_sum.astype(_sum_type(count))

    def _check_room(self, more: int) -> None:
        if self.count + more > max_images(self.size):
            raise OverflowError(f"more than {max_images(self.size)} images of size {self.size} overflow the int64 sums")


@njit(nogil=True, boundscheck=False, cache=True)
def _accumulate(pixels, image_sum, cross_sum):
    """image_sum += pixels and cross_sum += the sum over pixels of x x^T, exactly.

    The products are summed in int64, which holds 2**63 / 255**2 pixels: far more than one image has."""
    flat, sums = pixels.reshape(-1), image_sum.reshape(-1)
    for i in range(flat.size):
        sums[i] += flat[i]
    rr = rg = rb = gg = gb = bb = np.int64(0)
    for p in range(0, flat.size, 3):
        r, g, b = np.int64(flat[p]), np.int64(flat[p + 1]), np.int64(flat[p + 2])
        rr += r * r
        rg += r * g
        rb += r * b
        gg += g * g
        gb += g * b
        bb += b * b
    for i, j, v in ((0, 0, rr), (0, 1, rg), (0, 2, rb), (1, 1, gg), (1, 2, gb), (2, 2, bb)):
        cross_sum[i, j] += v
        if i != j:
            cross_sum[j, i] += v


def finalize(sums: PixelSums) -> tuple[Stats, np.ndarray]:
    """Statistics in [0, 1] pixel units and the float32 mean image.

    The covariance is the unbiased sample covariance of all train pixels (divisor N - 1, like np.cov and
    scikit-learn's PCA), computed from the exact integer sums with Python integers so nothing cancels.
    """
    if sums.count == 0:
        raise ValueError("no train images were written: statistics need at least one")
    n = sums.count * sums.size * sums.size  # pixels per channel
    s = sums.channel_sum
    cross = [[int(v) for v in row] for row in sums.cross_sum]
    scale = 255.0**2
    covariance = np.array([[(cross[i][j] * n - s[i] * s[j]) / (n * (n - 1)) / scale for j in range(3)] for i in range(3)])
    eigval, eigvec = np.linalg.eigh(covariance)
    order = np.argsort(eigval)[::-1]
    eigval, eigvec = eigval[order], eigvec[:, order]
    # An eigenvector's sign is arbitrary; fix it (largest component positive) so builds are reproducible.
    signs = np.sign(eigvec[np.argmax(np.abs(eigvec), axis=0), range(3)])
    eigvec = eigvec * signs
    mean = np.array(s, dtype=np.float64) / n / 255.0
    stats = Stats(
        mean=tuple(mean.tolist()),
        std=tuple(np.sqrt(np.diag(covariance)).tolist()),
        covariance=tuple(map(tuple, covariance.tolist())),
        eigval=tuple(np.maximum(eigval, 0.0).tolist()),
        eigvec=tuple(map(tuple, eigvec.tolist())),
        count=sums.count,
        pixels=n,
        image_size=sums.size,
    )
    mean_image = (sums.image_sum.astype(np.float64) / (sums.count * 255.0)).astype(np.float32)
    return stats, mean_image
