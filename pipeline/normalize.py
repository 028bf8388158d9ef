"""What is subtracted from and scales the pixels (the mean image, or channel mean/std), and the eigen data of lighting.

Statistics are data (stats.json, mean_image.npy), not constants in code. Everything here is in 0..255 pixel
units, because DALI works on uint8 pixels: stats.json and mean_image.npy use [0, 1] units, hence the x255.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.config import LoaderConfig
from pipeline.contract import Stats, load_mean_image, load_stats

__all__ = ["Normalization", "load_normalization"]


@dataclass(frozen=True, eq=False)
class Normalization:
    mean_image: np.ndarray | None  # float32 [S, S, 3], 0..255; "mean_image" mode
    mean: np.ndarray  # float32 [3], 0..255; subtracted in "channel" mode
    std: np.ndarray  # float32 [3], 0..255; divides in "channel" mode (1 in "mean_image" mode)
    eigval: np.ndarray | None  # float32 [3], eigenvalues of the [0, 1] pixel covariance
    eigvec: np.ndarray | None  # float32 [3, 3], eigenvectors as COLUMNS (rows R, G, B)


def _vector(values, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float32)
    if array.shape != (3,):
        raise ValueError(f"ImageNetLoader: {name} must have 3 values, got {values!r}")
    return array


def load_normalization(root: str, cfg: LoaderConfig, has_stats: bool, eigval=None, eigvec=None) -> Normalization:
    """Reads stats.json / mean_image.npy when the root has them; the caller's mean/std/eigen values win.

    Raises:
        ContractError: stats.json or mean_image.npy is missing or malformed (the message names the file).
        ValueError: foreign shards (no stats.json) without the values the chosen options need.
    """
    stats: Stats | None = load_stats(root) if has_stats else None
    mean_image = None
    if cfg.normalization == "mean_image":
        if stats is None:
            raise ValueError(
                f"{root} has no stats.json, so there is no mean image: pass normalization='channel' with mean/std"
            )
        mean_image = load_mean_image(root, stats) * np.float32(255.0)
        mean, std = np.zeros(3, np.float32), np.ones(3, np.float32)
    else:
        if (cfg.mean is None or cfg.std is None) and stats is None:
            raise ValueError(f"{root} has no stats.json: pass mean=(r, g, b) and std=(r, g, b) in [0, 1] units")
        mean = _vector(cfg.mean if cfg.mean is not None else stats.mean, "mean") * 255.0
        std = _vector(cfg.std if cfg.std is not None else stats.std, "std") * 255.0
    if eigval is None and stats is not None:
        eigval, eigvec = stats.eigval, stats.eigvec
    if cfg.training and cfg.lighting_std > 0 and eigval is None:
        raise ValueError(f"{root} has no stats.json: pass eigval/eigvec for PCA lighting, or lighting_std=0")
    return Normalization(
        mean_image=mean_image,
        mean=mean,
        std=std,
        eigval=None if eigval is None else _vector(eigval, "eigval"),
        eigvec=None if eigvec is None else np.asarray(eigvec, np.float32).reshape(3, 3),
    )
