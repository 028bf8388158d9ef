"""How one epoch is split across ranks and batches: pure arithmetic, mirrored from DALI's reader.

DALI's reader gives global rank r of S the samples [floor(N*r/S), floor(N*(r+1)/S)) of its (shuffled) list, so
slices differ by at most one sample. With `pad_last_batch=True` every rank's epoch is padded (by repeating its
last sample) to the same number of batches, ceil(ceil(N/S)/B), so all ranks step in lockstep and a new epoch
always starts on a fresh batch. From that:

- train (drop_last): every rank yields floor(floor(N/S)/B) full batches, the most that the smallest slice fills;
  the reader's remaining batches of the epoch are read and discarded, so ranks never wait on each other in DDP.
- val (no drop_last): every rank yields all padded batches, trimmed to its real samples, so each sample of the
  split is counted exactly once across ranks (a rank may get a short or even empty last batch).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["DistInfo", "dist_from_env", "EpochPlan", "plan_epoch"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in a distributed job: the one description that the loader and a trainer share."""

    rank: int = 0  # GLOBAL rank: shard assignment and seeds must never use the local rank
    world_size: int = 1
    local_rank: int = 0  # only picks the GPU
    local_world_size: int = 1  # processes on this machine (they share its cores)
    device: str = "cpu"  # the torch device a trainer computes on ("cuda:<local_rank>"); the loader has its own option

    def __post_init__(self):
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside world size {self.world_size}")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only the main process writes files and logs."""
        return self.rank == 0


def dist_from_env(rank: int | None = None, world_size: int | None = None, local_rank: int | None = None) -> DistInfo:
    """Explicit values win; otherwise torchrun's RANK / WORLD_SIZE / LOCAL_RANK; otherwise one process."""
    env = os.environ
    return DistInfo(
        rank=int(env.get("RANK", 0)) if rank is None else rank,
        world_size=int(env.get("WORLD_SIZE", 1)) if world_size is None else world_size,
        local_rank=int(env.get("LOCAL_RANK", 0)) if local_rank is None else local_rank,
    )


@dataclass(frozen=True)
class EpochPlan:
    samples: int  # in the split
    rank_samples: int  # real samples in this rank's slice
    reader_batches: int  # batches the reader emits per epoch on every rank (padded)
    batches: int  # batches this loader yields per epoch (equal on every rank)
    batch_size: int
    drop_last: bool

    def valid_in_batch(self, batch: int) -> int:
        """Real (not padding) samples at the head of batch `batch` of an epoch."""
        if self.drop_last:
            return self.batch_size
        return max(0, min(self.batch_size, self.rank_samples - batch * self.batch_size))

    @property
    def yielded_samples(self) -> int:
        """Samples this rank yields per epoch (for val: its share of the exact-once count)."""
        return sum(self.valid_in_batch(b) for b in range(self.batches))


def _slice(samples: int, rank: int, world_size: int) -> int:
    return samples * (rank + 1) // world_size - samples * rank // world_size


def plan_epoch(samples: int, batch_size: int, dist: DistInfo, drop_last: bool) -> EpochPlan:
    if samples < dist.world_size:
        raise ValueError(f"{samples} samples cannot be split across {dist.world_size} ranks")
    largest = -(-samples // dist.world_size)
    reader_batches = -(-largest // batch_size)
    batches = (samples // dist.world_size) // batch_size if drop_last else reader_batches
    return EpochPlan(
        samples=samples,
        rank_samples=_slice(samples, dist.rank, dist.world_size),
        reader_batches=reader_batches,
        batches=batches,
        batch_size=batch_size,
        drop_last=drop_last,
    )
