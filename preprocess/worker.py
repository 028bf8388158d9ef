"""What one worker process does with one chunk of inputs: read, decode, resize, crop, encode, sum.

Workers return encoded JPEGs (tens of KB) and integer sums, never decoded or float arrays, so the
parent only concatenates bytes into tars and adds integers.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field

from pipeline.contract import CLASS_EXT, IMAGE_EXT, LABEL_EXT, META_EXT, encode_label, sample_key
from preprocess.image import SkipImage, decode_resize_crop, encode_jpeg
from preprocess.stats import PixelSums

__all__ = ["ChunkTask", "ChunkResult", "SourceUnavailable", "load_kernels", "init_worker", "check_source", "process_chunk"]


@dataclass(frozen=True)
class ChunkTask:
    split: str
    shard: int
    last_in_shard: bool
    items: tuple[tuple[int, str, str, str, int], ...]  # (position, path, relpath, wnid, label)
    with_stats: bool


@dataclass
class ChunkResult:
    task: ChunkTask
    samples: list[tuple[str, dict[str, bytes]]] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    conversions: dict[str, int] = field(default_factory=dict)
    sums: PixelSums | None = None


_STATE: dict = {}


class SourceUnavailable(RuntimeError):
    """--src cannot be read here at all (not mounted on this node, no credentials): a fault, not a skip per image."""


def load_kernels() -> None:
    """Loads (or, the first time ever, compiles) the numba kernels of the resize and the statistics.

    numba does that on a kernel's first call, which takes a good part of a second. Called before the workers are
    forked, it is paid once and every worker starts with the kernels ready.
    """
    import numpy as np

    from preprocess.resize import resize_window

    PixelSums(2).add(resize_window(np.zeros((4, 6, 3), np.uint8), (6.0, 4.0), (3, 2), (0, 0, 2, 2)))


def init_worker(src: str, size: int, quality: int, max_pixels: int, follow_links: bool, own_process: bool = True) -> None:
    """Pool initializer: the source filesystem and the build's image settings, once per process.

    The filesystem is made here, in the worker: an async one (s3fs) inherited through fork is unusable.
    """
    import fsspec
    from fsspec.implementations.local import LocalFileSystem

    fs, root = fsspec.core.url_to_fs(src)
    local = isinstance(fs, LocalFileSystem)
    local_root = os.path.join(os.path.realpath(root), "") if local and not follow_links else None
    if own_process:
        import signal

        # Ctrl-C reaches the whole process group: the parent alone decides, and stops us with SIGTERM, whose
        # default (forked from a parent that turns it into an exception) must be restored to end us quietly.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _STATE.update(fs=fs, root=root, src=src, local=local, local_root=local_root, size=size, quality=quality,
                  max_pixels=max_pixels, folders_inside={})  # fmt: skip


def check_source() -> None:
    """Fails when the source root is not there, before every image of a shard is skipped as unreadable.

    On one machine the listing just saw it; on a cluster a node may lack the mount or the credentials.
    """
    try:
        present = _STATE["fs"].isdir(_STATE["root"])
    except Exception as e:  # noqa: BLE001 (credentials, network: whatever the filesystem raises)
        raise SourceUnavailable(f"--src {_STATE['src']} cannot be read on {socket.gethostname()}: {e}") from e
    if not present:
        raise SourceUnavailable(f"--src {_STATE['src']} is not a directory on {socket.gethostname()}")


def _inside_source(path: str) -> bool:
    """Whether `path` resolves inside the source tree. A folder is resolved once (a class folder holds a thousand
    images); a file only when it is itself a link, which costs one lstat instead of one per path component."""
    root, folders = _STATE["local_root"], _STATE["folders_inside"]
    folder = os.path.dirname(path)
    if folder not in folders:
        folders[folder] = os.path.join(os.path.realpath(folder), "").startswith(root)
    return folders[folder] and (not os.path.islink(path) or os.path.realpath(path).startswith(root))


def _read(path: str) -> bytes:
    if _STATE["local_root"] is not None and not _inside_source(path):
        raise SkipImage(
            "outside_source", f"a link to {os.path.realpath(path)}, outside the source tree (--follow-links reads it)"
        )
    try:
        if _STATE["local"]:  # fsspec's local path handling costs as much per file as reading a 100 KB photo
            with open(path, "rb") as f:
                return f.read()
        return _STATE["fs"].cat_file(path)
    except OSError as e:
        raise SkipImage("unreadable", f"{type(e).__name__}: {e}") from e


def process_chunk(task: ChunkTask) -> ChunkResult:
    size, quality = _STATE["size"], _STATE["quality"]
    result = ChunkResult(task)
    sums = PixelSums(size) if task.with_stats else None
    for position, path, relpath, wnid, label in task.items:
        # -> bytes -> uint8 [size, size, 3] -> JPEG bytes
        try:
            decoded = decode_resize_crop(_read(path), size=size, name=path, max_pixels=_STATE["max_pixels"])
        except SkipImage as e:
            result.skipped.append({"split": task.split, "path": relpath, "reason": e.reason, "detail": e.detail})
            continue
        for name in decoded.conversions:
            result.conversions[name] = result.conversions.get(name, 0) + 1
        if sums is not None:
            sums.add(decoded.pixels)
        meta = {"src": relpath, "wnid": wnid, "label": label, "original_size": list(decoded.original_size)}
        members = {
            CLASS_EXT: str(label).encode("ascii"),
            IMAGE_EXT: encode_jpeg(decoded.pixels, quality),
            META_EXT: json.dumps(meta, sort_keys=True).encode("utf-8"),
            LABEL_EXT: encode_label(label),
        }
        result.samples.append((sample_key(position), members))
    result.sums = sums
    return result
