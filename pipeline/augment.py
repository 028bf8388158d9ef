"""The augmentations as DALI graph pieces, one function per step (paper, sections 2 and 4.1).

Every function takes `dev` ("cpu" or "gpu") and builds the same operators for either device, so the GPU
path is the CPU path with one switch flipped and cannot rot unnoticed. Random parameters (crop windows,
flips, lighting alphas) are drawn on the CPU by separate operators and fed to the kernels as arguments.
Translate and center crops are finished on the CPU by our numba kernel (`finish_crops`: one pass, 2-3x cheaper
than DALI's CPU operators), on the GPU by torch after the graph (`pipeline.finish`). Random-resized crops and ten
crops are finished by `crop_mirror_normalize`, which fuses the flip, the HWC->CHW transpose, the per-channel shift
(channel mean and PCA lighting) and the cast in one pass.
"""

from __future__ import annotations

import math

import numpy as np
from nvidia.dali import fn, types
from nvidia.dali import math as dmath

from pipeline.lighting import lighting_basis, lighting_shift
from pipeline.normalize import Normalization
from pipeline.windows import ten_crop_windows

__all__ = [
    "translate_window",
    "random_resized_window",
    "channel_shift",
    "finish_crops",
    "start_node",
    "decode_window",
    "decode_image",
    "normalize_window",
    "ten_crops",
    "DALI_DTYPES",
]

DALI_DTYPES = {"float32": types.FLOAT, "float16": types.FLOAT16, "bfloat16": types.FLOAT}  # bf16: cast by torch


def _const(array: np.ndarray, dev: str):
    return types.Constant(np.ascontiguousarray(array), device=dev)


def translate_window(size: int, crop: int):
    """Paper's translations: an offset uniform over the (size - crop + 1)^2 valid positions. -> ([y, x], [h, w])"""
    if crop == size:
        return [0, 0], [crop, crop]  # one position; DALI refuses the empty range [0, 0]
    start = fn.random.uniform(range=[0, size - crop], shape=[2], dtype=types.INT32)  # integers: both ends included
    return start, [crop, crop]


def random_resized_window(size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """Inception-style window: area fraction ~ U(scale), log aspect ~ U(log ratio); sides clamped to the image
    (instead of torchvision's 10 retries), position uniform. -> ([y, x], [h, w])"""
    area = fn.random.uniform(range=list(scale)) * float(size * size)
    aspect = dmath.exp(fn.random.uniform(range=[math.log(ratio[0]), math.log(ratio[1])]))
    w = dmath.clamp(dmath.sqrt(area * aspect), 1.0, float(size))
    h = dmath.clamp(dmath.sqrt(area / aspect), 1.0, float(size))
    w, h = fn.cast(w, dtype=types.INT32), fn.cast(h, dtype=types.INT32)
    x = dmath.min(_uniform_below(size - w + 1), size - w)
    y = dmath.min(_uniform_below(size - h + 1), size - h)
    return fn.stack(y, x), fn.stack(h, w)


def _uniform_below(count):
    """An int32 uniform over 0..count-1, for a per-sample `count`."""
    return fn.cast(fn.random.uniform(range=[0.0, 1.0]) * fn.cast(count, dtype=types.FLOAT), dtype=types.INT32)


def channel_shift(norm: Normalization, base: np.ndarray, alphas=None):
    """What `crop_mirror_normalize` subtracts per channel: `base` minus the lighting shift (0..255 units), the
    shift built from DALI's arithmetic operators by `lighting_shift` itself. -> float [3]"""
    base = types.Constant(np.asarray(base, np.float32))
    if alphas is None:
        return base
    rows = [types.Constant(row) for row in lighting_basis(norm.eigval, norm.eigvec)]
    return fn.reshape(base - lighting_shift(alphas, rows), shape=[3])


def finish_crops(crops, *, start, mirror=None, alphas=None, block: np.ndarray, layout: str = "CHW"):
    """CPU: flip, mean window, lighting, 1/std, layout and cast in one pass (`pipeline.kernels`) over uint8 HWC
    crops. `mirror`: int32 [1] per sample; `alphas`: float [1, 3]; `block` (`kernels.parameter_block`) must
    outlive the pipeline. -> float [3, h, w] (or HWC)"""
    from pipeline.kernels import finishing_operator

    address = types.Constant(np.array([block.ctypes.data], np.int64), dtype=types.INT64)
    start = start_node(start)
    mirror = types.Constant(np.zeros(1, np.int32)) if mirror is None else mirror
    alphas = types.Constant(np.zeros((1, 3), np.float32)) if alphas is None else alphas
    return finishing_operator(layout)(crops, start, mirror, alphas, address)


def start_node(start):
    """A window start as a graph node: fixed starts ([y, x] lists) become int32 constants. -> int32 [2]"""
    return types.Constant(np.asarray(start, np.int32)) if isinstance(start, list) else start


# The shards are 4:2:0 JPEGs. libjpeg-turbo (the CPU decoder) interpolates the half-resolution chroma ("fancy"
# upsampling) while nvJPEG by default repeats it; with this flag the mixed decoder interpolates too, so CPU and GPU
# batches agree. The CPU decoder does so anyway: the flag leaves its output unchanged.
_SAME_CHROMA_AS_CPU = dict(jpeg_fancy_upsampling=True)


def decode_window(jpegs, start, shape, decoder: str):
    """Decodes only the window (ROI decode: fewer IDCT blocks on the CPU). -> uint8 HWC [h, w, 3]"""
    return fn.decoders.image_slice(jpegs, start=start, shape=shape, axis_names="HW", device=decoder,
                                   output_type=types.RGB, **_SAME_CHROMA_AS_CPU)  # fmt: skip


def decode_image(jpegs, decoder: str):
    """Decodes the whole image. -> uint8 HWC [S, S, 3]"""
    return fn.decoders.image(jpegs, device=decoder, output_type=types.RGB, **_SAME_CHROMA_AS_CPU)


def normalize_window(images, norm: Normalization, dev: str, *, start, shape, crop: int, mirror, alphas=None,
                     dtype=types.FLOAT, layout: str = "CHW"):  # fmt: skip
    """Random-resized crops: mean subtraction at the image's own window (resized like it, mirrored with it), lighting
    (from `alphas`), flip, layout, cast. `images` are uint8 HWC crops resized to crop x crop; `start`/`shape` give
    their window in the image. -> float [3, crop, crop] (or HWC)
    """
    if norm.mean_image is not None:
        window = fn.slice(_const(norm.mean_image, dev), start=start, shape=shape, axis_names="HW")
        images = images - fn.resize(window, size=[crop, crop])  # float HWC
        mean, std = channel_shift(norm, np.zeros(3, np.float32), alphas), 1.0
    else:
        mean, std = channel_shift(norm, norm.mean, alphas), norm.std.tolist()
    return fn.crop_mirror_normalize(images, mirror=mirror, mean=mean, std=std, dtype=dtype, output_layout=layout)


def ten_crops(images, norm: Normalization, *, size: int, crop: int, dtype=types.FLOAT, layout="CHW"):
    """Test-time 10 patches (paper, section 4.1): 4 corners + center, then their mirrors; a mean image is left to
    `pipeline.mean_image`. uint8 HWC [size, size, 3] -> [10, 3, crop, crop] (or [10, crop, crop, 3])"""
    mean, std = (0.0, 1.0) if norm.mean_image is not None else (norm.mean.tolist(), norm.std.tolist())
    crops = []
    for y, x, mirror in ten_crop_windows(size, crop):
        patch = fn.slice(images, start=[y, x], shape=[crop, crop], axis_names="HW")
        crops.append(fn.crop_mirror_normalize(patch, mirror=mirror, mean=mean, std=std, dtype=dtype, output_layout=layout))
    return fn.stack(*crops, axis=0)
