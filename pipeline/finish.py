"""The last augmentation step of translate and center crops: uint8 crop windows -> the network's input.

DALI decodes just the crop window (ROI decode) and draws the random parameters (offset, flip, lighting alphas:
its RNG state is what `state_dict()` checkpoints). Then, per crop,

    out = (flip(crop) - flip(mean image at the crop's window) + lighting shift) * scale     as float32 NCHW

with the mean image of "channel" mode a constant plane and scale 1/std (1 in "mean_image" mode). On the CPU a
numba kernel does it inside the graph (`pipeline.kernels`); on CUDA the graph hands over the uint8 crops and the
parameters (both on the GPU), and the same formula runs as a few batched torch ops here (`TorchFinisher`). The torch
version also runs on CPU tensors, which is how the tests hold the GPU arithmetic to the kernel's and to a NumPy
reference without a GPU.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.config import LoaderConfig
from pipeline.lighting import lighting_basis, lighting_shift
from pipeline.normalize import Normalization
from pipeline.windows import center_start

__all__ = ["TorchFinisher", "finished_by_kernel", "mean_planes", "finish_with_torch"]


def finished_by_kernel(cfg: LoaderConfig) -> bool:
    """True for the modes finished by this formula: translate crops (train) and the center crop (val). Random-resized
    crops and ten crops are finished by DALI's crop_mirror_normalize (a resize; ten outputs per image)."""
    return not cfg.ten_crop and not (cfg.training and cfg.crop == "random_resized")


def mean_planes(norm: Normalization, size: int) -> np.ndarray:
    """float32 [3, size, size] in 0..255: the mean image, or "channel" mode's mean as a constant plane (one formula)."""
    if norm.mean_image is not None:
        return np.ascontiguousarray(np.asarray(norm.mean_image, np.float32).transpose(2, 0, 1))
    return np.ascontiguousarray(np.broadcast_to(norm.mean.astype(np.float32)[:, None, None], (3, size, size)))


class TorchFinisher:
    """The GPU loader's finishing step, after the graph. Everything it reads lives on the crops' device (the mean
    planes, the lighting basis, the graph's random parameters) and everything it makes is made there, so a batch
    queues its kernels without waiting for the GPU: a copy from host memory, or a value read back, would stall the
    CPU until the GPU caught up, once per batch."""

    def __init__(self, norm: Normalization, cfg: LoaderConfig, device: torch.device, size: int):
        """`size`: the side of the shards' square images."""
        self.mean_hwc = torch.from_numpy(np.ascontiguousarray(mean_planes(norm, size).transpose(1, 2, 0))).to(device)
        self.scale = torch.from_numpy((1.0 / norm.std).astype(np.float32)).to(device)
        basis = lighting_basis(norm.eigval, norm.eigvec) if norm.eigval is not None else None
        self.basis = None if basis is None else torch.from_numpy(basis).to(device)
        self.channels_last = cfg.channels_last
        self.center = center_start(size, cfg.crop_size)

    def __call__(self, crops: torch.Tensor, starts=None, mirrors=None, alphas=None) -> torch.Tensor:
        """crops: uint8 [B, h, w, 3]; starts int [B, 2] (y, x), mirrors int [B] (or [B, 1]), alphas float [B, 3]
        (or [B, 1, 3]), all on the crops' device; None for val's unflipped, unlit center crops.
        -> float32 [B, 3, h, w]"""
        count, device = crops.shape[0], crops.device
        if starts is None:
            starts = torch.full((count, 2), self.center, dtype=torch.int32, device=device)
        if mirrors is None:
            mirrors = torch.zeros(count, dtype=torch.int32, device=device)
        if alphas is not None and self.basis is not None:
            shifts = lighting_shift(alphas.reshape(count, 3).float(), self.basis)
        else:
            shifts = torch.zeros(count, 3, device=device)
        return finish_with_torch(crops, starts, mirrors.reshape(count), shifts, self.mean_hwc, self.scale,
                                 self.channels_last)  # fmt: skip


def finish_with_torch(crops, starts, mirrors, shifts, mean_hwc, scale, channels_last: bool = False) -> torch.Tensor:
    """The kernel's formula as batched torch ops on any device (a gather for the windows and flips, then one
    fused elementwise expression). mean_hwc: float32 [S, S, 3]; the rest as in `TorchFinisher.__call__`."""
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
