"""`preprocess verify` and `preprocess inspect`: re-check a build against its manifest, or summarise it.

Verification reads each shard as bytes (never extracting anything to disk, never building a path from a
member name) and checks: size and sha256 against the manifest, the index file against one rebuilt from
the tar, member names and types (regular files named ``<key>.<ext>`` with the contract's extensions only),
complete samples, ``cls`` == ``lbl``, and that every image decodes to size x size RGB.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import tarfile
from collections import Counter, defaultdict

import fsspec
import numpy as np
from PIL import Image

from pipeline.contract import (
    CLASS_EXT,
    IMAGE_EXT,
    LABEL_EXT,
    META_EXT,
    SAMPLE_EXTS,
    ContractError,
    ShardInfo,
    decode_label,
    load_manifest,
    load_mean_image,
    load_stats,
)
from preprocess.tarshard import format_index

__all__ = ["verify_build", "inspect_build"]


def _check_members(data: bytes, shard: str, size: int, num_classes: int) -> tuple[list[str], str, int]:
    """Returns (problems, rebuilt index text, sample count) for one shard's bytes."""
    problems: list[str] = []
    samples: dict[str, dict[str, tuple[int, int, str]]] = defaultdict(dict)
    order: list[str] = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for member in tar:
            name = member.name
            if not member.isreg():
                problems.append(f"{shard}: member {name!r} is not a regular file (type {member.type!r})")
                continue
            key, dot, ext = name.partition(".")
            if "/" in name or "\\" in name or name.startswith("..") or not dot or ext not in SAMPLE_EXTS:
                problems.append(f"{shard}: unexpected member name {name!r}")
                continue
            if key not in samples:
                order.append(key)
            samples[key][ext] = (member.offset_data, member.size, name)
    entries = []
    for key in order:
        members = samples[key]
        missing = sorted(set(SAMPLE_EXTS) - set(members))
        if missing:
            problems.append(f"{shard}: sample {key} lacks {missing}")
            continue
        entries.append([(ext, *members[ext]) for ext in sorted(members)])

        def payload(ext, members=members):
            offset, length, _ = members[ext]
            return data[offset : offset + length]

        try:
            cls = int(payload(CLASS_EXT).decode("ascii"))
            lbl = decode_label(payload(LABEL_EXT))
            json.loads(payload(META_EXT))
        except (ValueError, ContractError) as e:
            problems.append(f"{shard}: sample {key} has unreadable label or metadata: {e}")
            continue
        if cls != lbl or not 0 <= cls < num_classes:
            problems.append(f"{shard}: sample {key} has cls {cls}, lbl {lbl} (classes: {num_classes})")
        try:
            with Image.open(io.BytesIO(payload(IMAGE_EXT))) as img:
                img.load()
                shape = np.asarray(img).shape
            if img.format != "JPEG" or shape != (size, size, 3):
                problems.append(f"{shard}: sample {key} image is {img.format} {shape}, expected JPEG {(size, size, 3)}")
        except OSError as e:
            problems.append(f"{shard}: sample {key} image does not decode: {e}")
    return problems, format_index(entries), len(order)


def _verify_shard(fs, split_dir: str, info: ShardInfo, size: int, num_classes: int) -> list[str]:
    path = posixpath.join(split_dir, info.name)
    if not fs.exists(path):
        return [f"{path}: missing"]
    data = fs.cat_file(path)
    problems = []
    if len(data) != info.bytes:
        problems.append(f"{path}: {len(data)} bytes, manifest says {info.bytes}")
    if hashlib.sha256(data).hexdigest() != info.sha256:
        problems.append(f"{path}: sha256 differs from the manifest")
    try:
        member_problems, index_text, count = _check_members(data, path, size, num_classes)
    except tarfile.TarError as e:
        return problems + [f"{path}: not a readable tar: {e}"]
    problems += member_problems
    if count != info.samples:
        problems.append(f"{path}: {count} samples, manifest says {info.samples}")
    index_path = posixpath.join(split_dir, info.index)
    if not fs.exists(index_path):
        problems.append(f"{index_path}: missing")
    elif fs.cat_file(index_path).decode("ascii", "replace") != index_text:
        problems.append(f"{index_path}: does not match its shard (stale or damaged index)")
    return problems


def verify_build(root: str, progress=None) -> tuple[list[str], int]:
    """Checks every shard of the build at `root`; returns (problems, shards checked)."""
    fs, base = fsspec.core.url_to_fs(root)
    try:
        manifest = load_manifest(root)
        stats = load_stats(root)
        load_mean_image(root, stats)
    except ContractError as e:
        return [str(e)], 0
    problems, checked = [], 0
    for split, info in manifest.splits.items():
        for shard in info.shards:
            problems += _verify_shard(fs, posixpath.join(base, split), shard, manifest.image_size, manifest.num_classes)
            checked += 1
            if progress is not None:
                progress(shard)
    if stats.count != manifest.splits["train"].samples:
        problems.append(f"stats.json counts {stats.count} images, the train split has {manifest.splits['train'].samples}")
    return problems, checked


def inspect_build(root: str) -> str:
    """A human-readable summary of the manifest and the statistics."""
    manifest = load_manifest(root)
    stats = load_stats(root)
    lines = [f"build at {root} (format {manifest.format_version}, images {manifest.image_size}x{manifest.image_size})"]
    lines.append(f"classes: {manifest.num_classes} ({manifest.classes[0]['wnid']} .. {manifest.classes[-1]['wnid']})")
    for split, info in manifest.splits.items():
        found = manifest.found.get(split, 0)
        lines.append(
            f"{split}: {info.samples} samples of {found} found in {len(info.shards)} shards, {info.bytes / 2**20:.1f} MiB"
        )
    reasons = Counter(s["reason"] for s in manifest.skipped)
    lines.append("skipped: " + (", ".join(f"{r} {n}" for r, n in sorted(reasons.items())) or "none"))
    for row in manifest.skipped[:10]:
        lines.append(f"  {row['split']}/{row['path']}: {row['reason']} ({row['detail']})")
    lines.append("converted: " + (", ".join(f"{k} {v}" for k, v in manifest.conversions.items()) or "none"))
    fmt = lambda values: "[" + ", ".join(f"{v:.4f}" for v in values) + "]"  # noqa: E731
    lines.append(f"train statistics over {stats.count} images, pixels in [0, 1]:")
    lines.append(f"  mean   {fmt(stats.mean)}")
    lines.append(f"  std    {fmt(stats.std)}")
    lines.append(f"  eigval {fmt(stats.eigval)}")
    lines.append("  eigvec (columns) " + " ".join(fmt(row) for row in stats.eigvec))
    return "\n".join(lines)
