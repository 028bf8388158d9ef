"""The baseline that `preprocess build-shards` is measured against: the build people write by hand.

PIL open -> convert RGB -> resize the short side to 256 (bilinear, antialiased) -> center crop (torchvision's
Resize(256) + CenterCrop(256), written out) -> JPEG encode, on a multiprocessing.Pool; the parent receives the
crops, writes them with webdataset's ShardWriter and accumulates the same statistics (per-pixel mean image,
channel means, RGB covariance) in float64.
"""

from __future__ import annotations

import io
import os
from multiprocessing import Pool

import numpy as np
import webdataset as wds
from PIL import Image

SIZE = 256


def process(item: tuple[str, int]) -> tuple[bytes, np.ndarray, int]:
    path, label = item
    img = Image.open(path).convert("RGB")
    w, h = img.size  # torchvision's Resize(256) + CenterCrop(256) on a PIL image, written out
    img = img.resize((SIZE, int(SIZE * h / w)) if w <= h else (int(SIZE * w / h), SIZE), Image.Resampling.BILINEAR)
    left, top = int(round((img.width - SIZE) / 2.0)), int(round((img.height - SIZE) / 2.0))
    img = img.crop((left, top, left + SIZE, top + SIZE))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue(), np.asarray(img), label


class Float64Stats:
    """The statistics as they are usually written: float64 pixels in [0, 1], summed image by image."""

    def __init__(self):
        self.mean_image = np.zeros((SIZE, SIZE, 3))
        self.channel_sum, self.cross_sum, self.count = np.zeros(3), np.zeros((3, 3)), 0

    def add(self, pixels: np.ndarray) -> None:
        x = pixels.astype(np.float64) / 255.0
        self.mean_image += x
        flat = x.reshape(-1, 3)
        self.channel_sum += flat.sum(axis=0)
        self.cross_sum += flat.T @ flat
        self.count += 1

    def result(self) -> dict:
        n = self.count * SIZE * SIZE
        mean = self.channel_sum / n
        covariance = (self.cross_sum - n * np.outer(mean, mean)) / (n - 1)
        return {"mean": mean, "covariance": covariance, "mean_image": self.mean_image / self.count, "count": self.count}


def baseline_build(items: list[tuple[str, int]], out: str, workers: int, shard_size: int = 1000) -> dict:
    """Builds shards of `items` (path, label) under `out`; returns the statistics it computed."""
    os.makedirs(out, exist_ok=True)
    stats = Float64Stats()
    with Pool(workers) as pool, wds.ShardWriter(os.path.join(out, "train-%06d.tar"), maxcount=shard_size, verbose=0) as sink:
        for i, (jpeg, pixels, label) in enumerate(pool.imap(process, items, chunksize=16)):
            sink.write({"__key__": f"{i:08d}", "jpg": jpeg, "cls": label})
            stats.add(pixels)
    return stats.result()
