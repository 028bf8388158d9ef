"""Antialiased bilinear resampling of a uint8 RGB crop: torch's uint8 kernel, the one torchvision's Resize uses.

It works on the decoded numpy array in place (no copy into Pillow's 4-byte layout and back), with vectorised
loops Pillow's resize lacks, for the same pixels (they agree within 1 grey level).
"""

from __future__ import annotations

import numpy as np

__all__ = ["resize_region"]


def resize_region(pixels: np.ndarray, box: tuple[float, float, float, float], size: int) -> np.ndarray:
    """Resamples the region `box` = (x0, y0, x1, y1) of `pixels` [H, W, 3] to [size, size, 3].

    The box is rounded to whole pixels (a shift of at most half a source pixel).
    """
    # torch is imported here, not with the module: the CLI imports this package, and `--help` should not pay
    # for torch's start-up. After the first call this is a dictionary lookup.
    import torch
    import torch.nn.functional as F

    height, width = pixels.shape[:2]
    x0, x1 = _bounds(box[0], box[2], width)
    y0, y1 = _bounds(box[1], box[3], height)
    # [1, 3, h, w] in dense channels-last memory: the layout torch's vectorised uint8 kernel needs (a strided
    # view of the crop would take the generic path, at half the speed).
    region = np.ascontiguousarray(pixels[y0:y1, x0:x1])
    tensor = torch.from_numpy(region).permute(2, 0, 1).unsqueeze(0)
    out = F.interpolate(tensor, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    # The kernel returns channels-first memory; one copy to HWC-contiguous here is cheaper than the strided reads
    # that the encoder, the statistics and the sums would otherwise each pay.
    return np.ascontiguousarray(out[0].permute(1, 2, 0).numpy())


def _bounds(start: float, stop: float, limit: int) -> tuple[int, int]:
    lo = min(max(0, round(start)), limit - 1)
    return lo, max(lo + 1, min(limit, round(stop)))
