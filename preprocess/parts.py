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

from pipeline.contract import ShardInfo
from preprocess.output import OutputDir
from preprocess.stats import PixelSums

__all__ = ["ShardPart", "PARTS_DIR", "plan_digest"]

PARTS_DIR = ".parts"


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
        return f"{PARTS_DIR}/{self.split}-{self.index:06d}.npz"

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
        np.savez(buf, **arrays)  # uncompressed: zlib on the 768 KiB of sums cost the parent 50 ms a shard
        out.write_bytes(self.relpath, buf.getvalue())

    @classmethod
    def load(cls, out: OutputDir, split: str, index: int) -> ShardPart | None:
        """The saved part of shard (split, index), or None if there is none or it is unreadable."""
        path = out.path(f"{PARTS_DIR}/{split}-{index:06d}.npz")
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
