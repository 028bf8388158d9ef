"""A WebDataset shard writer that is reproducible and never leaves a partial shard under a final name.

Unlike webdataset's ShardWriter, which writes straight to the final name and closes (finalises) the tar
even when an exception escapes, this writer fills a temporary file and publishes it only from `finish()`;
leaving the `with` block by an exception discards the temporary file. Members are written with fixed
metadata (mtime 0, uid/gid 0, mode 0444, USTAR), so identical input gives byte-identical shards.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from dataclasses import dataclass
from io import BytesIO

INDEX_VERSION = "v1.2"  # the format DALI's wds2idx writes and readers.webdataset reads

__all__ = ["ShardWriter", "FinishedShard", "sha256_file", "format_index", "INDEX_VERSION"]

IndexEntry = tuple[str, int, int, str]  # (extension, data offset, size, member name)


@dataclass(frozen=True)
class FinishedShard:
    path: str  # the temporary file, complete and closed, ready to publish
    samples: int
    bytes: int
    sha256: str
    index_text: str  # DALI index file contents


def format_index(samples: list[list[IndexEntry]]) -> str:
    """DALI's index format: a header line, then one line per sample listing its members."""
    lines = [" ".join(f"{ext} {offset} {size} {name}" for ext, offset, size, name in sample) for sample in samples]
    return f"{INDEX_VERSION} {len(samples)}\n" + "".join(line + "\n" for line in lines)


def sha256_file(path: str, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


class ShardWriter:
    """Writes samples (key -> {ext: bytes}) into a tar at `tmp_path`.

    Use as a context manager and call `finish()` inside it; an exception discards the file.
    """

    def __init__(self, tmp_path: str):
        self.tmp_path = tmp_path
        self._file = open(tmp_path, "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)
        self._index: list[list[IndexEntry]] = []
        self._keys: set[str] = set()
        self._finished = False

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._finished:
            self.discard()

    @property
    def samples(self) -> int:
        return len(self._index)

    def write(self, key: str, members: dict[str, bytes]) -> None:
        if "." in key or "/" in key or not key:
            raise ValueError(f"sample key must be non-empty without dots or slashes: {key!r}")
        if key in self._keys:
            raise ValueError(f"duplicate sample key {key!r} in {self.tmp_path}")
        self._keys.add(key)
        entries = []
        for ext in sorted(members):
            data = members[ext]
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode, info.uid, info.gid = len(data), 0, 0o444, 0, 0
            info.uname = info.gname = ""
            data_offset = self._tar.offset + tarfile.BLOCKSIZE  # a USTAR header is exactly one block
            self._tar.addfile(info, BytesIO(data))
            entries.append((ext, data_offset, info.size, info.name))
        self._index.append(entries)

    def finish(self) -> FinishedShard:
        """Closes the tar, flushes it to disk and returns what the manifest records."""
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._finished = True
        return FinishedShard(
            path=self.tmp_path,
            samples=len(self._index),
            bytes=os.path.getsize(self.tmp_path),
            sha256=sha256_file(self.tmp_path),
            index_text=format_index(self._index),
        )

    def discard(self) -> None:
        self._finished = True
        try:
            self._tar.close()
        except Exception:  # noqa: BLE001 - the file is being thrown away; its state does not matter
            pass
        self._file.close()
        if os.path.exists(self.tmp_path):
            os.remove(self.tmp_path)
