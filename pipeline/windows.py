"""Where a crop is taken from its image, and how just that window is decoded: JPEG bytes -> uint8 crop.

The fixed windows (center, ten crops) are pure arithmetic that the graph and the finishers share; the random ones
(translations, random-resized windows) are DALI operators drawn on the CPU, whose state the loader checkpoints.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["IMAGE_SIZE", "center_start", "ten_crop_windows", "translate_window", "random_resized_window", "band_window",
           "start_node", "decode_window", "decode_image"]  # fmt: skip

IMAGE_SIZE = 256  # the paper's (and build-shards' default) image side; builds say theirs in manifest image_size


def center_start(size: int, crop: int) -> int:
    """Offset of the central crop on both axes (rounded down when size - crop is odd)."""
    return (size - crop) // 2


def ten_crop_windows(size: int, crop: int) -> list[tuple[int, int, int]]:
    """(y, x, mirror) of the paper's 10 test patches (section 4.1): TL, TR, BL, BR, center, then the same mirrored."""
    last, mid = size - crop, center_start(size, crop)
    corners_and_center = [(0, 0), (0, last), (last, 0), (last, last), (mid, mid)]
    return [(y, x, mirror) for mirror in (0, 1) for y, x in corners_and_center]


def translate_window(size: int, crop: int):
    """Paper's translations: an offset uniform over the (size - crop + 1)^2 valid positions. -> ([y, x], [h, w])"""
    from nvidia.dali import fn, types

    if crop == size:
        return [0, 0], [crop, crop]  # one position; DALI refuses the empty range [0, 0]
    start = fn.random.uniform(range=[0, size - crop], shape=[2], dtype=types.INT32)  # integers: both ends included
    return start, [crop, crop]


def random_resized_window(size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """Inception-style window: area fraction ~ U(scale), log aspect ~ U(log ratio); sides clamped to the image
    (instead of torchvision's 10 retries), position uniform. -> ([y, x], [h, w])"""
    from nvidia.dali import fn, types
    from nvidia.dali import math as dmath

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
    from nvidia.dali import fn, types

    return fn.cast(fn.random.uniform(range=[0.0, 1.0]) * fn.cast(count, dtype=types.FLOAT), dtype=types.INT32)


def band_window(start, crop: int, size: int):
    """The whole rows of a square crop's window (start [y, x], a list or an int32 [2] node) in an image of side
    `size`: (start [y, 0], shape [crop, size]). The CPU kernel reads the crop's columns from them itself, because
    DALI's CPU decoder crops columns by copying each decoded row once more (`pipeline.kernels`)."""
    from nvidia.dali import types

    if isinstance(start, list):
        return [start[0], 0], [crop, size]
    return start * types.Constant(np.array([1, 0], np.int32)), [crop, size]


def start_node(start):
    """A window start as a graph node: fixed starts ([y, x] lists) become int32 constants. -> int32 [2]"""
    from nvidia.dali import types

    return types.Constant(np.asarray(start, np.int32)) if isinstance(start, list) else start


# The shards are 4:2:0 JPEGs. libjpeg-turbo (the CPU decoder) interpolates the half-resolution chroma ("fancy"
# upsampling) while nvJPEG by default repeats it; with this flag the mixed decoder interpolates too, so CPU and GPU
# batches agree. The CPU decoder does so anyway: the flag leaves its output unchanged.
_SAME_CHROMA_AS_CPU = dict(jpeg_fancy_upsampling=True)


def decode_window(jpegs, start, shape, decoder: str):
    """Decodes only the window (ROI decode: fewer IDCT blocks on the CPU). -> uint8 HWC [h, w, 3]"""
    from nvidia.dali import fn, types

    return fn.decoders.image_slice(jpegs, start=start, shape=shape, axis_names="HW", device=decoder,
                                   output_type=types.RGB, **_SAME_CHROMA_AS_CPU)  # fmt: skip


def decode_image(jpegs, decoder: str):
    """Decodes the whole image. -> uint8 HWC [S, S, 3]"""
    from nvidia.dali import fn, types

    return fn.decoders.image(jpegs, device=decoder, output_type=types.RGB, **_SAME_CHROMA_AS_CPU)
