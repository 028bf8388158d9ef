"""The last augmentation step of translate and center crops, after the DALI graph: uint8 crops -> network input.

DALI decodes just the crop window (ROI decode) and draws the random parameters (offset, flip, lighting alphas:
its RNG state is what `state_dict()` checkpoints). This step then applies, per crop,

    out = (flip(crop) - flip(mean image at the crop's window) + lighting shift) * scale     as float32 NCHW

with the mean image of "channel" mode a constant plane and scale 1/std (1 in "mean_image" mode). On the CPU one
numba pass does it all (`pipeline.kernels`, into recycled buffers: `pipeline.buffers`); on CUDA the same formula
runs as a few batched torch ops. The torch version also runs on CPU tensors, which is how the tests hold the
GPU arithmetic to the kernel's and to a NumPy reference without a GPU.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.buffers import BufferPool
from pipeline.config import LoaderConfig
from pipeline.normalize import Normalization
from pipeline.windows import IMAGE_SIZE, center_start

__all__ = ["CropFinisher", "finished_after_graph", "finish_with_torch"]


def finished_after_graph(cfg: LoaderConfig) -> bool:
    """True for the modes whose crops leave DALI as uint8 and are finished here: translate crops (train) and the
    center crop (val). Random-resized crops and ten crops stay in DALI (resize; ten outputs per image)."""
    return not cfg.ten_crop and not (cfg.training and cfg.crop == "random_resized")


class CropFinisher:
    """Holds the mean planes, the lighting basis and the output buffers on the loader's device."""

    def __init__(self, norm: Normalization, cfg: LoaderConfig, device: torch.device):
        if norm.mean_image is not None:
            mean_hwc = np.asarray(norm.mean_image, np.float32)
        else:  # "channel" mode: a constant plane, so one formula serves both modes
            mean_hwc = np.broadcast_to(norm.mean.astype(np.float32), (IMAGE_SIZE, IMAGE_SIZE, 3))
        self.mean = np.ascontiguousarray(mean_hwc.transpose(2, 0, 1))  # [3, S, S]
        self.mean_mirrored = np.ascontiguousarray(self.mean[:, :, ::-1])
        self.scale = (1.0 / norm.std).astype(np.float32)
        self.basis = norm.lighting_basis() if norm.eigval is not None else None  # shift = basis @ alpha
        self.channels_last = cfg.channels_last
        self.device = device
        self.center = center_start(IMAGE_SIZE, cfg.crop_size)
        self.pool = BufferPool()
        if device.type != "cpu":
            self._mean_hwc = torch.from_numpy(np.ascontiguousarray(mean_hwc)).to(device)
            self._scale = torch.from_numpy(self.scale).to(device)

    def __call__(self, crops: torch.Tensor, starts=None, mirrors=None, alphas=None) -> torch.Tensor:
        """crops: uint8 [B, h, w, 3] on the loader's device; starts int [B, 2] (y, x), mirrors int [B], alphas
        float [B, 3] on the CPU, or None for val's unflipped, unlit center crops. -> float32 [B, 3, h, w]"""
        count = crops.shape[0]
        if starts is None:
            starts = torch.full((count, 2), self.center, dtype=torch.int32)
        if mirrors is None:
            mirrors = torch.zeros(count, dtype=torch.int32)
        shifts = torch.zeros(count, 3)
        if alphas is not None and self.basis is not None:
            shifts = alphas.reshape(count, 3).float() @ torch.from_numpy(self.basis).T
        if crops.device.type == "cpu":
            return self._on_cpu(crops, starts, mirrors, shifts)
        device = crops.device
        return finish_with_torch(
            crops, starts.to(device), mirrors.to(device), shifts.to(device), self._mean_hwc, self._scale,
            self.channels_last,
        )  # fmt: skip

    def _on_cpu(self, crops, starts, mirrors, shifts) -> torch.Tensor:
        from pipeline.kernels import finish_crops  # compiles on first use (about 2 s; cached on disk afterwards)

        count, height, width, _ = crops.shape
        if self.channels_last:  # NHWC memory, written through its NCHW view
            out = torch.from_numpy(self.pool.take((count, height, width, 3))).permute(0, 3, 1, 2)
        else:
            out = torch.from_numpy(self.pool.take((count, 3, height, width)))
        finish_crops(
            crops.contiguous().numpy(), self.mean, self.mean_mirrored, starts.to(torch.int64).numpy(),
            mirrors.to(torch.int32).numpy(), shifts.contiguous().numpy(), self.scale, out.numpy(),
        )  # fmt: skip
        return out


def finish_with_torch(crops, starts, mirrors, shifts, mean_hwc, scale, channels_last: bool = False) -> torch.Tensor:
    """The kernel's formula as batched torch ops on any device (a gather for the windows and flips, then one
    fused elementwise expression). mean_hwc: float32 [S, S, 3]; the rest as in `CropFinisher.__call__`."""
    count, height, width, _ = crops.shape
    device = crops.device
    rows = torch.arange(height, device=device)
    cols = torch.arange(width, device=device)
    source_cols = torch.where(mirrors.bool()[:, None], width - 1 - cols, cols)  # [B, w]: output col j <- source col
    batch = torch.arange(count, device=device)[:, None, None]
    pixels = crops[batch, rows[None, :, None], source_cols[:, None, :]]  # [B, h, w, 3], flipped
    starts = starts.long()
    mean = mean_hwc[(starts[:, :1] + rows)[:, :, None], (starts[:, 1:] + source_cols)[:, None, :]]  # [B, h, w, 3]
    out = (pixels.float() - mean + shifts[:, None, None, :]) * scale
    out = out.permute(0, 3, 1, 2)  # NCHW view of NHWC memory
    return out.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
