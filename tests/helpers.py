"""Test helpers: configs for tiny builds, and inputs made with PIL and zlib. Nothing comes from ImageNet."""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
from PIL import Image

from preprocess.build import BuildConfig
from preprocess.sample import SampleConfig


def tiny_sample_config(out, **overrides) -> SampleConfig:
    defaults = dict(out=str(out), classes=3, train_per_class=8, val_per_class=3, large_images=1, seed=0)
    return SampleConfig(**{**defaults, **overrides})


def quick_build_config(src, out, **overrides) -> BuildConfig:
    defaults = dict(src=str(src), out=str(out), shard_size=10, workers=1, progress=False)
    return BuildConfig(**{**defaults, **overrides})


def jpeg_bytes(pixels: np.ndarray, mode: str = "RGB", **save) -> bytes:
    """`pixels` as a JPEG in `mode`; `save`: Pillow's JPEG options (quality, subsampling, exif...), its defaults else."""
    buf = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buf, "JPEG", **save)
    return buf.getvalue()


def decode_jpeg(data: bytes) -> np.ndarray:
    """uint8 [H, W, 3] RGB, as Pillow decodes it (the reference the loader's output is held to)."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def bomb_png(side: int = 20000) -> bytes:
    """A valid 1-bit PNG of side x side pixels that compresses to a few hundred KB (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" * (1 + (side + 7) // 8)
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def write(path, data: bytes) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return str(path)
