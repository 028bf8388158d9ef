"""The inputs of one split, held as per-folder name tables and integer arrays instead of an object per input.

ImageNet-21k has 14.2M inputs and LAION-style sets 100M+: a `SourceItem` per input (three strings and an
object, about 520 bytes) would cost the driver 7 GiB for the first and 50 GiB for the second before a single
image is read. Here an input costs its file name's UTF-8 bytes, an 8-byte offset and a 4-byte class number
(about 35 bytes for ImageNet's names); folders and class names are stored once. Items are rebuilt on demand,
one shard's worth at a time.
"""

from __future__ import annotations

import bisect
import posixpath
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["SourceItem", "Listing"]


@dataclass(frozen=True)
class SourceItem:
    path: str  # as the source filesystem names it
    relpath: str  # relative to the source root, recorded in each sample's metadata
    wnid: str


class Listing(Sequence):
    """A read-only sequence of `SourceItem`s, in the order the folders and names were added."""

    def __init__(self, root: str):
        self.root = root
        self._dirs: list[str] = []  # per folder
        self._reldirs: list[str] = []
        self._folder_ends = array("q")  # items after each folder: folder f holds [ends[f-1], ends[f])
        self._names = bytearray()  # every file name, UTF-8, back to back
        self._name_ends = array("q")
        self._wnids: list[str] = []  # class table
        self._wnid_numbers: dict[str, int] = {}
        self._wnid_of = array("i")  # per item, a number into the class table

    def add_folder(self, directory: str, names: Iterable[str], wnids: str | Sequence[str]) -> None:
        """Appends the files `names` (base names) of `directory`, all of class `wnids` or one class each."""
        start = len(self._name_ends)
        for name in names:
            self._names += name.encode("utf-8")
            self._name_ends.append(len(self._names))
        count = len(self._name_ends) - start
        per_item = [wnids] * count if isinstance(wnids, str) else wnids
        if len(per_item) != count:
            raise ValueError(f"{directory}: {count} names but {len(per_item)} classes")
        self._wnid_of.extend(self._number(w) for w in per_item)
        self._dirs.append(directory)
        self._reldirs.append(posixpath.relpath(directory, self.root))
        self._folder_ends.append(len(self._name_ends))

    def _number(self, wnid: str) -> int:
        number = self._wnid_numbers.get(wnid)
        if number is None:
            number = self._wnid_numbers[wnid] = len(self._wnids)
            self._wnids.append(wnid)
        return number

    def wnids(self) -> set[str]:
        return set(self._wnids)

    def nbytes(self) -> int:
        """Bytes held per input, the folders' strings aside (what grows with the data set)."""
        arrays = (self._folder_ends, self._name_ends, self._wnid_of)
        return len(self._names) + sum(a.itemsize * len(a) for a in arrays)

    def __len__(self) -> int:
        return len(self._name_ends)

    def name(self, i: int) -> str:
        start = self._name_ends[i - 1] if i else 0
        return self._names[start : self._name_ends[i]].decode("utf-8")

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        folder = bisect.bisect_right(self._folder_ends, i)
        name = self.name(i)
        reldir = self._reldirs[folder]
        relpath = name if reldir == "." else f"{reldir}/{name}"
        return SourceItem(f"{self._dirs[folder]}/{name}", relpath, self._wnids[self._wnid_of[i]])

    def __eq__(self, other) -> bool:
        if isinstance(other, (Listing, list, tuple)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None

    def __repr__(self) -> str:
        return f"Listing({self.root!r}, {len(self)} items in {len(self._dirs)} folders)"
