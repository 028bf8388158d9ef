"""Train statistics: exact integer sums, independent of the worker count, checked against NumPy and scikit-learn."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from sklearn.decomposition import PCA

from helpers import quick_build_config
from pipeline.contract import load_mean_image, load_stats
from preprocess.build import build_shards
from preprocess.image import decode_resize_crop
from preprocess.layout import discover
from preprocess.stats import PixelSums, finalize


@pytest.fixture(scope="module")
def train_pixels(tiny_source):
    """The exact pixels the build sums: every train source through the same decode/resize/crop."""
    items = discover(str(tiny_source)).splits["train"]
    return np.stack([decode_resize_crop(open(i.path, "rb").read(), size=256, name=i.path).pixels for i in items])


def test_statistics_match_a_direct_numpy_computation(tiny_build, train_pixels):
    out, _ = tiny_build
    stats = load_stats(str(out))
    flat = train_pixels.reshape(-1, 3).astype(np.float64) / 255.0
    assert stats.count == len(train_pixels) and stats.pixels == len(flat)
    np.testing.assert_allclose(stats.mean, flat.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(stats.covariance, np.cov(flat, rowvar=False), rtol=1e-9)
    np.testing.assert_allclose(stats.std, flat.std(axis=0, ddof=1), rtol=1e-9)
    mean_image = load_mean_image(str(out), stats)
    assert mean_image.dtype == np.float32 and mean_image.shape == (256, 256, 3)
    np.testing.assert_allclose(mean_image, train_pixels.mean(axis=0) / 255.0, atol=1e-6)


def test_decomposition_matches_scikit_learn_pca(tiny_build, train_pixels):
    out, _ = tiny_build
    stats = load_stats(str(out))
    flat = train_pixels.reshape(-1, 3).astype(np.float64) / 255.0
    pca = PCA(n_components=3, svd_solver="full").fit(flat)
    np.testing.assert_allclose(stats.eigval, pca.explained_variance_, rtol=1e-7)
    assert list(stats.eigval) == sorted(stats.eigval, reverse=True)
    eigvec = np.array(stats.eigvec)
    for i in range(3):  # columns are eigenvectors; a sign is arbitrary, so compare |cosine|
        assert abs(eigvec[:, i] @ pca.components_[i]) == pytest.approx(1.0, abs=1e-9)
    cov = np.array(stats.covariance)
    np.testing.assert_allclose(eigvec @ np.diag(stats.eigval) @ eigvec.T, cov, atol=1e-12)
    np.testing.assert_allclose(cov, cov.T, atol=0)
    assert np.linalg.eigvalsh(cov).min() >= 0


def test_statistics_are_identical_for_one_and_two_workers(tiny_source, tmp_path):
    texts = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        build_shards(quick_build_config(tiny_source, out, workers=workers))
        texts.append(((out / "stats.json").read_bytes(), (out / "mean_image.npy").read_bytes()))
    assert texts[0] == texts[1]


def test_sums_merge_in_any_order_to_the_same_result():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 16, 16, 3), dtype=np.uint8)
    whole, parts = PixelSums(16), [PixelSums(16), PixelSums(16), PixelSums(16)]
    for i, image in enumerate(images):
        whole.add(image)
        parts[i % 3].add(image)
    merged = PixelSums(16)
    for part in reversed(parts):
        merged.merge(pickle.loads(pickle.dumps(part)))  # as shipped between processes
    assert finalize(merged)[0] == finalize(whole)[0]
    np.testing.assert_array_equal(finalize(merged)[1], finalize(whole)[1])


def test_a_single_grey_image_has_zero_covariance_and_no_nan():
    sums = PixelSums(8)
    sums.add(np.full((8, 8, 3), 128, np.uint8))
    stats, mean_image = finalize(sums)
    assert np.all(np.array(stats.covariance) == 0) and np.all(np.isfinite(stats.eigvec))
    assert stats.mean == pytest.approx((128 / 255,) * 3) and mean_image.max() == pytest.approx(128 / 255)


def test_no_train_images_is_a_clear_error():
    with pytest.raises(ValueError, match="no train images"):
        finalize(PixelSums(8))


@pytest.mark.parametrize("size", [256, 227, 16])
def test_sums_are_exact_for_any_size(size):
    """The per-pixel and cross-product sums equal Python's arbitrary-precision integers, at the largest values."""
    pixels = np.full((size, size, 3), 255, np.uint8)
    pixels[::3, :, 1] = 254
    pixels[:, ::7, 2] = np.arange(size, dtype=np.uint8)[:, None] if size <= 256 else 0
    sums = PixelSums(size)
    for _ in range(3):
        sums.add(pixels)
    exact = pixels.reshape(-1, 3).astype(object)
    expected = np.array([[3 * sum(exact[:, i] * exact[:, j]) for j in range(3)] for i in range(3)], dtype=np.int64)
    np.testing.assert_array_equal(sums.cross_sum, expected)
    np.testing.assert_array_equal(sums.image_sum, 3 * pixels.astype(np.uint64))


def test_running_totals_widen_past_each_limit_and_stay_exact():
    """A chunk sums into uint16, a shard into uint32, the build's total into uint64: at each limit the sums widen,
    so 1e9 images (and more) add up exactly."""
    from preprocess.stats import max_images

    assert max_images(256) >= 10**9
    white = np.full((2, 2, 3), 255, np.uint8)
    chunk = PixelSums(2)
    for _ in range(2**16 // 255):
        chunk.add(white)
    assert chunk.image_sum.dtype == np.uint16 and int(chunk.image_sum.max()) == 255 * 257 == 2**16 - 1
    chunk.add(white)
    assert chunk.image_sum.dtype == np.uint32 and int(chunk.image_sum.max()) == 255 * 258
    near = 2**32 // 255 - 1
    total = PixelSums(2, near, np.full((2, 2, 3), 255 * near, np.uint32), np.full((3, 3), 255**2 * 4 * near, np.int64))
    shard = PixelSums(2)
    shard.add(white)
    shard.add(white)
    total.merge(shard)
    assert total.image_sum.dtype == np.uint64 and total.count == near + 2
    assert int(total.image_sum[0, 0, 0]) == 255 * (near + 2) and total.channel_sum == [4 * 255 * (near + 2)] * 3
    assert finalize(total)[1][0, 0, 0] == 1.0
    with pytest.raises(OverflowError, match="overflow the int64 sums"):
        total.merge(PixelSums(2, max_images(2), total.image_sum, total.cross_sum))
