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


def baseline_build(items: list[tuple[str, int]], out: str, workers: int, shard_size: int = 1000) -> dict:
    """Builds shards of `items` (path, label) under `out`; returns the statistics it computed."""
    os.makedirs(out, exist_ok=True)
    mean_image = np.zeros((SIZE, SIZE, 3))
    channel_sum, cross_sum, count = np.zeros(3), np.zeros((3, 3)), 0
    with Pool(workers) as pool, wds.ShardWriter(os.path.join(out, "train-%06d.tar"), maxcount=shard_size, verbose=0) as sink:
        for i, (jpeg, pixels, label) in enumerate(pool.imap(process, items, chunksize=16)):
            sink.write({"__key__": f"{i:08d}", "jpg": jpeg, "cls": label})
            x = pixels.astype(np.float64) / 255.0
            mean_image += x
            flat = x.reshape(-1, 3)
            channel_sum += flat.sum(axis=0)
            cross_sum += flat.T @ flat
            count += 1
    n = count * SIZE * SIZE
    mean = channel_sum / n
    covariance = (cross_sum - n * np.outer(mean, mean)) / (n - 1)
    return {"mean": mean, "covariance": covariance, "mean_image": mean_image / count, "count": count}
