"""Turns a shard's chunk results into its tar, its index and its part record, under final names only when whole.

Both engines write shards with this: the local engine in its parent process (chunks arrive from the worker
pool, in order), the Ray engine inside each shard's task.
"""

from __future__ import annotations

from pipeline.contract import ShardInfo, index_name, shard_name
from preprocess.output import OutputDir
from preprocess.parts import ShardPart
from preprocess.stats import PixelSums
from preprocess.tarshard import ShardWriter
from preprocess.worker import ChunkResult

__all__ = ["ShardAssembler", "ShardWriteError"]


class ShardWriteError(RuntimeError):
    """Building, writing or publishing one shard failed (disk full, I/O error, a bug); the shard is discarded."""


class ShardAssembler:
    """Consumes chunk results in order; publishes each shard, then its part, once its last chunk arrives.

    `digests` maps (split, index) to the plan digest of each shard that may arrive; `finished` is called with
    each shard's part once it is saved.
    """

    def __init__(self, out: OutputDir, digests: dict[tuple[str, int], str], size: int, finished):
        self.out, self.digests, self.size, self.finished = out, digests, size, finished
        self._writer: ShardWriter | None = None

    def add(self, result: ChunkResult) -> None:
        try:
            self._add(result)
        except Exception as e:  # the caller then aborts the open shard, removing its temporary file
            name = f"{result.task.split}/{shard_name(result.task.split, result.task.shard)}"
            raise ShardWriteError(f"writing shard {self.out.path(name)} failed: {e}; the shard was discarded") from e

    def _add(self, result: ChunkResult) -> None:
        task = result.task
        if self._writer is None:
            self._name = shard_name(task.split, task.shard)
            self._writer = ShardWriter(self.out.staging_path(f"{task.split}/{self._name}"))
            self._part = ShardPart(
                task.split, task.shard, self.digests[task.split, task.shard], None, [], {},
                PixelSums(self.size) if task.with_stats else None,
            )  # fmt: skip
        for key, members in result.samples:
            self._writer.write(key, members)
        self._part.skipped += result.skipped
        for name, n in result.conversions.items():
            self._part.conversions[name] = self._part.conversions.get(name, 0) + n
        if result.sums is not None:
            self._part.sums.merge(result.sums)
        if task.last_in_shard:
            self._finish(task.split)

    def _finish(self, split: str) -> None:
        writer, self._writer = self._writer, None
        with writer:
            if writer.samples == 0:  # every input of this shard was skipped: no empty tar
                writer.discard()
            else:
                done = writer.finish()
                idx = index_name(self._name)
                self.out.write_bytes(f"{split}/{idx}", done.index_text.encode("ascii"))
                self.out.publish(done.path, f"{split}/{self._name}")
                self._part.shard = ShardInfo(self._name, idx, done.samples, done.bytes, done.sha256)
        self._part.save(self.out)
        self.finished(self._part)

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.discard()
            self._writer = None
