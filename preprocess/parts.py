"""What one finished shard contributed to the build, saved beside it so a killed build can resume.

A part records the shard's manifest entry, its skipped inputs, its conversion counts and (for train) its
exact pixel sums, plus a digest of the shard's plan (its inputs and the image settings). `--resume` reuses
a part only when its plan digest matches the new plan and the shard on disk still has the recorded sha256,
so a resumed build is byte-identical to an uninterrupted one, statistics included. Parts live in `.parts/`
and are removed once the manifest is published.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass

import numpy as np

from pipeline.contract import SPLITS, ShardInfo
from preprocess.output import OutputDir
from preprocess.stats import PixelSums

__all__ = ["ShardPart", "PartTotals", "PARTS_DIR", "plan_digest"]

PARTS_DIR = ".parts"


def part_path(split: str, index: int) -> str:
    """Where the part of shard (split, index) lives, relative to the output root."""
    return f"{PARTS_DIR}/{split}-{index:06d}.npz"


def plan_digest(rows: list[tuple], settings: dict) -> str:
    """Identifies what a shard is built from: its inputs in order and the settings that shape its bytes."""
    return hashlib.sha256(json.dumps([rows, settings], sort_keys=True).encode()).hexdigest()


@dataclass
class ShardPart:
    split: str
    index: int
    digest: str
    shard: ShardInfo | None  # None when every input of the shard was skipped
    skipped: list[dict]
    conversions: dict[str, int]
    sums: PixelSums | None  # train shards only

    @property
    def relpath(self) -> str:
        return part_path(self.split, self.index)

    def save(self, out: OutputDir) -> None:
        meta = {
            "split": self.split,
            "index": self.index,
            "digest": self.digest,
            "shard": asdict(self.shard) if self.shard else None,
            "skipped": self.skipped,
            "conversions": self.conversions,
            "size": self.sums.size if self.sums else None,
            "count": self.sums.count if self.sums else 0,
        }
        arrays = {"meta": np.frombuffer(json.dumps(meta).encode(), np.uint8)}
        if self.sums is not None:
            arrays.update(image_sum=self.sums.image_sum, cross_sum=self.sums.cross_sum)
        buf = io.BytesIO()
        np.savez(buf, **arrays)  # uncompressed: compressing the sums would cost the driver CPU on every shard
        out.write_bytes(self.relpath, buf.getvalue())

    @classmethod
    def load(cls, out: OutputDir, split: str, index: int) -> ShardPart | None:
        """The saved part of shard (split, index), or None if there is none or it is unreadable."""
        path = out.path(part_path(split, index))
        try:
            with np.load(io.BytesIO(out.fs.cat_file(path)), allow_pickle=False) as npz:
                meta = json.loads(npz["meta"].tobytes())
                sums = None
                if meta["size"] is not None:
                    sums = PixelSums(meta["size"], meta["count"], npz["image_sum"], npz["cross_sum"])
        except (OSError, ValueError, KeyError):
            return None
        shard = ShardInfo(**meta["shard"]) if meta["shard"] else None
        return cls(split, index, meta["digest"], shard, meta["skipped"], meta["conversions"], sums)


class PartTotals:
    """What the finished shards add up to, merged as each part arrives, in any order.

    The pixel sums are merged at once and dropped, so the driver holds one running total and a few hundred
    bytes per shard (its manifest entry, skips and conversions), not 1.5 MB of sums per shard.
    """

    def __init__(self, size: int):
        self.sums = PixelSums(size)
        self._entries: dict[tuple[str, int], tuple[ShardInfo | None, list[dict], dict[str, int]]] = {}

    def add(self, part: ShardPart) -> None:
        if part.sums is not None:
            self.sums.merge(part.sums)
        self._entries[part.split, part.index] = (part.shard, part.skipped, part.conversions)

    def __len__(self) -> int:
        return len(self._entries)

    def _in_order(self):
        return [self._entries[key] for key in sorted(self._entries, key=lambda k: (SPLITS.index(k[0]), k[1]))]

    def shards(self, split: str) -> tuple[ShardInfo, ...]:
        return tuple(self._entries[k][0] for k in sorted(self._entries) if k[0] == split and self._entries[k][0])

    def skipped(self) -> list[dict]:
        """Every skipped input, in plan order (split, then shard), as the report lists them."""
        return [row for _, skipped, _ in self._in_order() for row in skipped]

    def conversions(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for _, _, conversions in self._entries.values():
            for name, n in conversions.items():
                total[name] = total.get(name, 0) + n
        return dict(sorted(total.items()))

    def kept_files(self) -> set[str]:
        shards = [(split, shard) for (split, _), (shard, _, _) in self._entries.items() if shard]
        return {f"{split}/{name}" for split, shard in shards for name in (shard.name, shard.index)}
