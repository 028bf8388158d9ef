"""PCA lighting (paper, section 4.1): every training image gets one RGB shift along the principal components of the
train pixels, shift = sum_j alpha_j * eigval_j * eigvec_j, with alpha_j ~ N(0, std) drawn once per image.

Three pieces, and every finisher uses all three: `draw_alphas` (a DALI random operator, so the loader's checkpoint
holds its state), `lighting_basis` (the principal components scaled by their eigenvalues, in 0..255 pixel units)
and `lighting_shift` (alpha times the basis). The CPU kernel calls `lighting_shift` per sample inside the graph,
the torch finisher per batch after it, and the random-resized path builds it from DALI operators; all three see the
same products summed in the same order, so they agree to the bit.
"""

from __future__ import annotations

import numpy as np

__all__ = ["draw_alphas", "lighting_basis", "lighting_shift"]


def draw_alphas(std: float):
    """The random part, a DALI node: alpha ~ N(0, std), one draw per image. -> float [1, 3]"""
    from nvidia.dali import fn

    return fn.random.normal(shape=[1, 3], stddev=std)


def lighting_basis(eigval, eigvec) -> np.ndarray:
    """float32 [3, 3] whose row j is eigvec[:, j] * eigval[j] * 255: the shift of alpha_j = 1, in 0..255 units.

    `eigvec` holds the eigenvectors as columns and `eigval` their eigenvalues, pixels in [0, 1] (stats.json)."""
    eigval = np.asarray(eigval, np.float32).reshape(3)
    eigvec = np.asarray(eigvec, np.float32).reshape(3, 3)
    return np.ascontiguousarray((eigvec * eigval[None, :] * np.float32(255.0)).T)


def lighting_shift(alphas, basis):
    """The per-image shift, alphas @ basis: float [n, 3] alphas and a [3, 3] basis -> float [n, 3] shifts.

    Written as broadcast products and sums, the one form that NumPy, numba (inside the CPU kernel), torch (any
    device) and DALI's arithmetic operators (`basis` as a sequence of three constant rows) all evaluate."""
    return alphas[:, 0:1] * basis[0] + alphas[:, 1:2] * basis[1] + alphas[:, 2:3] * basis[2]
