"""Shard roots for the loader tests, written directly with `preprocess.tarshard.ShardWriter` (the `coded_build`
fixtures in conftest.py are made by `write_coded_build`).

The images encode where each pixel came from: red = x, green = y (both 0..255 ramps over the 256x256 image) and
blue = a coarse code of the sample index. JPEG at quality 100 without chroma subsampling keeps smooth ramps within
a couple of levels, so a crop's offset, a flip and the sample's identity can be read back from the loader's output.
`coded_build_420` holds the same images with 4:2:0 chroma, as `preprocess build-shards` writes them: where CPU and
GPU decoders upsample chroma differently, it shows.
"""

from __future__ import annotations

import json
import os
import posixpath
from dataclasses import dataclass

import numpy as np

from helpers import jpeg_bytes
from pipeline.contract import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    MEAN_IMAGE_NAME,
    STATS_NAME,
    Manifest,
    ShardInfo,
    SplitInfo,
    Stats,
    encode_label,
    index_name,
    sample_key,
    shard_name,
)
from preprocess.tarshard import ShardWriter

SIZE = 256
# A PCA basis that is not axis-aligned, so a lighting offset applied along the wrong axis shows.
EIGVAL = (0.2175, 0.0188, 0.0045)
EIGVEC = ((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203))


def blue_code(index: int) -> int:
    """Blue level of sample `index`: 16 well-separated levels, robust to JPEG error."""
    return 8 + 16 * (index % 16)


def coded_pixels(index: int) -> np.ndarray:
    """uint8 [256, 256, 3]: red = x, green = y, blue = the sample's code."""
    ramp = np.arange(SIZE, dtype=np.uint8)
    img = np.empty((SIZE, SIZE, 3), np.uint8)
    img[..., 0] = ramp[None, :]
    img[..., 1] = ramp[:, None]
    img[..., 2] = blue_code(index)
    return img


def coded_jpeg(index: int, subsampling: int = 0) -> bytes:
    """Sample `index`'s image at quality 100; subsampling: PIL's code, 0 for 4:4:4 (full-resolution chroma), 2 for
    4:2:0."""
    return jpeg_bytes(coded_pixels(index), quality=100, subsampling=subsampling)


def patterned_mean_image() -> np.ndarray:
    """A mean image with a known, position-dependent pattern, float32 [256, 256, 3] in [0, 1]."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    mean = np.stack([0.3 + 0.2 * xx / SIZE, 0.2 + 0.3 * yy / SIZE, 0.4 + 0.1 * ((xx + yy) % 7) / 7], axis=-1)
    return mean.astype(np.float32)


@dataclass(frozen=True)
class CodedBuild:
    root: str
    labels: dict[str, dict[int, int]]  # split -> sample index -> label
    mean_image: np.ndarray


def sample_members(index: int, label: int, jpeg: bytes | None = None) -> dict[str, bytes]:
    return {
        "cls": str(label).encode("ascii"),
        "jpg": jpeg if jpeg is not None else coded_jpeg(index),
        "json": json.dumps({"index": index, "label": label}).encode(),
        "lbl": encode_label(label),
    }


def write_shard(path: str, samples: list[tuple[str, dict[str, bytes]]], with_index: bool = True) -> ShardInfo:
    """Writes one tar (and its DALI index) and returns its manifest entry."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with ShardWriter(path + ".tmp") as writer:
        for key, members in samples:
            writer.write(key, members)
        done = writer.finish()
    os.replace(done.path, path)
    name = os.path.basename(path)
    if with_index:
        with open(os.path.join(os.path.dirname(path), index_name(name)), "w") as f:
            f.write(done.index_text)
    return ShardInfo(name, index_name(name), done.samples, done.bytes, done.sha256)


def coded_stats(mean_image: np.ndarray) -> Stats:
    cov = np.asarray(EIGVEC) @ np.diag(EIGVAL) @ np.asarray(EIGVEC).T
    return Stats(
        mean=tuple(float(v) for v in mean_image.mean(axis=(0, 1))),
        std=(0.25, 0.25, 0.25),
        covariance=tuple(tuple(float(v) for v in row) for row in cov),
        eigval=EIGVAL,
        eigvec=EIGVEC,
        count=1,
        pixels=SIZE * SIZE,
        image_size=SIZE,
    )


def write_coded_build(root, train: int = 40, val: int = 13, shard_size: int = 7, mutate=None,
                      subsampling: int = 0) -> CodedBuild:  # fmt: skip
    """A complete shard root (manifest, stats, mean image, indexed shards) of position-coded images.

    Each sample's label is its global index (val starts at 1000), so labels identify samples exactly.
    `mutate(index, members) -> members` may change a sample before it is written (for bad-input tests).
    """
    root = str(root)
    jpegs = {i: coded_jpeg(i, subsampling=subsampling) for i in range(16)}  # depends on index % 16
    labels: dict[str, dict[int, int]] = {}
    splits = {}
    offset = 0
    for split, count in (("train", train), ("val", val)):
        labels[split] = {}
        shards = []
        for first in range(0, count, shard_size):
            samples = []
            for i in range(first, min(count, first + shard_size)):
                index = offset + i
                labels[split][index] = index
                members = sample_members(index, index, jpegs[index % 16])
                samples.append((sample_key(index), mutate(index, members) if mutate else members))
            shards.append(write_shard(posixpath.join(root, split, shard_name(split, len(shards))), samples))
        splits[split] = SplitInfo(tuple(shards))
        offset += 1000
    mean_image = patterned_mean_image()
    np.save(os.path.join(root, MEAN_IMAGE_NAME), mean_image)
    with open(os.path.join(root, STATS_NAME), "w") as f:
        f.write(coded_stats(mean_image).to_json())
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        image_size=SIZE,
        classes=tuple({"index": c, "wnid": f"n{c:08d}", "name": f"class {c}"} for c in range(offset)),
        splits=splits,
    )
    with open(os.path.join(root, MANIFEST_NAME), "w") as f:
        f.write(manifest.to_json())
    return CodedBuild(root, labels, mean_image)


def identity_norm() -> dict:
    """Loader options under which the output equals the (cropped, flipped) pixels: mean 0, std 1 in 0..255 units."""
    return dict(normalization="channel", mean=(0.0, 0.0, 0.0), std=(1 / 255,) * 3)


def epoch_labels(loader) -> list[int]:
    return [int(v) for _, labels in loader for v in labels]
