"""Each augmentation against an independent NumPy reference, on images whose pixels encode their position.

The coded images have red = x and green = y, so under an identity normalisation the output's first row and
column give the crop offset and the direction of the red ramp gives the flip. References decode the same JPEG
bytes with Pillow (libjpeg-turbo, like DALI's CPU decoder), so they agree within a level or two.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from coded_shards import EIGVAL, EIGVEC, coded_jpeg, identity_norm
from scipy import stats as sps

from helpers import decode_jpeg
from pipeline import ImageNetLoader

SIZE, CROP = 256, 224
TOLERANCE = 3.0  # 0..255 levels: JPEG decoders and float rounding


def reference_image(label: int, split_offset: int = 0) -> np.ndarray:
    """What the loader decodes for the sample with this label, as float HWC."""
    return decode_jpeg(coded_jpeg(label - split_offset if split_offset else label)).astype(np.float32)


def window(image_hwc: np.ndarray, y: int, x: int, crop: int, flip: bool) -> np.ndarray:
    """NumPy reference crop (and horizontal flip) -> CHW."""
    patch = image_hwc[y : y + crop, x : x + crop]
    if flip:
        patch = patch[:, ::-1]
    return patch.transpose(2, 0, 1)


def read_window(image_chw: np.ndarray) -> tuple[int, int, bool]:
    """(y, x, flipped) of an identity-normalised crop of a coded image."""
    red = image_chw[0]
    flipped = bool(red[:, -1].mean() < red[:, 0].mean())
    x = int(round(float(np.median(red[:, -1] if flipped else red[:, 0]))))
    y = int(round(float(np.median(image_chw[1][0]))))
    return y, x, flipped


def collect(loader, epochs: int):
    for _ in range(epochs):
        for images, labels in loader:
            yield from zip(images.numpy(), labels.tolist(), strict=True)


def make(build, **options):
    defaults = dict(device="cpu", num_threads=2, batch_size=8, shuffle_buffer=16, lighting_std=0.0)
    return ImageNetLoader(build.root, **{**defaults, **options})


def test_random_crops_are_uniform_over_valid_offsets_and_flips_are_fair(coded_build):
    loader = make(coded_build, split="train", **identity_norm())
    xs, ys, flips = [], [], []
    for image, label in collect(loader, epochs=10):  # 400 crops
        y, x, flipped = read_window(image)
        np.testing.assert_allclose(image, window(reference_image(label), y, x, CROP, flipped), atol=TOLERANCE)
        ys.append(y), xs.append(x), flips.append(flipped)
    offsets = SIZE - CROP + 1
    assert min(xs + ys) == 0 and max(xs + ys) == SIZE - CROP
    for values in (xs, ys):
        counts = np.bincount(values, minlength=offsets)
        assert sps.chisquare(counts).pvalue > 1e-3, counts
    assert sps.binomtest(sum(flips), len(flips), 0.5).pvalue > 1e-3
    assert sps.pearsonr(xs, ys).pvalue > 1e-3  # x and y drawn independently


def test_random_resized_crops_cover_varied_windows(coded_build):
    loader = make(coded_build, split="train", crop="random_resized", crop_size=64, **identity_norm())
    spans = []
    for image, _ in collect(loader, epochs=1):
        assert image.shape == (3, 64, 64)
        red = image[0][32]
        spans.append(abs(float(red[-1] - red[0])))  # x-extent of the window, in source pixels
    assert min(spans) < 100 < max(spans)


def fit_window(output: np.ndarray, image: np.ndarray, mean255: np.ndarray, crop: int):
    """Brute force over every (y, x, flip): the window whose reference (image - mean) best explains `output`,
    up to a per-channel constant (the lighting offset). -> (y, x, flip, offset [3], max abs error)"""
    best = None
    step = 7
    centered = image - mean255
    for flip in (False, True):
        for y in range(SIZE - crop + 1):
            for x in range(SIZE - crop + 1):
                ref = window(centered, y, x, crop, flip)[:, ::step, ::step]
                residual = output[:, ::step, ::step] - ref
                score = residual.var(axis=(1, 2)).sum()
                if best is None or score < best[0]:
                    best = (score, y, x, flip)
    _, y, x, flip = best
    residual = output - window(centered, y, x, crop, flip)
    offset = residual.mean(axis=(1, 2))
    return y, x, flip, offset, float(np.abs(residual - offset[:, None, None]).max())


@pytest.mark.parametrize("lighting_std", [0.0, 0.1])
def test_mean_image_is_subtracted_at_the_crop_window_and_flipped_with_it(coded_build, lighting_std):
    loader = make(coded_build, split="train", crop_size=240, batch_size=4, lighting_std=lighting_std)
    mean255 = coded_build.mean_image * 255
    images, labels = next(iter(loader))
    for image, label in zip(images.numpy(), labels.tolist(), strict=True):
        y, x, flip, offset, error = fit_window(image, reference_image(label), mean255, 240)
        assert error < TOLERANCE
        if lighting_std == 0:
            np.testing.assert_allclose(offset, 0, atol=0.5)
        else:  # a lighting offset of a plausible size (alpha within 6 sigma) on top of the right mean window
            alpha = (offset / 255) @ np.asarray(EIGVEC) / np.asarray(EIGVAL)
            assert np.all(np.abs(alpha) < 0.6) and np.abs(offset).max() > 0.05
        # the mean image is not symmetric: a mean window that was not flipped with the image shows up here
        unflipped_mean = window(reference_image(label), y, x, 240, flip) - window(mean255, y, x, 240, False)
        assert np.abs(image - offset[:, None, None] - unflipped_mean).max() > 10 or not flip


def test_lighting_offsets_follow_the_pca_basis(coded_build):
    """crop = 256 leaves no offset to choose, so out - image = the lighting offset, one RGB vector per image."""
    loader = make(coded_build, split="train", crop_size=256, lighting_std=0.1, **identity_norm())
    offsets = []
    for image, label in collect(loader, epochs=15):  # 600 images
        reference = reference_image(label).mean(axis=(0, 1))  # a flip does not change the mean
        offsets.append(image.mean(axis=(1, 2)) - reference)
    offsets = np.array(offsets) / 255.0
    vectors, values = np.asarray(EIGVEC), np.asarray(EIGVAL)
    alphas = offsets @ vectors / values  # offset = V (alpha * eigval)  =>  alpha = V^T offset / eigval
    n = len(alphas)
    assert np.all(np.abs(alphas.mean(axis=0)) < 4 * 0.1 / np.sqrt(n))
    np.testing.assert_allclose(alphas.std(axis=0), 0.1, rtol=0.15)
    np.testing.assert_allclose(np.corrcoef(alphas.T), np.eye(3), atol=0.2)
    expected = vectors @ np.diag(0.01 * values**2) @ vectors.T
    np.testing.assert_allclose(np.cov(offsets.T), expected, atol=0.25 * expected.max())
    principal = np.linalg.eigh(np.cov(offsets.T))[1][:, -1]
    assert abs(principal @ vectors[:, 0]) > 0.99


def test_val_center_crop_minus_the_mean_window(coded_build):
    loader = make(coded_build, split="val", batch_size=5)
    mean255 = coded_build.mean_image * 255
    images, labels = next(iter(loader))
    offset = (SIZE - CROP) // 2
    for image, label in zip(images.numpy(), labels.tolist(), strict=True):
        expected = window(reference_image(label) - mean255, offset, offset, CROP, False)
        np.testing.assert_allclose(image, expected, atol=TOLERANCE)


@pytest.mark.parametrize("normalization", ["mean_image", "channel"])
def test_ten_crops_are_the_corners_the_center_and_their_mirrors(coded_build, normalization):
    loader = make(coded_build, split="val", batch_size=3, ten_crop=True, crop_size=227, normalization=normalization)
    if normalization == "mean_image":
        subtract, divide = coded_build.mean_image * 255, 1.0
    else:
        subtract, divide = np.asarray(loader.norm.mean), np.asarray(loader.norm.std)
    images, labels = next(iter(loader))
    assert images.shape == (3, 10, 3, 227, 227)
    last, mid = SIZE - 227, (SIZE - 227) // 2
    starts = [(0, 0), (0, last), (last, 0), (last, last), (mid, mid)]
    for crops, label in zip(images.numpy(), labels.tolist(), strict=True):
        normalized = (reference_image(label) - subtract) / divide
        expected = [window(normalized, y, x, 227, flip) for flip in (False, True) for y, x in starts]
        np.testing.assert_allclose(crops, np.stack(expected), atol=TOLERANCE / np.min(divide))


def test_random_resized_crops_subtract_the_same_resized_mean_window(coded_build):
    """The mean image's red and green channels are linear in x and y, so image - mean is a known linear function
    of the image wherever the mean got the image's window, resize and flip. The random draws do not depend on
    the normalisation, so the same seed gives the same windows in both modes."""
    options = dict(split="train", crop="random_resized", crop_size=96, seed=11)
    plain = make(coded_build, **options, **identity_norm())
    centered = make(coded_build, **options)
    for (image, label), (result, same_label) in zip(collect(plain, 1), collect(centered, 1), strict=True):
        assert label == same_label
        mean_window = image - result  # what was subtracted
        inner = (slice(2, -2), slice(2, -2))  # resize borders clamp differently
        # tolerances: JPEG error and the rounding of the resized uint8 image, times the mean's slope
        np.testing.assert_allclose(mean_window[0][inner], (76.5 + 0.2 * 255 / 256 * image[0])[inner], atol=1.0)
        np.testing.assert_allclose(mean_window[1][inner], (51.0 + 0.3 * 255 / 256 * image[1])[inner], atol=1.5)


@pytest.mark.parametrize(
    "options",
    [
        dict(split="train", lighting_std=0.1),
        dict(split="val"),
        dict(split="val", ten_crop=True),
        dict(split="train", crop="random_resized", crop_size=96),
    ],
)
def test_channels_last_and_half_types_hold_the_same_values(coded_build, options):
    reference = make(coded_build, seed=4, **options)
    images, labels = next(iter(reference))
    for variant, tolerance in ((dict(channels_last=True), 0.0), (dict(dtype="float16"), 0.3), (dict(dtype="bfloat16"), 2.0)):
        other = make(coded_build, seed=4, **options, **variant)
        got, got_labels = next(iter(other))
        assert got.shape == images.shape and torch.equal(got_labels, labels)
        assert got.dtype == {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(variant.get("dtype"), torch.float32)
        if variant.get("channels_last"):
            assert got.permute(0, 2, 3, 1).is_contiguous() if got.dim() == 4 else got.permute(0, 1, 3, 4, 2).is_contiguous()
        torch.testing.assert_close(got.float(), images, atol=tolerance, rtol=0.01 if tolerance else 0)
