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

INDEX_VERSION = "v1.2"  # the format DALI's wds2idx writes and readers.webdataset reads

__all__ = ["ShardWriter", "FinishedShard", "sha256_file", "format_index", "INDEX_VERSION"]

IndexEntry = tuple[str, int, int, str]  # (extension, data offset, size, member name)

BLOCK = tarfile.BLOCKSIZE  # 512
RECORD = tarfile.RECORDSIZE  # tarfile pads a closed archive to a multiple of 20 blocks; so do we
# The fixed fields of every member's USTAR header: mode 0444, uid/gid 0, mtime 0, regular file, no link,
# empty user/group names, device 0/0, no prefix. Exactly what tarfile writes for such a TarInfo.
_MODE_IDS = b"0000444\x00" + b"0000000\x00" * 2
_MTIME = b"00000000000\x00"
_AFTER_CHKSUM = b"0" + b"\x00" * 100 + tarfile.POSIX_MAGIC + b"\x00" * (64 + 16 + 155)  # devmajor/minor empty


def ustar_header(name: str, size: int) -> bytes:
    """The 512-byte USTAR header tarfile writes for a regular member with our fixed metadata, built directly.

    tarfile's TarInfo.tobuf rebuilds and validates every field of every member, which in the parent process of a
    build is CPU taken from the workers (four members a sample); this fills in the few fields that change. A test
    checks it is byte-identical to tarfile's.
    """
    encoded = name.encode("utf-8")
    if len(encoded) > 100 or size >= 8**11:
        raise ValueError(f"member {name!r} of {size} bytes does not fit a plain USTAR header")
    head = encoded.ljust(100, b"\x00") + _MODE_IDS + b"%011o\x00" % size + _MTIME
    checksum = sum(head) + 8 * 0x20 + sum(_AFTER_CHKSUM)  # the checksum field counts as eight spaces
    header = head + b"%06o\x00 " % checksum + _AFTER_CHKSUM
    return header + b"\x00" * (BLOCK - len(header))


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
        self._offset = 0
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
            data, name = members[ext], f"{key}.{ext}"
            padding = -len(data) % BLOCK
            self._file.write(ustar_header(name, len(data)))
            self._file.write(data)
            self._file.write(b"\x00" * padding)
            entries.append((ext, self._offset + BLOCK, len(data), name))
            self._offset += BLOCK + len(data) + padding
        self._index.append(entries)

    def finish(self) -> FinishedShard:
        """Closes the tar, flushes it to disk and returns what the manifest records."""
        end = self._offset + 2 * BLOCK  # two zero blocks end the archive, then zeros to a whole record
        self._file.write(b"\x00" * (2 * BLOCK + -end % RECORD))
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
        self._file.close()
        if os.path.exists(self.tmp_path):
            os.remove(self.tmp_path)
