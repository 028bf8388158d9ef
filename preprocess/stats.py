"""Train-split pixel statistics from exact integer sums, so that any split of the work merges to the same result.

Per image we add the uint8 pixels to a per-pixel sum (the paper's mean image; the channel sums follow from it)
and the channel cross-products to a 3x3 sum (the RGB covariance for PCA lighting). All sums are integers: merging the partial
sums of any number of workers in any order gives bit-identical statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.contract import Stats

__all__ = ["PixelSums", "finalize", "max_images"]

# Adding an image to uint32 per-pixel sums moves half the memory of uint64, and is exact for 2**32 // 255 images: far
# more than one shard or worker ever sums. Merging widens to uint64, so a build's running total is exact for
# as many images as the int64 cross-product sum holds (see max_images).
NARROW_IMAGES = 2**32 // 255
EXACT_BLOCK = 256  # pixels per float32 block in _cross_products


def max_images(size: int) -> int:
    """Images whose pixel sums stay exact: each adds up to 255**2 per pixel to the int64 cross-product sum."""
    return (2**63 - 1) // (255**2 * size * size)


@dataclass
class PixelSums:
    """Mergeable integer sums over uint8 RGB images of one size."""

    size: int
    count: int = 0
    image_sum: np.ndarray | None = None  # uint32 [size, size, 3] while narrow, uint64 once merged past it
    cross_sum: np.ndarray | None = None  # int64 [3, 3], sum of x x^T over pixels

    def __post_init__(self):
        if self.image_sum is None:
            self.image_sum = np.zeros((self.size, self.size, 3), np.uint32)
            self.cross_sum = np.zeros((3, 3), np.int64)

    @property
    def channel_sum(self) -> list[int]:
        """Per-channel pixel sums, exact (derived from the per-pixel sums)."""
        return [int(v) for v in self.image_sum.sum(axis=(0, 1), dtype=np.uint64)]

    def add(self, pixels: np.ndarray) -> None:
        if pixels.shape != (self.size, self.size, 3) or pixels.dtype != np.uint8:
            raise ValueError(f"expected uint8 {(self.size, self.size, 3)}, got {pixels.dtype} {pixels.shape}")
        if self.count >= NARROW_IMAGES and self.image_sum.dtype == np.uint32:
            self.image_sum = self.image_sum.astype(np.uint64)
        self._check_room(1)
        self.image_sum += pixels
        self.cross_sum += _cross_products(pixels)
        self.count += 1

    def merge(self, other: PixelSums) -> None:
        if other.size != self.size:
            raise ValueError(f"cannot merge sums of size {other.size} into size {self.size}")
        self._check_room(other.count)
        wide = self.count + other.count > NARROW_IMAGES or other.image_sum.dtype != np.uint32
        if wide and self.image_sum.dtype == np.uint32:
            self.image_sum = self.image_sum.astype(np.uint64)
        self.count += other.count
        self.image_sum += other.image_sum
        self.cross_sum += other.cross_sum


    def _check_room(self, more: int) -> None:
        if self.count + more > max_images(self.size):
            raise OverflowError(f"more than {max_images(self.size)} images of size {self.size} overflow the int64 sums")


def _cross_products(pixels: np.ndarray) -> np.ndarray:
    """sum over pixels of x x^T, exact, as int64 [3, 3].

    Float32 holds integers exactly up to 2**24, and a block of 256 pixels sums to at most 256 * 255**2 < 2**24,
    so one batched float32 matmul over 256-pixel blocks is exact (and BLAS has no fast integer matmul).
    """
    flat = pixels.reshape(-1, 3)
    if len(flat) % EXACT_BLOCK:
        wide = flat.astype(np.int64)  # sizes whose pixel count is not a multiple of the block: plain integers
        return wide.T @ wide
    # Planar blocks [blocks, 3, 256]: the uint8 transpose is cheap, and bmm then reads rows contiguously (1.6x
    # faster than multiplying the interleaved [256, 3] blocks).
    planar = torch.from_numpy(np.ascontiguousarray(flat.T)).reshape(3, -1, EXACT_BLOCK).permute(1, 0, 2).float()
    return torch.bmm(planar, planar.transpose(1, 2)).double().sum(dim=0).numpy().astype(np.int64)


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
