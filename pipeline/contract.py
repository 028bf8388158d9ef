"""The data contract between `preprocess` (which writes shards) and `pipeline` (which reads them).

Both sides import this module, so the sample layout, the file names and the statistics' meaning are
defined exactly once. A shard root looks like::

    shards/
      manifest.json          written last: a build without it is incomplete
      stats.json             train-split statistics, pixels scaled to [0, 1]
      mean_image.npy         per-pixel train mean, float32 [size, size, 3] (RGB, [0, 1])
      skipped.jsonl          one row per input that was skipped, with its reason
      train/train-000000.tar + train-000000.idx (DALI wds2idx format), ...
      val/val-000000.tar     + val-000000.idx, ...

Each sample in a shard is four tar members sharing a key (8 digits, no dots):
``<key>.cls`` (ASCII class index, as webdataset and timm expect), ``<key>.jpg`` (baseline RGB JPEG,
size x size), ``<key>.json`` (source file, wnid, original size) and ``<key>.lbl`` (the class index as
one little-endian int64, so DALI reads it with ``dtypes=INT64`` and no text parsing).
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "STATS_NAME",
    "MEAN_IMAGE_NAME",
    "SKIPPED_NAME",
    "SPLITS",
    "SAMPLE_EXTS",
    "IMAGE_EXT",
    "CLASS_EXT",
    "META_EXT",
    "LABEL_EXT",
    "FOREIGN_IMAGE_EXTS",
    "SHARD_SUFFIX",
    "INDEX_SUFFIX",
    "LABEL_DTYPE",
    "ContractError",
    "ShardInfo",
    "SplitInfo",
    "Manifest",
    "Stats",
    "shard_name",
    "index_name",
    "sample_key",
    "encode_label",
    "decode_label",
    "load_manifest",
    "load_stats",
    "load_mean_image",
]

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
STATS_NAME = "stats.json"
MEAN_IMAGE_NAME = "mean_image.npy"
SKIPPED_NAME = "skipped.jsonl"
SPLITS = ("train", "val")

IMAGE_EXT = "jpg"
CLASS_EXT = "cls"
META_EXT = "json"
LABEL_EXT = "lbl"
# Tar member order inside a sample; sorted, so that shards are reproducible.
SAMPLE_EXTS = (CLASS_EXT, IMAGE_EXT, META_EXT, LABEL_EXT)
# Foreign WebDataset shards (not ours) name their images either way, and carry only the ASCII CLASS_EXT label.
FOREIGN_IMAGE_EXTS = (IMAGE_EXT, "jpeg")
SHARD_SUFFIX = ".tar"
INDEX_SUFFIX = ".idx"  # DALI's wds2idx index, next to its shard
LABEL_DTYPE = np.dtype("<i8")


class ContractError(ValueError):
    """A shard root, manifest or statistics file that does not match this contract."""


def shard_name(split: str, index: int) -> str:
    """File name of shard `index` of `split`, e.g. ``train-000003.tar``."""
    return f"{split}-{index:06d}{SHARD_SUFFIX}"


def index_name(shard: str) -> str:
    """DALI index file that sits next to `shard`."""
    if not shard.endswith(SHARD_SUFFIX):
        raise ContractError(f"shard name must end with {SHARD_SUFFIX}: {shard!r}")
    return shard[: -len(SHARD_SUFFIX)] + INDEX_SUFFIX


def sample_key(position: int) -> str:
    """Key of the sample at `position` of its split's shuffled order: unique, sortable, no dots."""
    return f"{position:08d}"


def encode_label(label: int) -> bytes:
    return np.asarray([label], dtype=LABEL_DTYPE).tobytes()


def decode_label(data: bytes) -> int:
    if len(data) != LABEL_DTYPE.itemsize:
        raise ContractError(f"label member must be {LABEL_DTYPE.itemsize} bytes, got {len(data)}")
    return int(np.frombuffer(data, dtype=LABEL_DTYPE)[0])


@dataclass(frozen=True)
class ShardInfo:
    name: str  # relative to the split directory
    index: str
    samples: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class SplitInfo:
    shards: tuple[ShardInfo, ...]

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards)

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.shards)

    def shard_paths(self, root: str, split: str) -> list[str]:
        return [posixpath.join(root, split, s.name) for s in self.shards]

    def index_paths(self, root: str, split: str) -> list[str]:
        return [posixpath.join(root, split, s.index) for s in self.shards]


@dataclass(frozen=True)
class Manifest:
    """What a finished build holds; `manifest.json` is its JSON form."""

    format_version: int
    image_size: int
    classes: tuple[dict[str, Any], ...]  # {"index", "wnid", "name"}
    splits: dict[str, SplitInfo]
    config: dict[str, Any] = field(default_factory=dict)
    found: dict[str, int] = field(default_factory=dict)
    skipped: tuple[dict[str, Any], ...] = ()
    conversions: dict[str, int] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_json(self) -> str:
        doc = asdict(self)
        doc["splits"] = {
            name: {"samples": split.samples, "bytes": split.bytes, "shards": [asdict(s) for s in split.shards]}
            for name, split in self.splits.items()
        }
        doc["totals"] = {
            "found": sum(self.found.values()),
            "written": sum(s.samples for s in self.splits.values()),
            "skipped": len(self.skipped),
            "bytes": sum(s.bytes for s in self.splits.values()),
        }
        return json.dumps(doc, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str = "manifest.json") -> Manifest:
        try:
            doc = json.loads(text)
            version = doc["format_version"]
            if version != FORMAT_VERSION:
                raise ContractError(f"{where}: format_version {version} is not supported (expected {FORMAT_VERSION})")
            splits = {
                name: SplitInfo(tuple(ShardInfo(**s) for s in split["shards"])) for name, split in doc["splits"].items()
            }
            return cls(
                format_version=version,
                image_size=int(doc["image_size"]),
                classes=tuple(doc["classes"]),
                splits=splits,
                config=doc.get("config", {}),
                found=doc.get("found", {}),
                skipped=tuple(doc.get("skipped", ())),
                conversions=doc.get("conversions", {}),
            )
        except ContractError:
            raise
        except (ValueError, KeyError, TypeError) as e:
            raise ContractError(f"{where} is malformed: {e!r}") from e


@dataclass(frozen=True)
class Stats:
    """Train-split pixel statistics, pixels scaled to [0, 1].

    `eigvec` holds the eigenvectors of `covariance` as COLUMNS (rows index R, G, B), `eigval` is sorted
    descending: the convention of fb.resnet.torch, MXNet and GluonCV for AlexNet's PCA lighting.
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    covariance: tuple[tuple[float, ...], ...]
    eigval: tuple[float, float, float]
    eigvec: tuple[tuple[float, ...], ...]
    count: int  # images
    pixels: int  # pixels per channel that entered the sums (count * size * size)
    image_size: int
    mean_image: str = MEAN_IMAGE_NAME

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str = STATS_NAME) -> Stats:
        try:
            doc = json.loads(text)
            stats = cls(
                mean=tuple(doc["mean"]),
                std=tuple(doc["std"]),
                covariance=tuple(tuple(r) for r in doc["covariance"]),
                eigval=tuple(doc["eigval"]),
                eigvec=tuple(tuple(r) for r in doc["eigvec"]),
                count=int(doc["count"]),
                pixels=int(doc["pixels"]),
                image_size=int(doc["image_size"]),
                mean_image=doc.get("mean_image", MEAN_IMAGE_NAME),
            )
        except (ValueError, KeyError, TypeError) as e:
            raise ContractError(f"{where} is malformed: {e!r}") from e
        if np.shape(stats.eigvec) != (3, 3) or np.shape(stats.eigval) != (3,) or np.shape(stats.mean) != (3,):
            raise ContractError(f"{where}: mean/eigval must have 3 values and eigvec must be 3x3")
        return stats


def _read_text(root: str, name: str) -> str:
    import fsspec

    path = posixpath.join(root, name)
    try:
        with fsspec.open(path, "r") as f:
            return f.read()
    except FileNotFoundError as e:
        raise ContractError(f"{path} not found: is {root!r} a finished build of `preprocess build-shards`?") from e


def load_manifest(root: str) -> Manifest:
    """Reads `root`/manifest.json (local path or fsspec URL)."""
    return Manifest.from_json(_read_text(root, MANIFEST_NAME), where=posixpath.join(root, MANIFEST_NAME))


def load_stats(root: str) -> Stats:
    """Reads `root`/stats.json (local path or fsspec URL)."""
    return Stats.from_json(_read_text(root, STATS_NAME), where=posixpath.join(root, STATS_NAME))


def load_mean_image(root: str, stats: Stats) -> np.ndarray:
    """The per-pixel train mean, float32 [size, size, 3] in [0, 1]."""
    import io

    import fsspec

    path = posixpath.join(root, stats.mean_image)
    try:
        with fsspec.open(path, "rb") as f:
            image = np.load(io.BytesIO(f.read()), allow_pickle=False)
    except FileNotFoundError as e:
        raise ContractError(f"{path} not found (named by stats.json)") from e
    except ValueError as e:
        raise ContractError(f"{path} is not a valid .npy file: {e}") from e
    if image.shape != (stats.image_size, stats.image_size, 3):
        raise ContractError(f"{path}: shape {image.shape}, expected {(stats.image_size, stats.image_size, 3)}")
    return image.astype(np.float32, copy=False)
