"""Per-pixel mean-image subtraction (paper, section 2) at each crop's window, in place on the batch.

Why not in the DALI graph: on the CPU, DALI's slice of the mean image plus the float subtraction cost about
180 us per 224x224 image (a third of the loader's CPU time), while `tensor.sub_(mean_window_view)` costs about
30 us: a view of the mean image needs no copy, and one image's output stays in cache. CPU batches are handled
through NumPy views of the same memory (single-threaded; see `__call__`), CUDA batches by torch (one small kernel
per image): the same windows, the same arithmetic. The DALI graph emits the crop already mirrored,
transposed, lit and cast to float32; this step subtracts the mean image's window of that crop, mirrored with it.
Random-resized crops keep the subtraction in DALI, because their mean window has to be resized too.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.config import LoaderConfig
from pipeline.normalize import Normalization
from pipeline.windows import IMAGE_SIZE, center_start, ten_crop_windows

__all__ = ["MeanImageSubtraction", "subtracted_by_torch"]


def subtracted_by_torch(cfg: LoaderConfig, norm: Normalization) -> bool:
    """True where this module (not the DALI graph) subtracts the mean image."""
    return norm.mean_image is not None and not (cfg.training and cfg.crop == "random_resized")


class MeanImageSubtraction:
    """Holds the mean image and its mirror image on the loader's device, in the batch's layout."""

    def __init__(self, mean_image: np.ndarray, cfg: LoaderConfig, device: torch.device):
        hwc = torch.from_numpy(np.ascontiguousarray(mean_image, dtype=np.float32))  # [S, S, 3], 0..255
        both = torch.stack([hwc, hwc.flip(1)])  # [2, S, S, 3]: index 1 is the mirror image
        self.channels_last = cfg.channels_last
        self.stack = (both if cfg.channels_last else both.permute(0, 3, 1, 2)).contiguous().to(device)
        self._stack_np = self.stack.numpy() if device.type == "cpu" else None  # numpy slicing: 20x cheaper views
        self.crop = cfg.crop_size
        self.fixed = None  # val: the same windows for every image
        if not cfg.training:
            mid = center_start(IMAGE_SIZE, self.crop)
            windows = ten_crop_windows(IMAGE_SIZE, self.crop) if cfg.ten_crop else [(mid, mid, 0)]
            fixed = torch.stack([self.window(y, x, m) for y, x, m in windows])
            self.fixed = fixed if cfg.ten_crop else fixed[0]

    def window(self, y: int, x: int, mirror: int, stack=None):
        """A view of the mean image's crop window at (y, x), mirrored when `mirror` (as the crop was).

        From `stack` when given (the NumPy view of the same planes), else from the torch tensor.
        """
        c = self.crop
        if mirror:  # the mirrored crop's window lies mirrored in the mirror image
            x = IMAGE_SIZE - c - x
        plane = (self.stack if stack is None else stack)[int(bool(mirror))]
        return plane[y : y + c, x : x + c, :] if self.channels_last else plane[:, y : y + c, x : x + c]

    def __call__(self, images: torch.Tensor, windows: list[list[int]] | None) -> torch.Tensor:
        """In place. `windows` holds each image's (y, x, mirror); None for val's fixed windows."""
        if windows is None:
            return images.sub_(self.fixed)  # broadcast over the batch
        if images.device.type == "cpu":
            # NumPy on the same memory: single-threaded, so it does not fight DALI's threads for the cores the
            # way torch's intra-op threads do in a process that left them at their default (-25% throughput).
            out = images.numpy()
            for image, (y, x, mirror) in zip(out, windows, strict=True):
                np.subtract(image, self.window(y, x, mirror, self._stack_np), out=image)
            return images
        for image, (y, x, mirror) in zip(images, windows, strict=True):
            image.sub_(self.window(y, x, mirror))
        return images
