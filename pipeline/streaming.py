"""Non-temporal (streaming) stores for the CPU kernel's output rows.

The crops are written once and read only later, by the training step: an ordinary store first reads the line
it writes and leaves it in the cache, evicting the decoder's working set for data nobody reads soon. Where the
output rows are 64-byte aligned and 16 pixels divide the width (crops 224, 128, ...; CHW or channels-last), 16
pixels per channel are computed as one vector and streamed to memory. numba's loop vectorizer cannot emit streaming
stores, so the 16-pixel step is LLVM IR through a numba intrinsic. It computes the same operations in the same order
as the kernel's plain loop, so the results are bit-identical; other outputs take the plain loop. A mirrored step
reads the unmirrored mean row and reverses the 16 values in registers, so that whatever the flips, only one copy of
the mean image is read and competes with the decoder for the cache.
"""

from __future__ import annotations

import llvmlite.ir as ir
from numba import njit
from numba.core import types
from numba.extending import intrinsic

__all__ = ["NOT_STREAMED", "CHW", "HWC", "stream_layout", "finish_streaming"]

_JIT = dict(nogil=True, boundscheck=False, cache=True)


def _streaming_step(mirrored: bool, interleaved: bool):
    """16 pixels of one output row, all three channels: (src - mean + a) * scale, streamed to the output (64-byte
    aligned). src: the band row (uint8, 48 bytes read from `s_off`); m0, m1, m2: the unmirrored mean rows (16 floats
    read from `m_off`); both in reverse pixel order when mirrored. The output is three channel rows o0, o1, o2 at
    `o_off` (CHW), or, interleaved (channels-last), o0's row holds all three channels and 48 floats go to it from
    `o_off`."""

    @intrinsic
    def step(typingctx, src, s_off, m0, m1, m2, m_off, o0, o1, o2, o_off, a0, a1, a2, k0, k1, k2):  # pragma: no cover
        sig = types.void(src, s_off, m0, m1, m2, m_off, o0, o1, o2, o_off, a0, a1, a2, k0, k1, k2)

        def codegen(context, builder, signature, args):
            def data(i):
                return context.make_array(signature.args[i])(context, builder, args[i]).data

            i32, f32 = ir.IntType(32), ir.FloatType()
            bytes48, floats16 = ir.VectorType(ir.IntType(8), 48), ir.VectorType(f32, 16)

            def shuffle(x, y, order):
                return builder.shuffle_vector(x, y, ir.Constant(ir.VectorType(i32, len(order)), order))

            def splat(value):
                one = builder.insert_element(ir.Constant(floats16, ir.Undefined), value, ir.Constant(i32, 0))
                return shuffle(one, ir.Constant(floats16, ir.Undefined), [0] * 16)

            def stream(value, array: int, offset):
                out = builder.bitcast(builder.gep(data(array), [offset]), floats16.as_pointer())
                builder.store(value, out, align=64).set_metadata("nontemporal", streaming)

            pixels = builder.load(builder.bitcast(builder.gep(data(0), [args[1]]), bytes48.as_pointer()), align=1)
            streaming = builder.module.add_metadata([ir.Constant(i32, 1)])
            channels = []
            for c in range(3):
                order = [3 * (15 - k) + c for k in range(16)] if mirrored else [3 * k + c for k in range(16)]
                channel = shuffle(pixels, ir.Constant(bytes48, ir.Undefined), order)
                mean = builder.load(builder.bitcast(builder.gep(data(2 + c), [args[5]]), floats16.as_pointer()), align=4)
                if mirrored:
                    mean = shuffle(mean, ir.Constant(floats16, ir.Undefined), list(range(15, -1, -1)))
                value = builder.fsub(builder.uitofp(channel, floats16), mean)
                channels.append(builder.fmul(builder.fadd(value, splat(args[10 + c])), splat(args[13 + c])))
            if not interleaved:
                for c in range(3):
                    stream(channels[c], 6 + c, args[9])
                return context.get_dummy_value()
            first_two = shuffle(channels[0], channels[1], list(range(32)))  # [c0 x16, c1 x16]
            third = shuffle(channels[2], ir.Constant(floats16, ir.Undefined), list(range(32)))  # [c2 x16, undef]
            rgb = shuffle(first_two, third, [(16 * c if c < 2 else 32) + k for k in range(16) for c in range(3)])
            for part in range(3):
                offset = builder.add(args[9], ir.Constant(args[9].type, 16 * part))
                stream(shuffle(rgb, ir.Constant(rgb.type, ir.Undefined), list(range(16 * part, 16 * part + 16))), 6, offset)
            return context.get_dummy_value()

        return sig, codegen

    return step


_STEPS = {(m, i): _streaming_step(m, i) for m in (False, True) for i in (False, True)}
_stream_chw, _stream_chw_mirrored = _STEPS[False, False], _STEPS[True, False]
_stream_hwc, _stream_hwc_mirrored = _STEPS[False, True], _STEPS[True, True]


@intrinsic
def _store_fence(typingctx):  # pragma: no cover - compiled
    """Streaming stores are weakly ordered: fence them before another thread reads the output."""

    def codegen(context, builder, signature, args):
        builder.fence("seq_cst")
        return context.get_dummy_value()

    return types.void(), codegen


NOT_STREAMED, CHW, HWC = 0, 1, 2


@njit(**_JIT)
def stream_layout(out) -> int:  # pragma: no cover - compiled
    """CHW or HWC (the [3, h, w] view of a contiguous [h, w, 3] output) when every output row starts 64-byte
    aligned: the base aligned and 16 dividing the width; else NOT_STREAMED (the plain loops)."""
    height, width = out.shape[1], out.shape[2]
    if width % 16 != 0 or out.ctypes.data % 64 != 0:
        return NOT_STREAMED
    if out.strides[2] == 4 and out.strides[1] == 4 * width and out.strides[0] == 4 * width * height:
        return CHW
    if out.strides[0] == 4 and out.strides[2] == 12 and out.strides[1] == 12 * width:
        return HWC
    return NOT_STREAMED


@njit(**_JIT)
def finish_streaming(out, layout, rows, base, y, x, flip, mean, a0, a1, a2, s0, s1, s2):  # pragma: no cover - compiled
    """`finish_crop`'s streamed rows: `rows` [h, 3S] the band (the crop from byte `base`), (y, x) the crop's window,
    `mean` [3, S, S] the unmirrored mean planes."""
    width = out.shape[2]
    for r in range(out.shape[1]):
        m0, m1, m2, src = mean[0, y + r], mean[1, y + r], mean[2, y + r], rows[r]
        o0, o1, o2 = out[0, r], out[1, r], out[2, r]
        for j in range(0, width, 16):
            s_off = base + (3 * (width - 16 - j) if flip else 3 * j)
            m_off = x + width - 16 - j if flip else x + j
            if layout == CHW and flip:
                _stream_chw_mirrored(src, s_off, m0, m1, m2, m_off, o0, o1, o2, j, a0, a1, a2, s0, s1, s2)
            elif layout == CHW:
                _stream_chw(src, s_off, m0, m1, m2, m_off, o0, o1, o2, j, a0, a1, a2, s0, s1, s2)
            elif flip:
                _stream_hwc_mirrored(src, s_off, m0, m1, m2, m_off, o0, o1, o2, 3 * j, a0, a1, a2, s0, s1, s2)
            else:
                _stream_hwc(src, s_off, m0, m1, m2, m_off, o0, o1, o2, 3 * j, a0, a1, a2, s0, s1, s2)
    _store_fence()
