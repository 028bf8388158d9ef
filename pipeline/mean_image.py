"""Per-pixel mean-image subtraction for ten-crop batches (paper, sections 2 and 4.1), in place, after DALI.

The ten windows are the same for every image, so the mean image's ten windows (mirrored where the crop is) are
cut once and subtracted from the whole batch in one broadcast. Translate and center crops get their mean window
in `pipeline.finish`, random-resized crops inside the DALI graph (their window is resized like the image).
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.config import LoaderConfig
from pipeline.normalize import Normalization
from pipeline.windows import ten_crop_windows

__all__ = ["TenCropMeanImage", "subtracted_by_torch"]


def subtracted_by_torch(cfg: LoaderConfig, norm: Normalization) -> bool:
    """True where this module (not the DALI graph, not `pipeline.finish`) subtracts the mean image."""
    return norm.mean_image is not None and cfg.ten_crop


class TenCropMeanImage:
    """The mean image's ten crop windows, in the batch's layout, on the loader's device."""

    def __init__(self, mean_image: np.ndarray, cfg: LoaderConfig, device: torch.device):
        hwc = torch.from_numpy(np.ascontiguousarray(mean_image, dtype=np.float32))  # [S, S, 3], 0..255
        c = cfg.crop_size
        windows = [hwc[y : y + c, x : x + c].flip(1) if mirror else hwc[y : y + c, x : x + c]
                   for y, x, mirror in ten_crop_windows(hwc.shape[0], c)]  # fmt: skip
        stacked = torch.stack(windows)  # [10, c, c, 3]
        self.windows = (stacked if cfg.channels_last else stacked.permute(0, 3, 1, 2)).contiguous().to(device)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """In place on [B, 10, 3, c, c] (or [B, 10, c, c, 3] before the channels_last permute)."""
        return images.sub_(self.windows)
