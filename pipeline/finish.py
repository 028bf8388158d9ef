"""uint8 crop -> the network's input: the statistics, the plan of who does what, and every finisher.

For a crop at window (y, x) of an S x S image, every mode computes

    out = (flip(crop) - flip(mean image at the crop's window) + lighting shift) * scale     then layout and cast

with "channel" mode's mean a constant plane and scale 1/std (1 in "mean_image" mode). `plan_finish` decides once
which stage does each step (`FinishPlan`); the graph and the loader follow it:
- KERNEL: translate and center crops on the CPU, one numba pass inside the graph (`pipeline.kernels`);
- TORCH: the same crops on the GPU, as a few batched torch ops after the graph (`TorchFinisher`); they run on CPU
  tensors too, which is how the tests hold the GPU arithmetic to the kernel's and to a NumPy reference;
- DALI: random-resized crops (the mean image's window is resized like the image) and ten crops (ten outputs per
  image), by `crop_mirror_normalize`; the mean image of ten crops is subtracted by TORCH after the graph.
Statistics are data (stats.json, mean_image.npy in [0, 1] units), used here in the 0..255 units of uint8 pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.config import LoaderConfig, dali_dtype, torch_dtype
from pipeline.contract import Stats, load_mean_image, load_stats
from pipeline.lighting import lighting_basis, lighting_shift
from pipeline.windows import center_start, ten_crop_windows

__all__ = ["KERNEL", "DALI", "TORCH", "FinishPlan", "plan_finish", "Normalization", "load_normalization", "mean_planes",
           "random_resized_finish", "ten_crops", "TorchFinisher", "finish_with_torch", "AfterGraph"]  # fmt: skip

KERNEL, DALI, TORCH = "kernel", "dali", "torch"


@dataclass(frozen=True)
class FinishPlan:
    """Which stage (KERNEL, DALI, TORCH; None: not done) does each step for one configuration."""

    device: str  # "cpu" or "gpu": where the graph runs; TORCH steps run on the loader's device
    window: str  # "translate", "random_resized" (train), "center" or "ten_crop" (val)
    flip: str | None  # None for the center crop (ten crops: the fixed mirrored half)
    mean: str
    lighting: str | None  # train with lighting_std > 0
    scale: str
    cast: str  # the stage that yields the loader's dtype
    graph_dtype: str  # what the graph emits: "uint8" (TORCH finishes), "float32" or "float16"
    layout: str  # "CHW", or "HWC" for channels_last: NHWC memory, which torch views as NCHW

    @property
    def finisher(self) -> str:
        """The stage that turns the uint8 crop into floats (it flips, lights and scales)."""
        return self.scale


def plan_finish(cfg: LoaderConfig) -> FinishPlan:
    """The one decision of who finishes a crop (`cfg.device` already "cpu" or "gpu")."""
    if cfg.device not in ("cpu", "gpu"):
        raise ValueError(f"plan_finish needs device 'cpu' or 'gpu', got {cfg.device!r}")
    window = "ten_crop" if cfg.ten_crop else cfg.crop if cfg.training else "center"
    if window in ("translate", "center"):
        finisher = KERNEL if cfg.device == "cpu" else TORCH
    else:
        finisher = DALI
    mean = TORCH if window == "ten_crop" and cfg.normalization == "mean_image" else finisher
    if finisher == TORCH:
        graph_dtype = "uint8"
    elif finisher == KERNEL or mean == TORCH:  # torch subtracts the mean from float32, then casts
        graph_dtype = "float32"
    else:
        graph_dtype = dali_dtype(cfg.dtype)
    return FinishPlan(
        device=cfg.device, window=window, flip=None if window == "center" else finisher, mean=mean,
        lighting=finisher if cfg.training and cfg.lighting_std > 0 else None, scale=finisher,
        cast=finisher if graph_dtype == cfg.dtype else TORCH, graph_dtype=graph_dtype,
        layout="HWC" if cfg.channels_last else "CHW",
    )  # fmt: skip


# The statistics, in 0..255 units ------------------------------------------------------------------------------------


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


def load_normalization(root: str, cfg: LoaderConfig, has_stats: bool) -> Normalization:
    """Reads stats.json / mean_image.npy when the root has them; the config's mean/std/eigen values win.

    Raises:
        ContractError: stats.json or mean_image.npy is missing or malformed (the message names the file).
        ValueError: foreign shards (no stats.json) without the values the chosen options need.
    """
    stats: Stats | None = load_stats(root) if has_stats else None
    mean_image = None
    if cfg.normalization == "mean_image":
        if stats is None:
            raise ValueError(f"{root} has no stats.json, so there is no mean image: pass normalization='channel' "
                             "with mean/std")  # fmt: skip
        mean_image = load_mean_image(root, stats) * np.float32(255.0)
        mean, std = np.zeros(3, np.float32), np.ones(3, np.float32)
    else:
        if (cfg.mean is None or cfg.std is None) and stats is None:
            raise ValueError(f"{root} has no stats.json: pass mean=(r, g, b) and std=(r, g, b) in [0, 1] units")
        mean = _vector(cfg.mean if cfg.mean is not None else stats.mean, "mean") * 255.0
        std = _vector(cfg.std if cfg.std is not None else stats.std, "std") * 255.0
    eigval, eigvec = cfg.eigval, cfg.eigvec
    if eigval is None and stats is not None:
        eigval, eigvec = stats.eigval, stats.eigvec
    if cfg.training and cfg.lighting_std > 0 and eigval is None:
        raise ValueError(f"{root} has no stats.json: pass eigval/eigvec for PCA lighting, or lighting_std=0")
    eigval = None if eigval is None else _vector(eigval, "eigval")
    eigvec = None if eigvec is None else np.asarray(eigvec, np.float32).reshape(3, 3)
    return Normalization(mean_image, mean, std, eigval, eigvec)


def mean_planes(norm: Normalization, size: int) -> np.ndarray:
    """float32 [3, size, size] in 0..255: the mean image, or "channel" mode's mean as a constant plane (one formula)."""
    if norm.mean_image is not None:
        return np.ascontiguousarray(np.asarray(norm.mean_image, np.float32).transpose(2, 0, 1))
    return np.ascontiguousarray(np.broadcast_to(norm.mean.astype(np.float32)[:, None, None], (3, size, size)))


# DALI, inside the graph -----------------------------------------------------------------------------------------------


def _channel_shift(norm: Normalization, base: np.ndarray, alphas):
    """What `crop_mirror_normalize` subtracts per channel: `base` minus the lighting shift. -> float [3]"""
    from nvidia.dali import fn, types

    base = types.Constant(np.asarray(base, np.float32))
    if alphas is None:
        return base
    rows = [types.Constant(row) for row in lighting_basis(norm.eigval, norm.eigvec)]
    return fn.reshape(base - lighting_shift(alphas, rows), shape=[3])


def random_resized_finish(images, norm: Normalization, plan: FinishPlan, *, start, shape, crop: int, mirror, alphas):
    """Random-resized crops, `images` uint8 HWC resized to crop x crop from the window `start`/`shape`: the mean
    image's window gets the same resize (and the flip with it). -> float [3, crop, crop] (or HWC)"""
    from nvidia.dali import fn, types

    if norm.mean_image is not None:
        window = fn.slice(types.Constant(np.ascontiguousarray(norm.mean_image), device=plan.device),
                          start=start, shape=shape, axis_names="HW")  # fmt: skip
        images = images - fn.resize(window, size=[crop, crop])  # float HWC
        mean, std = _channel_shift(norm, np.zeros(3, np.float32), alphas), 1.0
    else:
        mean, std = _channel_shift(norm, norm.mean, alphas), norm.std.tolist()
    return fn.crop_mirror_normalize(images, mirror=mirror, mean=mean, std=std, dtype=_dali_type(plan.graph_dtype),
                                    output_layout=plan.layout)  # fmt: skip


def ten_crops(images, norm: Normalization, plan: FinishPlan, *, size: int, crop: int):
    """Test-time 10 patches (paper, section 4.1): 4 corners + center, then their mirrors; the mean image, if any, is
    TORCH's (`TenCropMeanImage`). uint8 HWC [size, size, 3] -> [10, 3, crop, crop] (or [10, crop, crop, 3])"""
    from nvidia.dali import fn

    mean, std = (0.0, 1.0) if plan.mean == TORCH else (norm.mean.tolist(), norm.std.tolist())
    crops = []
    for y, x, mirror in ten_crop_windows(size, crop):
        patch = fn.slice(images, start=[y, x], shape=[crop, crop], axis_names="HW")
        crops.append(fn.crop_mirror_normalize(patch, mirror=mirror, mean=mean, std=std,
                                              dtype=_dali_type(plan.graph_dtype), output_layout=plan.layout))  # fmt: skip
    return fn.stack(*crops, axis=0)


def _dali_type(name: str):
    """"float32" or "float16" as DALI spells it."""
    from nvidia.dali import types

    return {"float32": types.FLOAT, "float16": types.FLOAT16}[name]


# torch, after the graph -----------------------------------------------------------------------------------------------


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


class TenCropMeanImage:
    """The mean image's ten crop windows (mirrored where the crop is), cut once, in the batch's layout, on the
    loader's device: subtracted from a whole batch in one broadcast."""

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


class AfterGraph:
    """The plan's TORCH steps, applied to each batch the graph hands over (on the loader's device)."""

    def __init__(self, plan: FinishPlan, norm: Normalization, cfg: LoaderConfig, device: torch.device, size: int):
        self.plan, self.dtype = plan, torch_dtype(cfg.dtype)
        self.finisher = TorchFinisher(norm, cfg, device, size) if plan.finisher == TORCH else None
        self.mean_image = None
        if plan.mean == TORCH and plan.finisher != TORCH:
            self.mean_image = TenCropMeanImage(norm.mean_image, cfg, device)

    def __call__(self, images: torch.Tensor, extras=()) -> torch.Tensor:
        """images: the graph's output ([B, ...] uint8 crops for the TorchFinisher, floats otherwise); extras: the
        window parameters that come with uint8 crops. -> [B, 3, crop, crop] or [B, 10, 3, crop, crop]"""
        if self.finisher is not None:  # uint8 crops + (start, mirror[, alphas]) -> float32, in any layout
            images = self.finisher(images, *extras)
        else:
            if self.mean_image is not None:
                images = self.mean_image(images)  # DALI made float32 here
            if self.plan.layout == "HWC":  # NHWC memory: the same memory is NCHW in channels_last format
                images = images.permute(0, 3, 1, 2) if images.dim() == 4 else images.permute(0, 1, 4, 2, 3)
        if self.plan.cast == TORCH:
            images = images.to(self.dtype)  # DALI has no bfloat16
        return images
