"""The CPU kernel that turns a uint8 crop into the network's input in one pass, as a DALI operator (numba).

Why a kernel of our own: on the CPU, DALI's `crop_mirror_normalize` (flip + HWC->CHW + cast) plus a separate pass
for the mean image's window cost more than decoding the crop. This pass reads each uint8 pixel once, subtracts the
mean image at the crop's window, adds the lighting shift (`pipeline.lighting`), scales, flips and transposes, and
writes float32. It runs inside the graph through DALI's numba plugin, so DALI's worker threads run it per sample
once the batch is decoded, and no third thread competes for the cores.

The kernel takes the crop's whole rows (a band of the image, `pipeline.windows.band_window`) and reads the crop's
columns itself: DALI's CPU decoder crops columns by copying every decoded row once more, a copy whose speed
depended on where the decoder's buffers happened to lie, and so differed between threads and processes.

Flips in the plain loops, without a flipped read of the mean: output column j of a mirrored crop is source column
w-1-j, whose mean value sits at column S-w-x+j of the mirrored mean image, so the mean row and the output row are
both walked forwards and only the uint8 source is read backwards. Backward indices are unsigned: numba adds a
negative-index wraparound test to signed computed indices, which keeps LLVM from vectorizing the loop. (The streamed
rows of `pipeline.streaming` reverse the plain mean in registers instead.)
No fastmath: the CHW and channels-last layouts must round alike.

Where the output allows it, rows are written with streaming stores (`pipeline.streaming`).
"""

from __future__ import annotations

import weakref
from typing import NamedTuple

import numpy as np
from numba import carray, njit
from numba.core import cgutils, types
from numba.extending import intrinsic

from pipeline.lighting import lighting_shift
from pipeline.streaming import NOT_STREAMED, finish_streaming, stream_layout

__all__ = ["KernelParams", "kernel_params", "params_handle", "finish_crop", "finish_in_graph", "tie_params",
           "finishing_operator"]  # fmt: skip

_JIT = dict(nogil=True, boundscheck=False, cache=True)


class KernelParams(NamedTuple):
    """What the kernel reads besides the sample, in 0..255 pixel units. The DALI operator finds the three arrays by
    their addresses (`params_handle`), so one compiled operator serves every pipeline."""

    scale: np.ndarray  # float32 [3]: 1/std per channel (ones in "mean_image" mode)
    lighting: np.ndarray  # float32 [3, 3]: `pipeline.lighting.lighting_basis`, zeros without lighting
    mean_planes: np.ndarray  # float32 [2, 3, S, S]: the mean planes, then the same planes mirrored left-right


def kernel_params(mean_chw: np.ndarray, scale: np.ndarray, lighting: np.ndarray | None = None) -> KernelParams:
    """`mean_chw`: float32 [3, S, S] (`pipeline.finish.mean_planes`); `lighting`: the basis, None without lighting."""
    mean = np.asarray(mean_chw, np.float32)
    if mean.ndim != 3 or mean.shape[0] != 3 or mean.shape[1] != mean.shape[2]:
        raise ValueError(f"mean planes must be [3, S, S], got {mean.shape}")
    lighting = np.zeros((3, 3), np.float32) if lighting is None else lighting
    return KernelParams(
        scale=np.ascontiguousarray(np.asarray(scale, np.float32).reshape(3)),
        lighting=np.ascontiguousarray(np.asarray(lighting, np.float32).reshape(3, 3)),
        mean_planes=np.ascontiguousarray(np.stack([mean, mean[:, :, ::-1]])),
    )


# The slots of the int64 [4] input through which the DALI operator finds a KernelParams.
_SCALE, _LIGHTING, _MEAN_PLANES, _SIDE = range(4)


def params_handle(params: KernelParams) -> np.ndarray:
    """int64 [4]: the three arrays' addresses and the image side S (the caller keeps `params` alive)."""
    handle = np.zeros(4, np.int64)
    handle[_SCALE], handle[_LIGHTING] = params.scale.ctypes.data, params.lighting.ctypes.data
    handle[_MEAN_PLANES], handle[_SIDE] = params.mean_planes.ctypes.data, params.mean_planes.shape[-1]
    return handle


@njit(**_JIT)
def _row(src, base, m0, m1, m2, o0, o1, o2, a0, a1, a2, s0, s1, s2, width):  # pragma: no cover - compiled
    for j in range(width):
        o0[j] = (np.float32(src[base + 3 * j]) - m0[j] + a0) * s0
        o1[j] = (np.float32(src[base + 3 * j + 1]) - m1[j] + a1) * s1
        o2[j] = (np.float32(src[base + 3 * j + 2]) - m2[j] + a2) * s2


@njit(**_JIT)
def _row_mirrored(src, base, m0, m1, m2, o0, o1, o2, a0, a1, a2, s0, s1, s2, width):  # pragma: no cover - compiled
    last = base + 3 * (width - 1)
    one, two = np.uint64(1), np.uint64(2)
    for j in range(width):
        k = np.uint64(last - 3 * j)
        o0[j] = (np.float32(src[k]) - m0[j] + a0) * s0
        o1[j] = (np.float32(src[k + one]) - m1[j] + a1) * s1
        o2[j] = (np.float32(src[k + two]) - m2[j] + a2) * s2


@njit(**_JIT)
def finish_crop(out, band, y, x, mirror, shift, params):  # pragma: no cover - compiled
    """out[c] = (flip(crop)[c] - flip(mean window at (y, x))[c] + shift[c]) * scale[c], crop = band[:, x : x + w].

    out: float32 [3, h, w], any strides (a channels-last output is passed as its CHW view); band: uint8 [h, S, 3]
    C-contiguous, rows y..y+h of the S x S image; shift: float32 [3], the lighting shift; params: a `KernelParams`.
    """
    height, width = out.shape[1], out.shape[2]
    planes = params.mean_planes
    size = planes.shape[3]
    if band.shape[0] != height or band.shape[1] != size:
        raise ValueError("finish_crop: the band must hold the output's rows, each the image's whole width")
    base = 3 * x  # the crop's first byte in each band row
    a0, a1, a2 = np.float32(shift[0]), np.float32(shift[1]), np.float32(shift[2])  # float32 arithmetic on every path
    s0, s1, s2 = params.scale[0], params.scale[1], params.scale[2]
    rows = band.reshape((height, size * 3))
    flip = mirror != 0
    layout = stream_layout(out)
    if layout != NOT_STREAMED:
        finish_streaming(out, layout, rows, base, y, x, flip, planes[0], a0, a1, a2, s0, s1, s2)
        return
    side = 1 if flip else 0
    if flip:
        x = size - width - x
    mean = planes[side]
    for r in range(height):
        m0, m1, m2 = mean[0, y + r, x : x + width], mean[1, y + r, x : x + width], mean[2, y + r, x : x + width]
        if flip:
            _row_mirrored(rows[r], base, m0, m1, m2, out[0, r], out[1, r], out[2, r], a0, a1, a2, s0, s1, s2, width)
        else:
            _row(rows[r], base, m0, m1, m2, out[0, r], out[1, r], out[2, r], a0, a1, a2, s0, s1, s2, width)


# The DALI operator ---------------------------------------------------------------------------------------------------


@intrinsic
def _pointer(typingctx, address):  # pragma: no cover - compiled
    """int64 address -> void*, so the kernel can view the parameters' arrays."""

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], cgutils.voidptr_t)

    return types.voidptr(address), codegen


_lighting_shift = njit(**_JIT)(lighting_shift)


@njit(**_JIT)
def _params_at(handle):  # pragma: no cover - compiled
    side = handle[_SIDE]
    return KernelParams(
        carray(_pointer(handle[_SCALE]), (3,), dtype=np.float32),
        carray(_pointer(handle[_LIGHTING]), (3, 3), dtype=np.float32),
        carray(_pointer(handle[_MEAN_PLANES]), (2, 3, side, side), dtype=np.float32),
    )


@njit(**_JIT)
def _finish_sample(out_chw, band, start, mirror, alphas, handle):  # pragma: no cover - compiled
    """One sample as DALI hands it over: the parameters by handle, the lighting shift from the alphas."""
    params = _params_at(handle)
    shift = _lighting_shift(alphas, params.lighting)[0]
    finish_crop(out_chw, band, start[0], start[1], mirror[0], shift, params)


def _run_chw(out, band, start, mirror, alphas, handle):  # pragma: no cover - compiled by the plugin
    _finish_sample(out, band, start, mirror, alphas, handle)


def _run_hwc(out, band, start, mirror, alphas, handle):  # pragma: no cover - compiled by the plugin
    _finish_sample(out.transpose((2, 0, 1)), band, start, mirror, alphas, handle)


def _shape_function(layout: str, width: int):
    """The operator's output shapes: the input's rows, `width` columns, 3 channels in `layout`."""
    chw = layout == "CHW"

    def shape(outs, ins):  # pragma: no cover - compiled by the plugin
        for i in range(len(outs[0])):
            rows = ins[0][i][0]
            outs[0][i][0], outs[0][i][1], outs[0][i][2] = (3, rows, width) if chw else (rows, width, 3)

    return shape


_OPERATORS: dict[tuple[str, int], object] = {}
_IN_USE: dict[int, KernelParams] = {}  # id(pipeline) -> the parameters its kernel reads


def finish_in_graph(bands, *, start, width: int, mirror=None, alphas=None, params: KernelParams, layout: str = "CHW"):
    """The kernel as a node of a CPU graph, over uint8 HWC bands (each crop's whole rows, [h, S, 3]). `start`: the
    crops' windows, int32 [2] node or [y, x]; `width`: the crops' width w; `mirror`: int32 [1] per sample; `alphas`:
    float [1, 3]; `params` must be tied to the pipeline (`tie_params`). -> float32 [3, h, w] (or HWC)"""
    from nvidia.dali import types as dali_types

    from pipeline.windows import start_node

    handle = dali_types.Constant(params_handle(params), dtype=dali_types.INT64)
    start = start_node(start)
    mirror = dali_types.Constant(np.zeros(1, np.int32)) if mirror is None else mirror
    alphas = dali_types.Constant(np.zeros((1, 3), np.float32)) if alphas is None else alphas
    return finishing_operator(layout, width)(bands, start, mirror, alphas, handle)


def tie_params(pipe, params: KernelParams) -> None:
    """Keeps `params` alive exactly as long as `pipe`, whose kernel reads them by address. DALI's Pipeline stops
    its threads in `__del__`, which Python runs before weak-reference callbacks, so no kernel call outlives them."""
    _IN_USE[id(pipe)] = params
    weakref.finalize(pipe, _IN_USE.pop, id(pipe), None)


def finishing_operator(layout: str, width: int):
    """The DALI CPU operator (band uint8 [h, S, 3], start int32 [2], mirror int32 [1], lighting alphas float [1, 3],
    parameters' handle int64 [4]) -> float32 [3, h, width] ("CHW") or [h, width, 3] ("HWC"). Compiled once per
    process, layout and width, and shared by every pipeline: the parameters come as an input, not as constants."""
    if (layout, width) not in _OPERATORS:
        from nvidia.dali import types as dali_types
        from nvidia.dali.plugin.numba.experimental import NumbaFunction

        _OPERATORS[layout, width] = NumbaFunction(
            run_fn=_run_chw if layout == "CHW" else _run_hwc, setup_fn=_shape_function(layout, width),
            out_types=[dali_types.FLOAT], outs_ndim=[3],
            in_types=[dali_types.UINT8, dali_types.INT32, dali_types.INT32, dali_types.FLOAT, dali_types.INT64],
            ins_ndim=[3, 1, 1, 2, 1], device="cpu",
        )  # fmt: skip
    return _OPERATORS[layout, width]
