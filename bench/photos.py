"""Benchmark images that cost what ImageNet's cost: real photographs, re-cut to ImageNet's size mix.

Where a build spends its time (Huffman decoding, resampling, encoding) depends on fine detail, which smooth
generated images lack. Nothing may be downloaded at run time, but real photographs ship inside packages already
on PyPI: scikit-image's `skimage/data` (astronaut, coffee, chelsea, rocket, motorcycle, hubble_deep_field, ...;
its greyscale textures brick, grass and gravel are tinted into colour) and scikit-learn's china.jpg and flower.jpg.

Each benchmark image is a mosaic of crops of those photographs, each taken at a random position and shrunk by a
random factor (never enlarged: enlarging would smooth the detail away), filling a canvas of ImageNet's size mix:
mostly about 500x375, a fifth smaller, a tenth 1000-3000 pixels a side, a few portrait. It is saved as a baseline
JPEG, 4:2:0, quality 75-95, as Flickr served ImageNet's photographs; a few are greyscale and a few progressive.
`describe` prints the set's JPEG bytes per pixel and decode cost per pixel next to ImageNet's.

`make_synthetic` keeps the earlier generated images (smooth colour fields, shapes, mild noise) to show how
figures measured on such data differ.
"""

from __future__ import annotations

import functools
import importlib.util
import itertools
import os
import time

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = ["make_photos", "make_synthetic", "describe", "IMAGENET_BYTES_PER_PIXEL"]

# ILSVRC-2012's typical train image: about 110 KB for 500x375 pixels.
IMAGENET_BYTES_PER_PIXEL = 110_000 / (500 * 375)

_COLOUR = {
    "skimage": ("astronaut.png", "chelsea.png", "coffee.png", "hubble_deep_field.jpg", "motorcycle_left.png",
                "motorcycle_right.png", "rocket.jpg", "retina.jpg", "ihc.png", "color.png"),
    "sklearn": ("china.jpg", "flower.jpg"),
}  # fmt: skip
_TEXTURES = ("brick.png", "grass.png", "gravel.png", "camera.png", "moon.png", "coins.png")


def _package_dir(package: str, *parts: str) -> str:
    spec = importlib.util.find_spec(package)  # no import: only the files are wanted
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"benchmark photographs come from the {package} package: pip install -e '.[dev]'")
    return os.path.join(spec.submodule_search_locations[0], *parts)


@functools.cache
def _sources() -> tuple[np.ndarray, ...]:
    """The photographs as uint8 RGB arrays; greyscale textures tinted with a smooth colour field."""
    photos = [os.path.join(_package_dir("skimage", "data"), n) for n in _COLOUR["skimage"]]
    photos += [os.path.join(_package_dir("sklearn", "datasets", "images"), n) for n in _COLOUR["sklearn"]]
    out = [np.asarray(Image.open(p).convert("RGB")) for p in photos]
    rng = np.random.default_rng(1234)
    for name in _TEXTURES:
        grey = np.asarray(Image.open(os.path.join(_package_dir("skimage", "data"), name)).convert("L"), np.float32)
        tint = Image.fromarray(rng.integers(60, 256, (3, 3, 3), dtype=np.uint8), "RGB")
        tint = np.asarray(tint.resize(grey.shape[::-1], Image.Resampling.BICUBIC), np.float32) / 255
        out.append(np.clip(grey[..., None] * tint * 1.2, 0, 255).astype(np.uint8))
    return tuple(out)


def _size(rng: np.random.Generator) -> tuple[int, int]:
    """(width, height) in ImageNet's mix: mostly about 500x375, a fifth smaller, a tenth large; a fifth portrait."""
    kind = rng.random()
    if kind < 0.7:
        w, h = [(500, 375), (500, 333), (500, 400), (500, 500)][rng.integers(4)]
    elif kind < 0.9:
        short = int(rng.integers(150, 375))
        w, h = int(short * rng.uniform(1.0, 1.5)), short
    else:
        long_side = int(rng.integers(1000, 3000))
        w, h = long_side, int(long_side * rng.uniform(0.6, 0.8))
    return (w, h) if rng.random() < 0.8 else (h, w)


def _cuts(rng: np.random.Generator, length: int, most: int) -> list[int]:
    """Tile boundaries along one side: about `most` apart, each moved by up to a sixth of a tile."""
    pieces = max(1, -(-length // most))
    if pieces == 1 and rng.random() < 0.3:
        pieces = 2  # a seam in some small images too, as in a scene of several objects
    step = length / pieces
    inner = [round(k * step + rng.uniform(-step / 6, step / 6)) for k in range(1, pieces)]
    return [0, *inner, length]


def _tile(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A crop of one photograph shrunk to width x height by 0.4-1.0 (enlarged only if no photograph is large enough)."""
    sources = _sources()
    lowest = [max(width / s.shape[1], height / s.shape[0], 0.4) for s in sources]
    fits = [i for i, low in enumerate(lowest) if low <= 1.0] or [int(np.argmin(lowest))]
    pick = fits[rng.integers(len(fits))]
    src, low = sources[pick], min(lowest[pick], 1.0)
    sh, sw = src.shape[:2]
    scale = rng.uniform(low, 1.0)
    cw, ch = min(sw, round(width / scale)), min(sh, round(height / scale))
    x, y = int(rng.integers(0, sw - cw + 1)), int(rng.integers(0, sh - ch + 1))
    crop = Image.fromarray(src[y : y + ch, x : x + cw])
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(crop.resize((width, height), Image.Resampling.LANCZOS, reducing_gap=None))


def _photo(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    canvas = np.empty((height, width, 3), np.uint8)
    xs, ys = _cuts(rng, width, 450), _cuts(rng, height, 450)
    for y0, y1 in itertools.pairwise(ys):
        for x0, x1 in itertools.pairwise(xs):
            canvas[y0:y1, x0:x1] = _tile(rng, x1 - x0, y1 - y0)
    # Sensor noise as a camera leaves it (luminance and a little chroma): the sources were cleaned up for print.
    noisy = canvas + 3.0 * rng.standard_normal((height, width, 1), np.float32)
    noisy += 1.5 * rng.standard_normal((height, width, 3), np.float32)
    return Image.fromarray(np.clip(noisy + 0.5, 0, 255).astype(np.uint8), "RGB")


def make_photos(root: str, count: int, *, classes: int = 10, seed: int = 0) -> str:
    """Writes `count` photographs as root/train/<wnid>/*.JPEG (the imagenet layout); returns root."""
    for i in range(count):
        rng = np.random.default_rng([seed, i])
        img = _photo(rng, *_size(rng))
        if rng.random() < 0.03:  # ImageNet holds a few percent greyscale photographs
            img = img.convert("L")
        options = {"quality": int(rng.integers(90, 98)), "subsampling": "4:2:0", "progressive": rng.random() < 0.02}
        _save(img, root, i, classes, options)
    return root


def make_synthetic(root: str, count: int, *, classes: int = 10, seed: int = 0) -> str:
    """Writes `count` generated images (smooth colour fields, shapes, mild noise; JPEG q90 4:2:0); returns root."""
    for i in range(count):
        rng = np.random.default_rng([seed, i])
        width, height = _size(rng)
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
        img = Image.fromarray(np.clip(np.asarray(img, np.float32) + noise, 0, 255).astype(np.uint8), "RGB")
        _save(img, root, i, classes, {"quality": 90})
    return root


def _save(img: Image.Image, root: str, i: int, classes: int, options: dict) -> None:
    wnid = f"n{80000000 + i % classes:08d}"
    path = os.path.join(root, "train", wnid, f"{wnid}_{i}.JPEG")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img.save(path, "JPEG", **options)


def describe(paths: list[str], sample: int = 200) -> dict[str, float]:
    """What the decoder sees in these files: JPEG bytes per pixel, and libjpeg-turbo's full-size decode cost per
    pixel and per image on one core (over those of the first `sample` files that libjpeg-turbo reads)."""
    import simplejpeg

    pixels = total_bytes = 0
    datas = []
    for path in paths[:sample]:
        with open(path, "rb") as f:
            data = f.read()
        try:  # a real tree holds a few files libjpeg-turbo cannot read (PNG or CMYK named .JPEG): not counted
            height, width, _, _ = simplejpeg.decode_jpeg_header(data)
            simplejpeg.decode_jpeg(data, "RGB")
        except ValueError:
            continue
        datas.append(data)
        pixels += width * height
        total_bytes += len(data)
    start = time.process_time()
    for data in datas:
        simplejpeg.decode_jpeg(data, "RGB")
    seconds = time.process_time() - start
    return {
        "images": len(datas),
        "megapixels_per_image": pixels / len(datas) / 1e6,
        "bytes_per_pixel": total_bytes / pixels,
        "decode_ns_per_pixel": 1e9 * seconds / pixels,
        "decode_ms_per_image": 1e3 * seconds / len(datas),
    }
