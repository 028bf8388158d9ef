"""Antialiased bilinear resampling to a window of a virtually resized uint8 image: Pillow's filter, in numba.

The build asks for "the central 256x256 of the image resized to 256 on its short side". That is computed here in
one step, for the window only, with the arithmetic of Pillow's `Image.resize(..., BILINEAR)`: the same triangle
filter widened by the scale, the same 22-bit fixed-point weights and rounding, one pass per axis through a uint8
intermediate. Each pass alone gives Pillow's pixels exactly; the two together are within one grey level of them
(the order of the passes decides the intermediate's rounding, and Pillow's order has changed between releases).
So the shards hold what a hand-written PIL build and torchvision's `Resize(256)` on PIL images give.

Why not Pillow itself: it works in its own 4-byte pixel layout, which costs a copy in and a copy out of every
decoded image. Why not torch's antialiased kernel: it cannot start at a fractional source position, and rounding
the window's start shifts the image by up to half a source pixel, a visible difference on detailed photographs
(and torch takes a second to import).

How it is fast: both passes run the same loop, which mixes whole rows with one weight each (a loop the compiler
vectorizes) and writes its result transposed. The vertical pass runs first, so the horizontal one, which runs on
the transposed rows, only sees the rows that are kept.
"""

from __future__ import annotations

import sys

import numpy as np
from numba import njit

__all__ = ["resize_window"]

PRECISION_BITS = 22  # 32 bits - 8 for the pixel value - 2 for weights above 1 and the sign: no int32 sum overflows
_HALF = 1 << (PRECISION_BITS - 1)
_JIT = dict(nogil=True, boundscheck=False, cache=True)
_BLOCK = 16  # output rows made before they are written out transposed
_LITTLE_ENDIAN = sys.byteorder == "little"  # the RGB -> RGBX step assembles a pixel's bytes into one uint32


def resize_window(pixels: np.ndarray, extent: tuple[float, float], resized: tuple[int, int],
                  window: tuple[int, int, int, int]) -> np.ndarray:  # fmt: skip
    """The `window` (left, top, width, height) of `pixels` [H, W, C] resized to `resized` (width, height).

    `extent` is the source's (width, height) in `pixels`' units: the array's own size, or less where a decoder
    scaled the image down in the DCT domain and its last block holds a partial pixel.
    """
    left, top, width, height = window
    if not (width > 0 and height > 0 and 0 <= left and left + width <= resized[0] and 0 <= top
            and top + height <= resized[1]):  # fmt: skip
        raise ValueError(f"window {window} is not inside the resized {resized[0]}x{resized[1]} image")
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3) or 0 in pixels.shape:
        raise ValueError(f"expected a non-empty uint8 [H, W] or [H, W, C] image, got {pixels.dtype} {pixels.shape}")
    source = np.ascontiguousarray(pixels.reshape(pixels.shape[0], pixels.shape[1], -1))
    out = _resize(source, extent[0] / resized[0], extent[1] / resized[1], left, top, width, height)
    return out.reshape((height, width) + pixels.shape[2:])


@njit(**_JIT)
def _resize(source, x_scale, y_scale, left, top, width, height):
    """The two passes, vertical first, in one compiled call."""
    y_start, y_count, y_weights = _coefficients(source.shape[0], y_scale, top, height)
    x_start, x_count, x_weights = _coefficients(source.shape[1], x_scale, left, width)
    x_first, x_last = x_start[0], x_start[-1] + x_count[-1]  # the source columns the window needs
    channels = source.shape[2]
    between = 4 if channels == 3 and _LITTLE_ENDIAN else channels  # RGB travels as RGBX between the passes
    columns = _mix_rows_transposed(source, y_start, y_count, y_weights, x_first, x_last, between)  # [x, y, .]
    return _mix_rows_transposed(columns, x_start - x_first, x_count, x_weights, 0, height, channels)  # [y, x, C]


@njit(**_JIT)
def _coefficients(in_size, scale, first, count):
    """For output positions first..first+count-1 (of a resize by 1/scale): the first source index, the number of
    taps and their int32 weights. Position i samples the source around (i + 0.5) * scale; when shrinking, the
    triangle is widened by the scale, so that every source pixel contributes (that is the antialiasing)."""
    stretch = max(scale, 1.0)
    support = stretch  # the triangle's half-width is one output pixel
    taps = int(np.ceil(support)) * 2 + 1
    inverse = 1.0 / stretch
    start = np.empty(count, np.int64)
    ntaps = np.empty(count, np.int64)
    weights = np.zeros((count, taps), np.int32)
    real = np.empty(taps, np.float64)
    for i in range(count):
        center = (first + i + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)  # int() truncates towards zero, as the reference's C casts do
        n = min(int(center + support + 0.5), in_size) - lo
        total = 0.0
        for k in range(n):
            real[k] = max(1.0 - abs((k + lo - center + 0.5) * inverse), 0.0)
            total += real[k]
        for k in range(n):
            w = real[k] / total if total != 0.0 else real[k]
            w *= 1 << PRECISION_BITS
            weights[i, k] = int(w - 0.5) if w < 0 else int(w + 0.5)
        start[i], ntaps[i] = lo, n
    return start, ntaps, weights


@njit(**_JIT)
def _clip8(value):
    value >>= PRECISION_BITS
    return 0 if value < 0 else (255 if value > 255 else value)


@njit(**_JIT)
def _mix_rows_transposed(rows, start, count, weights, first, last, channels):
    """out[j, i] = rows[start[i] + k, first + j] mixed with weights[i, k]: [R, J, C] -> [last - first, len(start),
    channels], keeping the first `channels` of C, or padding 3 to 4 (an unused fourth byte).

    Each output row mixes whole input rows with one weight per row, a loop over contiguous memory that LLVM
    vectorizes. Rows are made a block at a time and written out transposed, a block's run of pixels per store
    loop; with 4 bytes per pixel a pixel is one 32-bit store, which is why the intermediate is padded."""
    width = rows.shape[2]
    span, columns, rows_out = (last - first) * width, last - first, len(start)
    out = np.empty((columns, rows_out, channels), np.uint8)
    flat = out.reshape(-1)
    quad = width == 4 or channels == 4  # the block holds 4-byte pixels, moved as one uint32 each
    pixel = 4 if quad else width
    acc = np.empty(span, np.int32)
    clipped = np.empty(span, np.uint8)
    block = np.empty(_BLOCK * columns * pixel, np.uint8)  # a block of output rows, `pixel` bytes a pixel
    block32 = block.view(np.uint32) if quad else np.empty(0, np.uint32)
    out32 = flat.view(np.uint32) if channels == 4 else np.empty(0, np.uint32)
    run32 = np.empty(_BLOCK, np.uint32)  # one column's run of the block, on its way to a 3-byte output
    run = run32.view(np.uint8)
    for i0 in range(0, rows_out, _BLOCK):
        n = min(_BLOCK, rows_out - i0)
        for b in range(n):
            acc[:] = _HALF
            for k in range(count[i0 + b]):
                line = rows[start[i0 + b] + k].reshape(-1)[first * width : last * width]
                weight = weights[i0 + b, k]
                for j in range(span):
                    acc[j] += np.int32(line[j]) * weight
            row = block[b * columns * pixel : (b + 1) * columns * pixel]
            if width == pixel:
                for j in range(span):
                    row[j] = _clip8(acc[j])
            else:  # 3 -> 4: clip, then spread (two loops LLVM vectorizes; one doing both it does not)
                for j in range(span):
                    clipped[j] = _clip8(acc[j])
                for j in range(columns):
                    row[4 * j], row[4 * j + 1], row[4 * j + 2], row[4 * j + 3] = (
                        clipped[3 * j], clipped[3 * j + 1], clipped[3 * j + 2], 0
                    )
        for j in range(columns):
            to = j * rows_out + i0
            if quad and channels == 4:
                for b in range(n):
                    out32[to + b] = block32[b * columns + j]
            elif quad:  # 4 -> 3: gather the column's run as uint32s, then pack it to 3 bytes a pixel
                for b in range(n):
                    run32[b] = block32[b * columns + j]
                packed = flat[3 * to : 3 * (to + n)]
                for b in range(n):
                    packed[3 * b], packed[3 * b + 1], packed[3 * b + 2] = run[4 * b], run[4 * b + 1], run[4 * b + 2]
            else:
                for b in range(n):
                    for c in range(channels):
                        out[j, i0 + b, c] = block[(b * columns + j) * pixel + c]
    return out
