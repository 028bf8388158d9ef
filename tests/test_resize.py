"""The window resampler against Pillow's own resize of the whole image, the reference it reimplements."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from preprocess.resize import resize_window

RNG = np.random.default_rng(7)


def pillow(pixels: np.ndarray, resized: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(pixels).resize(resized, Image.Resampling.BILINEAR))


def cases(count: int, axis: str):
    for _ in range(count):
        h, w = (int(v) for v in RNG.integers(1, 300, 2))
        W, H = (int(v) for v in RNG.integers(1, 300, 2))
        if axis == "x":
            H = h
        elif axis == "y":
            W = w
        left, top = int(RNG.integers(0, W)), int(RNG.integers(0, H))
        window = (left, top, int(RNG.integers(1, W - left + 1)), int(RNG.integers(1, H - top + 1)))
        yield RNG.integers(0, 256, (h, w, 3), dtype=np.uint8), (W, H), window


@pytest.mark.parametrize("axis", ["x", "y"])
def test_one_axis_is_pillows_resize_exactly(axis):
    """Shrinking and stretching, any window: the same weights, fixed-point rounding and clipping as Pillow."""
    for pixels, resized, (left, top, w, h) in cases(60, axis):
        out = resize_window(pixels, (pixels.shape[1], pixels.shape[0]), resized, (left, top, w, h))
        np.testing.assert_array_equal(out, pillow(pixels, resized)[top : top + h, left : left + w])


def test_both_axes_are_within_one_grey_level_of_pillow():
    """Two passes through a uint8 intermediate: the pass order decides some roundings, nothing more."""
    worst, exact = 0, 0
    for pixels, resized, (left, top, w, h) in cases(60, "both"):
        out = resize_window(pixels, (pixels.shape[1], pixels.shape[0]), resized, (left, top, w, h))
        diff = np.abs(out.astype(int) - pillow(pixels, resized)[top : top + h, left : left + w])
        worst, exact = max(worst, int(diff.max())), exact + int(diff.max() == 0)
    assert worst == 1 and exact < 60  # not vacuous: the random cases do hit a rounding difference


def test_a_reduced_scale_decode_maps_by_its_true_extent():
    """A 1/4-scale decode of a 1001-pixel-wide image has ceil(1001 / 4) = 251 columns, the last covering a quarter
    of a pixel: the source spans 250.25 of them, which is what Pillow's float box says."""
    quarter = RNG.integers(0, 256, (150, 251, 3), dtype=np.uint8)
    ours = resize_window(quarter, (1001 / 4, 150), (200, 120), (0, 0, 200, 120)).astype(int)
    box = Image.fromarray(quarter).resize((200, 120), Image.Resampling.BILINEAR, box=(0, 0, 250.25, 150))
    assert np.abs(ours - np.asarray(box)).max() <= 1
    stretched = resize_window(quarter, (251, 150), (200, 120), (0, 0, 200, 120)).astype(int)
    assert np.abs(stretched - np.asarray(box)).mean() > 5  # taking all 251 columns drifts across the image


def test_grey_and_any_channel_count():
    grey = RNG.integers(0, 256, (90, 120), dtype=np.uint8)
    out = resize_window(grey, (120, 90), (64, 48), (8, 0, 48, 48))
    assert np.abs(out.astype(int) - pillow(grey, (64, 48))[0:48, 8:56]).max() <= 1
    rgba = RNG.integers(0, 256, (90, 120, 4), dtype=np.uint8)
    out = resize_window(rgba, (120, 90), (64, 48), (0, 0, 64, 48))
    assert out.shape == (48, 64, 4)
    np.testing.assert_array_equal(out[..., :3], resize_window(np.ascontiguousarray(rgba[..., :3]), (120, 90),
                                                              (64, 48), (0, 0, 64, 48)))  # fmt: skip


def test_a_strided_view_is_read_correctly():
    pixels = RNG.integers(0, 256, (200, 300, 3), dtype=np.uint8)
    view = pixels[10:190:2, 20:280]
    out = resize_window(view, (260, 90), (130, 45), (0, 0, 130, 45)).astype(int)
    assert np.abs(out - pillow(np.ascontiguousarray(view), (130, 45))).max() <= 1


@pytest.mark.parametrize("window", [(-1, 0, 10, 10), (0, 0, 65, 10), (0, 40, 10, 10), (0, 0, 0, 10)])
def test_a_window_outside_the_resized_image_is_refused(window):
    with pytest.raises(ValueError, match="not inside"):
        resize_window(np.zeros((90, 120, 3), np.uint8), (120, 90), (64, 48), window)
