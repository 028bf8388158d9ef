"""Roots other than a local build: foreign WebDataset shards, fsspec URLs (cached locally, sha256-checked)."""

from __future__ import annotations

import os
import posixpath
import shutil

import fsspec
import numpy as np
import pytest
from coded_shards import coded_jpeg, epoch_labels, write_shard

from helpers import decode_jpeg
from pipeline import ImageNetLoader
from pipeline.errors import ShardError

FAST = dict(device="cpu", num_threads=1, batch_size=4, shuffle_buffer=8)
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def write_foreign(root, samples: int = 11) -> dict[str, int]:
    """webdataset-style shards: `jpg` or `jpeg` + ASCII `cls` only, no index, no stats; keys with varied names."""
    labels, shards = {}, [[], []]
    for i in range(samples):
        ext = "jpeg" if i % 3 == 0 else "jpg"
        key = f"img_{i:04d}"
        shards[i % 2].append((key, {ext: coded_jpeg(i), "cls": str(i % 5).encode()}))
        labels[key] = i % 5
    for n, members in enumerate(shards):
        write_shard(os.path.join(root, "train", f"imagenet-train-{n:04d}.tar"), members, with_index=False)
    return labels


def test_foreign_webdataset_shards_load_with_the_callers_mean_and_std(tmp_path):
    write_foreign(tmp_path)
    options = dict(normalization="channel", mean=MEAN, std=STD, lighting_std=0.0, **FAST)
    loader = ImageNetLoader(str(tmp_path), split="train", crop_size=256, drop_last=False, **options)
    assert loader.shards.format == "wds" and loader.dataset_size == 11 and len(loader) == 3
    seen = []
    for images, batch in loader:
        for image, label in zip(images.numpy(), batch.tolist(), strict=True):
            index = int(round(float(np.median(image[2] * STD[2] * 255 + MEAN[2] * 255) - 8) / 16))
            reference = (decode_jpeg(coded_jpeg(index)) / 255.0 - MEAN) / STD
            if image[0, 0, 0] > image[0, 0, -1]:
                reference = reference[:, ::-1]
            np.testing.assert_allclose(image, reference.transpose(2, 0, 1), atol=0.05)
            assert label == index % 5
            seen.append(index)
    assert sorted(seen) == list(range(11))


def test_foreign_shards_need_mean_std_or_stats(tmp_path):
    write_foreign(tmp_path)
    with pytest.raises(ValueError, match="no stats.json"):
        ImageNetLoader(str(tmp_path), split="train", **FAST)
    with pytest.raises(ValueError, match="eigval"):
        ImageNetLoader(str(tmp_path), split="train", normalization="channel", mean=MEAN, std=STD, **FAST)


def copy_to_memory(local_root: str, url: str) -> None:
    fs = fsspec.filesystem("memory")
    for folder, _, files in os.walk(local_root):
        for name in files:
            rel = os.path.relpath(os.path.join(folder, name), local_root)
            fs.pipe(posixpath.join(url, rel), open(os.path.join(folder, name), "rb").read())


@pytest.fixture
def memory_root(coded_build, request):
    url = f"memory://loader-{request.node.name}"
    copy_to_memory(coded_build.root, url)
    yield url
    fsspec.filesystem("memory").rm(url, recursive=True)


def test_memory_root_is_cached_locally_and_matches_the_local_root(coded_build, memory_root, tmp_path):
    options = dict(split="val", cache_dir=str(tmp_path / "cache"), crop_size=64, **FAST)
    remote = ImageNetLoader(memory_root, **options)
    local = ImageNetLoader(coded_build.root, **options)
    assert epoch_labels(remote) == epoch_labels(local) == sorted(coded_build.labels["val"])
    assert all(p.startswith(str(tmp_path / "cache")) for p in remote.shards.paths)
    assert remote.shards.origins[0].startswith("memory://")
    again = ImageNetLoader(memory_root, **options)  # reuses the verified cache
    assert again.shards.paths == remote.shards.paths


def test_a_remote_shard_that_fails_its_sha256_is_refused(memory_root, tmp_path):
    fs = fsspec.filesystem("memory")
    shard = posixpath.join(memory_root, "val", "val-000000.tar")
    data = bytearray(fs.cat_file(shard))
    data[5000] ^= 0xFF
    fs.pipe(shard, bytes(data))
    with pytest.raises(ShardError, match="val-000000.tar.*sha256"):
        ImageNetLoader(memory_root, split="val", cache_dir=str(tmp_path / "cache"), **FAST)


def test_file_url_root_reads_in_place(coded_build, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(coded_build.root, root)
    loader = ImageNetLoader(f"file://{root}", split="val", crop_size=64, **FAST)
    assert loader.shards.paths[0] == str(root / "val" / "val-000000.tar")
    assert epoch_labels(loader) == sorted(coded_build.labels["val"])
