"""Errors the loader raises: each names the root, split, shard (and key) it is about.

`ContractError` (from `pipeline.contract`) covers a missing or malformed manifest.json / stats.json /
mean_image.npy; the classes here cover what goes wrong while finding and reading shards.
"""

from __future__ import annotations

__all__ = ["LoaderError", "NoShardsError", "ShardError", "CacheSpaceError"]


class LoaderError(RuntimeError):
    """The loader cannot go on; the message says which file and why."""


class NoShardsError(LoaderError):
    """The split has no shard to read (an empty or wrong root, or a split that was never built)."""


class ShardError(LoaderError):
    """A shard failed to read or decode (truncated, corrupt JPEG, missing member, stale index).

    DALI cannot skip a bad sample, so the run stops here; `shard` (and `key` when known) say where to look.
    """

    def __init__(self, message: str, shard: str, key: str | None = None):
        super().__init__(message)
        self.shard = shard
        self.key = key


class CacheSpaceError(LoaderError):
    """The local cache's disk has less free space than the remote split still needs; nothing was downloaded."""

    def __init__(self, message: str, need: int, free: int, cache: str):
        super().__init__(message)
        self.need = need
        self.free = free
        self.cache = cache
