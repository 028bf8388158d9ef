"""`preprocess make-sample`: a small synthetic ImageNet, deterministic for a seed, with ImageNet's quirks.

Each class is a stripe pattern with its own orientation, frequency and hue; noise, phase, contrast and
colour jitter vary per image, so a small CNN learns the classes in a few epochs but not from one pixel.
Sizes vary like photos (a few hundred pixels a side), with some smaller than 256 and a few several
thousand pixels wide. The quirks the preprocessor must survive are planted at fixed places: CMYK
JPEGs, a PNG named .JPEG, a palette PNG named .JPEG and grayscale JPEGs.
"""

from __future__ import annotations

import colorsys
import io
import os
import shutil
from dataclasses import dataclass

import numpy as np
from PIL import Image

__all__ = ["SampleConfig", "make_sample", "sample_wnid", "SAMPLE_LAYOUTS"]

SAMPLE_LAYOUTS = ("imagenet", "kaggle", "flat-val")


@dataclass(frozen=True)
class SampleConfig:
    out: str = "sample"
    classes: int = 10
    train_per_class: int = 100
    val_per_class: int = 20
    seed: int = 0
    layout: str = "imagenet"
    large_images: int = 2  # per split, several thousand pixels a side
    overwrite: bool = False


def sample_wnid(index: int) -> str:
    return f"n{90000000 + index:08d}"


def _size(rng: np.random.Generator, large: bool) -> tuple[int, int]:
    if large:
        return int(rng.integers(2400, 3400)), int(rng.integers(1800, 2400))
    short = int(rng.choice([rng.integers(60, 255), rng.integers(256, 500)], p=[0.1, 0.9]))
    aspect = float(rng.uniform(0.6, 1.7))
    return (max(1, round(short * aspect)), short) if aspect >= 1 else (short, max(1, round(short / aspect)))


def _pattern(cls: int, classes: int, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    angle = np.pi * cls / classes + rng.normal(0, 0.08)
    cycles = 4 + 3 * (cls % 3) + rng.uniform(-0.5, 0.5)  # stripes across the short side
    hue = (cls / classes + rng.normal(0, 0.03)) % 1.0
    short = min(width, height)
    phase = rng.uniform(0, 2 * np.pi)
    # sin(a x + b y + phase) as a sum of two outer products: no [H, W] coordinate grids needed.
    ax = (2 * np.pi * cycles * np.cos(angle) / short) * np.arange(width, dtype=np.float32)
    by = (2 * np.pi * cycles * np.sin(angle) / short) * np.arange(height, dtype=np.float32) + phase
    wave = np.outer(np.cos(by), np.sin(ax)) + np.outer(np.sin(by), np.cos(ax))
    color = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.5, 0.9), 1.0), np.float32)
    background = rng.uniform(60, 140, size=3).astype(np.float32)
    contrast = rng.uniform(50, 100)
    wave += (12 / contrast) * rng.standard_normal(size=(height, width), dtype=np.float32)
    img = background + (contrast * wave)[..., None] * color
    return np.clip(img, 0, 255).astype(np.uint8)


def _encode(pixels: np.ndarray, quirk: str | None) -> bytes:
    img = Image.fromarray(pixels, "RGB")
    buf = io.BytesIO()
    if quirk == "cmyk":
        img.convert("CMYK").save(buf, "JPEG", quality=92)
    elif quirk == "png":
        img.save(buf, "PNG")
    elif quirk == "palette":
        img.convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(buf, "PNG")
    elif quirk == "grayscale":
        img.convert("L").save(buf, "JPEG", quality=92)
    else:
        img.save(buf, "JPEG", quality=92)
    return buf.getvalue()


def _quirk(split: str, cls: int, i: int) -> str | None:
    """Fixed places for the quirks, so tests know where they are."""
    if split == "train" and i == 0:
        return {0: "palette", 1: "cmyk", 2: "png"}.get(cls % 10)
    if split == "val" and i == 0 and cls == 0:
        return "cmyk"
    return "grayscale" if i % 17 == 5 else None


def _write(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def make_sample(cfg: SampleConfig) -> dict[str, int]:
    """Writes the synthetic dataset under `cfg.out`; returns image counts per split."""
    if cfg.layout not in SAMPLE_LAYOUTS:
        raise ValueError(f"layout must be one of {SAMPLE_LAYOUTS}, got {cfg.layout!r}")
    if os.path.exists(cfg.out) and os.listdir(cfg.out):
        if not cfg.overwrite:
            raise FileExistsError(f"{cfg.out} is not empty; pass --overwrite to replace it")
        shutil.rmtree(cfg.out)
    wnids = [sample_wnid(c) for c in range(cfg.classes)]
    base = os.path.join(cfg.out, "ILSVRC/Data/CLS-LOC") if cfg.layout == "kaggle" else cfg.out
    val_rows = []
    counts = {"train": 0, "val": 0}
    for split, per_class in (("train", cfg.train_per_class), ("val", cfg.val_per_class)):
        split_number = 0 if split == "train" else 1
        large = set(range(min(cfg.large_images, cfg.classes)))  # image 1 of the first classes
        for c, wnid in enumerate(wnids):
            for i in range(per_class):
                rng = np.random.default_rng([cfg.seed, split_number, c, i])
                width, height = _size(rng, large=(i == 1 and c in large))
                data = _encode(_pattern(c, cfg.classes, width, height, rng), _quirk(split, c, i))
                if split == "train":
                    path = os.path.join(base, "train", wnid, f"{wnid}_{i}.JPEG")
                elif cfg.layout == "imagenet":
                    path = os.path.join(base, "val", wnid, f"ILSVRC2012_val_{c:03d}{i:05d}.JPEG")
                else:
                    name = f"ILSVRC2012_val_{c:03d}{i:05d}"
                    path = os.path.join(base, "val", name + ".JPEG")
                    val_rows.append((name, wnid))
                _write(path, data)
                counts[split] += 1
    if cfg.layout == "kaggle":
        rows = "".join(f"{name},{wnid} 1 2 30 40 {wnid} 5 6 70 80\n" for name, wnid in val_rows)
        _write(os.path.join(cfg.out, "LOC_val_solution.csv"), ("ImageId,PredictionString\n" + rows).encode())
    elif cfg.layout == "flat-val":
        _write(os.path.join(cfg.out, "val_labels.txt"), "".join(f"{n}.JPEG {w}\n" for n, w in val_rows).encode())
    names = "".join(f"{w} synthetic class {c}\n" for c, w in enumerate(wnids))
    _write(os.path.join(cfg.out, "LOC_synset_mapping.txt"), names.encode())
    return counts
