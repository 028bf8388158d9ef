"""One download per node: the local cache that every rank of a machine shares for remote (fsspec) shards.

All ranks of a node call `fetch` with the same files at about the same time. Each file has a lock file next to
it (`flock`), so exactly one process downloads it while the others wait for it or fetch other files; each
process downloads on a thread pool, trying the files nobody holds first, so a node fetches many files at once.

A file counts as complete only when its marker (`<file>.verified`: the sha256 it was checked against, or
"unverified", and its size) matches and the file has that size. Downloads go to a `.part-*` name and are
renamed into place after the sha256 check, and the marker is written after the rename: a process killed at any
point leaves either nothing or a file without a valid marker, which the next fetch downloads again.

Before anything is downloaded, the bytes still missing are compared with the cache disk's free space: a split
that cannot fit fails at once, naming both figures, instead of hours later with a full disk.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import os
import shutil
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from pipeline.errors import CacheSpaceError, ShardError

__all__ = ["CachedFile", "fetch", "is_complete", "DEFAULT_THREADS"]

DEFAULT_THREADS = 8  # files in flight per process; object stores serve each connection at a fraction of a NIC


@dataclass(frozen=True)
class CachedFile:
    remote: str  # path on the remote filesystem (protocol stripped)
    local: str  # where the node's cache keeps it
    sha256: str | None  # from the manifest; None: unverified (indexes, foreign shards)
    size: int | None  # from the manifest; None: unknown until downloaded


def _marker(local: str) -> str:
    return local + ".verified"


def is_complete(item: CachedFile) -> bool:
    """A finished, checked download: the marker names this file's expected hash and the file has its size."""
    try:
        with open(_marker(item.local)) as f:
            recorded = f.read().split()
        size = os.path.getsize(item.local)
    except OSError:
        return False
    if len(recorded) != 2 or recorded[0] != (item.sha256 or "unverified") or not recorded[1].isdigit():
        return False
    return int(recorded[1]) == size and (item.size is None or item.size == size)


def fetch(fs, items: Sequence[CachedFile], *, what: str, progress: bool, threads: int = DEFAULT_THREADS) -> None:
    """Makes every item complete in the cache, downloading what no process of this node has downloaded yet."""
    missing = [item for item in items if not is_complete(item)]
    if not missing:
        return
    for item in missing:
        os.makedirs(os.path.dirname(item.local), exist_ok=True)
    _check_space(missing, what)
    from tqdm import tqdm

    total = sum(item.size or 0 for item in missing)
    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"fetching {what}", disable=not progress)
    counter = _Progress(bar)
    with bar, ThreadPoolExecutor(max_workers=max(1, min(threads, len(missing)))) as pool:
        # First pass: files no other process holds; second pass: wait for (or take over) the rest.
        taken = list(pool.map(lambda item: _fetch_one(fs, item, counter, wait=False), missing))
        busy = [item for item, done in zip(missing, taken, strict=True) if not done]
        list(pool.map(lambda item: _fetch_one(fs, item, counter, wait=True), busy))


class _Progress:
    """A byte counter that many download threads update (tqdm's update is not safe to call concurrently)."""

    def __init__(self, bar):
        self.bar, self.lock = bar, threading.Lock()

    def __call__(self, n: int) -> None:
        with self.lock:
            self.bar.update(n)


def _check_space(missing: Sequence[CachedFile], what: str) -> None:
    """Fails before downloading when the bytes still missing exceed the cache disk's free space.

    Bytes already written to `.part-*` files by this node's other processes are on the disk already, so they
    count as neither missing nor free.
    """
    need = 0
    for item in missing:
        partial = sum(os.path.getsize(p) for p in glob.glob(glob.escape(item.local) + ".part-*") if os.path.isfile(p))
        need += max(0, (item.size or 0) - partial)
    where = os.path.dirname(missing[0].local)
    free = shutil.disk_usage(where).free
    if need > free:
        raise CacheSpaceError(
            f"{what}: {need:,} bytes still to download into the cache {where}, which has only {free:,} bytes free. "
            "Point the cache (cache_dir, or ALEXNET_PIPELINE_CACHE) at a disk with room for the split",
            need=need, free=free, cache=where)  # fmt: skip


def _fetch_one(fs, item: CachedFile, progress: _Progress, *, wait: bool) -> bool:
    """Downloads `item` unless another process has or does; False when `wait` is off and the file is busy."""
    with open(item.local + ".lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            return False
        try:
            if is_complete(item):  # another process finished it while we waited
                progress(item.size or 0)
                return True
            _download(fs, item, progress)
            return True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _download(fs, item: CachedFile, progress: _Progress) -> None:
    from fsspec.callbacks import Callback

    for stale in glob.glob(glob.escape(item.local) + ".part-*"):  # left by a process that died holding this lock
        os.remove(stale)
    partial = f"{item.local}.part-{os.getpid()}-{threading.get_ident()}"
    url = fs.unstrip_protocol(item.remote)

    class Bytes(Callback):
        def call(self, *args, **kwargs):  # fsspec reports progress through relative_update -> call
            return None

        def relative_update(self, inc: int = 1) -> None:
            if item.size is not None:  # the bar's total counts the files of known size only
                progress(inc)

    try:
        fs.get_file(item.remote, partial, callback=Bytes())
        digest = _sha256(partial)
        if item.sha256 is not None and digest != item.sha256:
            raise ShardError(f"shard {url}: sha256 {digest} does not match the manifest's {item.sha256}", shard=url)
        size = os.path.getsize(partial)
        if item.size is not None and size != item.size:
            raise ShardError(f"shard {url} has {size} bytes, manifest.json says {item.size}", shard=url)
        fd = os.open(partial, os.O_RDONLY)
        try:
            os.fsync(fd)  # the bytes are on disk before the name says the file is there
        finally:
            os.close(fd)
        os.replace(partial, item.local)
    except FileNotFoundError as e:
        raise ShardError(f"shard {url} does not exist", shard=url) from e
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    _write_atomically(_marker(item.local), f"{item.sha256 or 'unverified'} {size}\n")


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def _write_atomically(path: str, text: str) -> None:
    """No fsync: a marker lost in a power cut only costs a download again (the data itself was synced)."""
    tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
