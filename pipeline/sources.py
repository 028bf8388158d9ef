"""Finds the shards of a split and makes them readable by DALI, whose reader only opens local files.

Local roots (a path or a ``file://`` URL) are read in place. Remote fsspec roots (``s3://``, ``gs://``,
``memory://``...) are CACHED, not streamed: each shard and its index are downloaded once per machine into
``cache_dir/<sha256 of the root URL>/<split>/`` and, for our builds, checked against the sha256 in
manifest.json before use (a marker file records the verified hash, so later runs do not re-hash). The ranks
of a machine share that cache and its downloads (`pipeline.node_cache`).
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from dataclasses import dataclass

import fsspec

from pipeline.contract import MANIFEST_NAME, SHARD_SUFFIX, Manifest, index_name, load_manifest
from pipeline.errors import NoShardsError, ShardError
from pipeline.node_cache import CachedFile, fetch
from pipeline.windows import IMAGE_SIZE

__all__ = ["ShardSet", "find_shards", "default_cache_dir"]


@dataclass(frozen=True)
class ShardSet:
    split: str
    format: str  # "contract": our build (manifest, stats, .idx, .lbl); "wds": foreign jpg/jpeg + cls shards
    paths: tuple[str, ...]  # local files DALI reads
    index_paths: tuple[str, ...] | None  # None: DALI infers the index by scanning the tars
    origins: tuple[str, ...]  # what error messages name (the URL for cached remote shards)
    sizes: tuple[int | None, ...]  # expected byte sizes (from the manifest), None when unknown
    manifest: Manifest | None

    @property
    def image_size(self) -> int:
        """Side of the square images: the manifest's; foreign shards are taken to be IMAGE_SIZE (256) a side."""
        return self.manifest.image_size if self.manifest is not None else IMAGE_SIZE

    def origin_of(self, local_path: str) -> str:
        for path, origin in zip(self.paths, self.origins, strict=True):
            if path == local_path:
                return origin
        return local_path


def default_cache_dir() -> str:
    return os.environ.get("ALEXNET_PIPELINE_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "alexnet-pipeline"))


def _is_local(fs) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocols or "local" in protocols


def find_shards(root: str, split: str, fmt: str = "auto", cache_dir: str | None = None, *,
                progress: bool = False) -> ShardSet:
    """The shards of `split` under `root`, local and ready for DALI.

    A remote root's shards are downloaded into the node's cache first (see `pipeline.node_cache`); `progress`
    shows a bar while they are (on one process per node: the ranks share the downloads).

    Raises:
        ContractError: manifest.json is malformed.
        NoShardsError: the split has no shards (the message names where it looked).
        ShardError: a shard or index named by the manifest is missing, or a download fails its sha256 check.
        CacheSpaceError: the cache's disk has less free space than the split still needs.
    """
    fs, base = fsspec.core.url_to_fs(root)
    if fmt == "auto":
        fmt = "contract" if fs.exists(posixpath.join(base, MANIFEST_NAME)) else "wds"
    if fmt == "contract":
        manifest = load_manifest(root)
        info = manifest.splits.get(split)
        if info is None or not info.shards:
            raise NoShardsError(f"{root}: manifest.json lists no shards for split {split!r}")
        names = [posixpath.join(split, s.name) for s in info.shards]
        sizes = tuple(s.bytes for s in info.shards)
        hashes = [s.sha256 for s in info.shards]
    else:
        manifest, hashes = None, None
        found = _list_foreign(fs, base, split)
        if not found:
            raise NoShardsError(f"{root}: no {SHARD_SUFFIX} shards for split {split!r} "
                                f"(looked for {split}/*{SHARD_SUFFIX} and *{split}*{SHARD_SUFFIX})")
        names, sizes = [name for name, _ in found], tuple(size for _, size in found)
    remote = [posixpath.join(base, name) for name in names]
    origins = tuple(fs.unstrip_protocol(p) if not _is_local(fs) else p for p in remote)
    if _is_local(fs):
        paths = tuple(remote)
        for path in paths:
            if not os.path.exists(path):
                raise ShardError(f"shard {path} (split {split!r}) does not exist", shard=path)
        index_paths = tuple(index_name(p) for p in paths) if fmt == "contract" else None
    else:
        target = os.path.join(cache_dir or default_cache_dir(), hashlib.sha256(root.encode()).hexdigest()[:16])
        shards = [CachedFile(r, os.path.join(target, *n.split("/")), h, b)
                  for r, n, h, b in zip(remote, names, hashes or [None] * len(names), sizes, strict=True)]
        indexes = [CachedFile(index_name(s.remote), index_name(s.local), None, None) for s in shards]
        fetch(fs, shards + (indexes if fmt == "contract" else []), what=f"split {split!r} of {root}", progress=progress)
        paths = tuple(s.local for s in shards)
        index_paths = tuple(i.local for i in indexes) if fmt == "contract" else None
    for path, index in zip(paths, index_paths, strict=True) if index_paths is not None else ():
        if not os.path.exists(index):
            raise ShardError(f"index {index} of shard {path} does not exist", shard=path)
    return ShardSet(split, fmt, paths, index_paths, origins, sizes, manifest)


def _list_foreign(fs, base: str, split: str) -> list[tuple[str, int | None]]:
    """(name relative to `base`, size) of `<split>/*.tar`, else of `*<split>*.tar` at the top level."""
    for pattern in (f"{split}/*{SHARD_SUFFIX}", f"*{split}*{SHARD_SUFFIX}"):
        found = fs.glob(posixpath.join(base, pattern), detail=True)
        if found:
            return [(posixpath.relpath(p, base), found[p].get("size")) for p in sorted(found)]
    return []
