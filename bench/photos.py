"""ImageNet-like photos for benchmarks: smooth colour fields with edges and sensor-like noise, JPEG q90 4:2:0.

The synthetic sample of `preprocess make-sample` is built to be learnable (stripes); benchmarks need what
ImageNet's decoders see instead: mostly about 500x375 JPEGs of natural-looking content, a fifth smaller,
and a tenth large (1000-3000 pixels a side), which is where DCT-domain downscaling pays.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = ["make_photos"]


def _size(rng: np.random.Generator) -> tuple[int, int]:
    kind = rng.random()
    if kind < 0.7:
        w, h = [(500, 375), (500, 333), (500, 400), (400, 500)][rng.integers(4)]
    elif kind < 0.9:
        short = int(rng.integers(150, 375))
        w, h = int(short * rng.uniform(1.0, 1.5)), short
    else:
        long_side = int(rng.integers(1000, 3000))
        w, h = long_side, int(long_side * rng.uniform(0.6, 0.8))
    return (w, h) if rng.random() < 0.8 else (h, w)


def _photo(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    field = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    img = Image.fromarray(field, "RGB").resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 9))):
        x0, x1 = sorted(rng.integers(0, width, 2).tolist())
        y0, y1 = sorted(rng.integers(0, height, 2).tolist())
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1 + 1, y1 + 1), fill=color)
    img = img.filter(ImageFilter.GaussianBlur(radius=1.2))
    noise = rng.normal(0, 5, (height, width, 1)).astype(np.float32)
    return Image.fromarray(np.clip(np.asarray(img, np.float32) + noise, 0, 255).astype(np.uint8), "RGB")


def make_photos(root: str, count: int, *, classes: int = 10, seed: int = 0) -> str:
    """Writes `count` photos as root/train/<wnid>/*.JPEG (the imagenet layout); returns root."""
    for i in range(count):
        rng = np.random.default_rng([seed, i])
        wnid = f"n{80000000 + i % classes:08d}"
        path = os.path.join(root, "train", wnid, f"{wnid}_{i}.JPEG")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        _photo(rng, *_size(rng)).save(path, "JPEG", quality=90)
    return root
