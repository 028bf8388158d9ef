"""The trainer's only contact with `pipeline`: building loaders and timing how long a step waits for data."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

from pipeline import DistInfo
from trainer.config import AMP_DTYPES, TrainConfig

__all__ = ["make_loader", "timed", "loader_dtype", "ResidentBatch"]


def loader_dtype(cfg: TrainConfig, info: DistInfo) -> str:
    """The loader's `dtype` option: half-precision images only where autocast runs in half precision anyway (CUDA)."""
    return AMP_DTYPES[cfg.amp] if info.device.startswith("cuda") else "float32"


def make_loader(cfg: TrainConfig, info: DistInfo, split: str, *, ten_crop: bool = False) -> Any:
    """A `pipeline.ImageNetLoader` for this rank, placed in the job by the trainer's own `DistInfo`."""
    from pipeline import ImageNetLoader  # heavy (DALI): imported where used

    return ImageNetLoader(
        cfg.data,
        split=split,
        batch_size=cfg.batch_size,
        device="gpu" if info.device.startswith("cuda") else "cpu",
        crop_size=cfg.crop_size,
        num_threads=cfg.workers,
        seed=cfg.seed,
        dist=info,
        dtype=loader_dtype(cfg, info),
        channels_last=cfg.channels_last,
        ten_crop=ten_crop,
    )


class ResidentBatch:
    """A stand-in for the train loader that yields its first batch again and again, already in memory.

    The trainer then runs exactly its usual steps with a loader that costs nothing: the baseline against which
    `bench/trainer_bench.py` measures how much the real loader slows training down. State calls go to the real
    loader, so checkpoints keep working.
    """

    def __init__(self, loader: Any):
        self.loader = loader
        self.batch = tuple(t.clone() for t in next(iter(loader)))

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        return (self.batch for _ in range(len(self.loader)))

    def state_dict(self) -> dict:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state)


def timed(loader: Iterable) -> Iterator[tuple[float, Any]]:
    """Yields (seconds blocked in next(loader), batch): the data-wait part of each step."""
    it = iter(loader)
    while True:
        start = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            return
        yield time.perf_counter() - start, batch
