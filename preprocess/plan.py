"""The build's plan: each split shuffled once with the seed and cut into shards, each shard made on demand.

DALI's reader only shuffles inside a buffer, so the global order must be in the shards. The plan keeps one
integer per input (its place in the split's listing, in shuffled order) and turns a shard's slice of it into
rows only when the shard is checked or submitted: a driver planning 14M inputs holds 14M integers, not 14M
tuples. Keys are positions in the shuffled order, so a build is reproducible byte for byte for a given seed,
and a shard's digest names exactly what it is built from.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from pipeline.contract import FORMAT_VERSION, SPLITS, shard_name
from preprocess.image import PIXELS_VERSION
from preprocess.layout import SourceDataset
from preprocess.parts import plan_digest
from preprocess.worker import ChunkTask

__all__ = ["ShardPlan", "BuildPlan", "CHUNK_SIZE"]

CHUNK_SIZE = 32  # images per worker task: small enough for an even load, large enough to amortise IPC

Row = tuple[int, str, str, str, int]  # (position, path, relpath, wnid, label)


@dataclass(frozen=True)
class ShardPlan:
    split: str
    index: int
    rows: tuple[Row, ...]
    digest: str

    @property
    def name(self) -> str:
        return f"{self.split}/{shard_name(self.split, self.index)}"

    def chunks(self, finishing_workers: int = 0) -> list[ChunkTask]:
        """The shard's worker tasks, CHUNK_SIZE images each.

        For the last shard of a build, `finishing_workers` (the pool's size) makes the pieces shrink with the
        images left (guided scheduling: a piece is at most a (2 * workers)-th of what remains), so the workers
        run out of work together instead of all but one waiting while it finishes a whole chunk.
        """
        pieces, start = [], 0
        while start < len(self.rows):
            size = CHUNK_SIZE
            if finishing_workers > 1:
                size = min(size, max(1, -(-(len(self.rows) - start) // (2 * finishing_workers))))
            pieces.append(self.rows[start : start + size])
            start += size
        return [
            ChunkTask(self.split, self.index, n == len(pieces) - 1, piece, self.split == "train")
            for n, piece in enumerate(pieces)
        ]


class BuildPlan:
    """Every shard of a build, in order; `shards()` makes them one at a time."""

    def __init__(self, dataset: SourceDataset, cfg):
        self.dataset, self.shard_size = dataset, cfg.shard_size
        self.settings = {"size": cfg.size, "quality": cfg.quality, "max_pixels": cfg.max_pixels,
                         "follow_links": cfg.follow_links, "format": FORMAT_VERSION,
                         "pixels": PIXELS_VERSION}  # fmt: skip
        self.orders: dict[str, np.ndarray] = {}
        for split_number, split in enumerate(SPLITS):
            listing = dataset.splits.get(split, [])
            order = np.random.default_rng([cfg.seed, split_number]).permutation(len(listing))
            if cfg.limit is not None:
                order = order[: cfg.limit]
            self.orders[split] = order.astype(np.int32) if len(listing) < 2**31 else order

    @property
    def found(self) -> dict[str, int]:
        return {split: len(order) for split, order in self.orders.items()}

    def shard_count(self) -> int:
        return sum(-(-len(order) // self.shard_size) for order in self.orders.values())

    def shards(self) -> Iterator[ShardPlan]:
        for split in SPLITS:
            listing, order = self.dataset.splits.get(split, []), self.orders[split]
            label = self.dataset.label
            for index, start in enumerate(range(0, len(order), self.shard_size)):
                rows = []
                for pos in range(start, min(start + self.shard_size, len(order))):
                    item = listing[int(order[pos])]
                    rows.append((pos, item.path, item.relpath, item.wnid, label[item.wnid]))
                digest = plan_digest([r[:1] + r[2:] for r in rows], self.settings)
                yield ShardPlan(split, index, tuple(rows), digest)
