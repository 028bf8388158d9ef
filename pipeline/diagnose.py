"""Turns a DALI failure into a `ShardError` that names the shard (and the sample key when it can).

DALI's messages usually name the file (``<tar>:<offset>:<key>.jpg`` for a decode error, the index file for a
malformed or truncated shard). When one does not (its ROI decoder reports only "nvImageCodec failure"), the
shards are checked one by one, the cheap way first: existence and size against the manifest, then each image
decoded. Decoding a whole ImageNet split takes a while, so that search stops after `budget_s` seconds and says so.
"""

from __future__ import annotations

import io
import logging
import os
import re
import tarfile
import time

from pipeline.contract import FOREIGN_IMAGE_EXTS
from pipeline.errors import LoaderError, ShardError
from pipeline.sources import ShardSet

__all__ = ["explain_failure", "find_bad_shard", "SEARCH_BUDGET_S"]

log = logging.getLogger(__name__)
SEARCH_BUDGET_S = 120.0

_MEMBER = re.compile(r"(/[^\s\"']+?\.tar):(\d+):([^\s\"']+)")
_INDEX = re.compile(r"index file at \"([^\"]+)\"")


def explain_failure(error: Exception, shards: ShardSet, budget_s: float = SEARCH_BUDGET_S) -> LoaderError:
    """A `ShardError` naming the shard behind DALI's `error`, or a `LoaderError` with DALI's message."""
    message = str(error)
    dali_says = _summary(message)
    if match := _MEMBER.search(message):
        local, member = match.group(1), match.group(3)
        key = member.split(".", 1)[0]
        shard = shards.origin_of(local)
        return ShardError(f"shard {shard}: sample {key!r} ({member}) failed: {dali_says}", shard=shard, key=key)
    if match := _INDEX.search(message):
        index = match.group(1)
        for path, idx in zip(shards.paths, shards.index_paths or (), strict=True):
            if idx == index:
                shard = shards.origin_of(path)
                return ShardError(f"shard {shard} (index {index}) cannot be read: {dali_says}", shard=shard)
    for path in shards.paths:
        if path in message:
            shard = shards.origin_of(path)
            return ShardError(f"shard {shard} cannot be read: {dali_says}", shard=shard)
    log.warning("DALI failed without naming a shard (%s); checking the %d shards of %r for %.0f s at most",
                dali_says, len(shards.paths), shards.split, budget_s)  # fmt: skip
    found = find_bad_shard(shards, budget_s)
    if found is not None:
        shard, key, why = found
        return ShardError(f"shard {shard}: {why} (DALI: {dali_says})", shard=shard, key=key)
    return LoaderError(
        f"DALI failed reading split {shards.split!r} ({len(shards.paths)} shards) and no bad shard was found "
        f"within {budget_s:.0f} s (run `preprocess verify`): {dali_says}"
    )


def _summary(message: str) -> str:
    """The informative lines of a DALI message (without its Python traceback and boilerplate)."""
    lines = [line.strip() for line in message.splitlines()]
    if "encountered:" in lines:
        lines = lines[lines.index("encountered:") + 1 :]
    keep = [ln for ln in lines if ln and not ln.startswith(("Current pipeline object", "C++ context", "File "))]
    return " ".join(keep) or message.strip()


def find_bad_shard(shards: ShardSet, budget_s: float = SEARCH_BUDGET_S) -> tuple[str, str | None, str] | None:
    """(shard, key, why) of the first shard that is missing, truncated, or holds an undecodable image;
    None if there is none, or none was found within `budget_s` seconds."""
    for path, size in zip(shards.paths, shards.sizes, strict=True):
        shard = shards.origin_of(path)
        if not os.path.exists(path):
            return shard, None, "file is missing"
        actual = os.path.getsize(path)
        if size is not None and actual != size:
            return shard, None, f"{actual} bytes, the manifest says {size} (truncated or rewritten)"
    deadline = time.monotonic() + budget_s
    for path in shards.paths:
        problem = _scan(path)
        if problem is not None:
            return shards.origin_of(path), problem[0], problem[1]
        if time.monotonic() > deadline:
            break
    return None


def _scan(path: str) -> tuple[str | None, str] | None:
    from PIL import Image

    try:
        with tarfile.open(path) as tar:
            for member in tar:
                name = member.name
                if not name.lower().endswith(tuple(f".{ext}" for ext in FOREIGN_IMAGE_EXTS)):
                    continue
                key = os.path.basename(name).split(".", 1)[0]
                try:
                    with Image.open(io.BytesIO(tar.extractfile(member).read())) as img:
                        img.load()
                except Exception as e:  # noqa: BLE001 - any decoder failure marks the image bad
                    return key, f"image {name} does not decode: {e}"
    except (tarfile.TarError, OSError) as e:
        return None, f"not a readable tar: {e}"
    return None
