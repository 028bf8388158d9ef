"""The peer a user would pick instead of writing a build: img2dataset's way of resizing, in the baseline's Pool.

OpenCV decodes (cv2.imdecode), resizes the short side to 256 with INTER_AREA, keeps the central square and
encodes it at quality 90 (cv2.imencode), one OpenCV thread per process as img2dataset sets it; the parent
writes the crops with webdataset's ShardWriter. It computes no statistics (img2dataset has none): ours must be
ahead of it while computing them.
"""

from __future__ import annotations

import os
from multiprocessing import Pool

import numpy as np
import webdataset as wds

SIZE = 256


def _init() -> None:
    import cv2

    cv2.setNumThreads(1)


def process(item: tuple[str, int]) -> tuple[bytes, int]:
    import cv2

    path, label = item
    with open(path, "rb") as f:
        img = cv2.imdecode(np.frombuffer(f.read(), np.uint8), cv2.IMREAD_COLOR)  # BGR; greyscale becomes 3 channels
    if img is None:
        raise ValueError(f"OpenCV cannot decode {path}")
    h, w = img.shape[:2]
    scale = SIZE / min(w, h)
    img = cv2.resize(img, (max(SIZE, round(w * scale)), max(SIZE, round(h * scale))), interpolation=cv2.INTER_AREA)
    top, left = (img.shape[0] - SIZE) // 2, (img.shape[1] - SIZE) // 2
    ok, jpeg = cv2.imencode(".jpg", img[top : top + SIZE, left : left + SIZE], [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise ValueError(f"OpenCV cannot encode the crop of {path}")
    return jpeg.tobytes(), label


def opencv_build(items: list[tuple[str, int]], out: str, workers: int, shard_size: int = 1000) -> int:
    """Builds shards of `items` (path, label) under `out`, keys in `items` order; returns the images written."""
    os.makedirs(out, exist_ok=True)
    count = 0
    with Pool(workers, initializer=_init) as pool, wds.ShardWriter(os.path.join(out, "train-%06d.tar"),
                                                                    maxcount=shard_size, verbose=0) as sink:  # fmt: skip
        for i, (jpeg, label) in enumerate(pool.imap(process, items, chunksize=16)):
            sink.write({"__key__": f"{i:08d}", "jpg": jpeg, "cls": label})
            count += 1
    return count
