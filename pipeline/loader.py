"""`ImageNetLoader`: batches of augmented ImageNet crops as torch tensors, from a DALI pipeline.

    loader = ImageNetLoader("shards/", split="train", batch_size=128, device="gpu")
    for images, labels in loader:   # float [B, 3, crop, crop] on the loader's device, int64 [B]
        ...

Iterating again starts the next epoch (an epoch left early is read to its end first, discarding the rest).
"""

from __future__ import annotations

import base64
import logging
import os
from dataclasses import asdict

import numpy as np
import torch

from pipeline.allocator import keep_batch_memory_mapped
from pipeline.config import LoaderConfig
from pipeline.diagnose import explain_failure
from pipeline.errors import LoaderError, ShardError
from pipeline.finish import AfterGraph, load_normalization, plan_finish
from pipeline.graph import READER_NAME, build_pipeline
from pipeline.sharding import DistInfo, EpochPlan, dist_from_env, plan_epoch
from pipeline.sources import find_shards

__all__ = ["ImageNetLoader"]

log = logging.getLogger(__name__)
_STATE_VERSION = 1
_D = LoaderConfig  # the options' defaults, as the signature shows them


class ImageNetLoader:
    """Augmented batches of one split for one (global) rank; see pipeline/README.md for every option.

    Raises (at construction, or while iterating for `ShardError`):
        ContractError: manifest.json / stats.json / mean_image.npy missing or malformed.
        NoShardsError: no shards for the split.
        ShardError: a shard is missing, truncated or holds a corrupt sample (names the shard and key).
        ValueError: a bad option, or foreign shards without the mean/std the options need.
    """

    def __init__(
        self, root: str, *, split: str = _D.split, batch_size: int = _D.batch_size, device: str = _D.device,
        crop_size: int = _D.crop_size, num_threads: int = _D.num_threads, seed: int = _D.seed, dtype: str = _D.dtype,
        channels_last: bool = _D.channels_last, normalization: str = _D.normalization,
        mean: tuple[float, float, float] | None = _D.mean, std: tuple[float, float, float] | None = _D.std,
        crop: str = _D.crop, ten_crop: bool = _D.ten_crop, lighting_std: float = _D.lighting_std,
        eigval: tuple[float, float, float] | None = _D.eigval, eigvec: tuple[tuple[float, ...], ...] | None = _D.eigvec,
        drop_last: bool | None = _D.drop_last, format: str = _D.format, shuffle_buffer: int = _D.shuffle_buffer,
        prefetch: int = _D.prefetch, cache_dir: str | None = _D.cache_dir, malloc_tuning: bool = _D.malloc_tuning,
        rank: int | None = None, world_size: int | None = None, local_rank: int | None = None, dist: DistInfo | None = None,
    ):  # fmt: skip
        """Every option is a `LoaderConfig` field (same default; pipeline/README.md says what each does). `dist`, or
        `rank`/`world_size`/`local_rank`, place this loader in the job: torchrun's environment when none is given."""
        config = LoaderConfig(
            split=split, batch_size=batch_size, device=device, crop_size=crop_size, num_threads=num_threads, seed=seed,
            dtype=dtype, channels_last=channels_last, normalization=normalization, mean=mean, std=std, crop=crop,
            ten_crop=ten_crop, lighting_std=lighting_std, eigval=eigval, eigvec=eigvec, drop_last=drop_last,
            format=format, shuffle_buffer=shuffle_buffer, prefetch=prefetch, cache_dir=cache_dir,
            malloc_tuning=malloc_tuning,
        )  # fmt: skip
        if dist is not None and (rank, world_size, local_rank) != (None, None, None):
            raise ValueError("ImageNetLoader: pass either dist or rank/world_size/local_rank, not both")
        self.root = str(root)
        self.config = config.resolved()
        self.dist: DistInfo = dist if dist is not None else dist_from_env(rank, world_size, local_rank)
        self._open()

    def _open(self) -> None:
        """Finds the shards and the statistics, applies the plan of who finishes a crop, and builds the pipeline."""
        cfg = self.config
        # Remote shards: one download per node into the shared cache, with a progress bar on its first local rank.
        self.shards = find_shards(self.root, cfg.split, cfg.format, cfg.cache_dir, progress=self.dist.local_rank == 0)
        self._check_sizes()
        if cfg.crop_size > self.shards.image_size:
            raise ValueError(f"ImageNetLoader: crop_size {cfg.crop_size} is larger than the shards' "
                             f"{self.shards.image_size}x{self.shards.image_size} images")  # fmt: skip
        self.norm = load_normalization(self.root, cfg, self.shards.format == "contract")
        self.device = torch.device(f"cuda:{self.dist.local_rank}" if cfg.device == "gpu" else "cpu")
        if cfg.device == "cpu" and cfg.malloc_tuning:
            keep_batch_memory_mapped()  # before DALI's threads allocate (see pipeline.allocator)
        self.finish_plan = plan_finish(cfg)  # which stage finishes a crop; the graph follows the same plan
        self._after_graph = AfterGraph(self.finish_plan, self.norm, cfg, self.device, self.shards.image_size)
        self.epoch, self._batch, self._reader_batch = 0, 0, 0
        self._started, self._failed = False, None
        self._pipe = self._build()
        samples = int(self._pipe.reader_meta(READER_NAME)["epoch_size"])
        self.plan: EpochPlan = plan_epoch(samples, cfg.batch_size, self.dist, cfg.drops_last)
        if self.plan.batches == 0:
            log.warning("%r yields no batch per epoch (%d samples on this rank)", self, self.plan.rank_samples)

    def __repr__(self) -> str:
        """The root, the rank, and every option that differs from its default (eigval/eigvec when given)."""
        changed = {k: v for k, v in asdict(self.config).items() if v != getattr(LoaderConfig, k)}
        opts = ", ".join(f"{k}={v!r}" for k, v in changed.items())
        return f"ImageNetLoader({self.root!r}, rank={self.dist.rank}, world_size={self.dist.world_size}, {opts})"

    def __len__(self) -> int:
        """Batches per epoch for this rank (the same on every rank)."""
        return self.plan.batches

    @property
    def samples_per_epoch(self) -> int:
        """Real samples this rank yields per epoch: for val, the ranks' counts add up to the split's size."""
        return self.plan.yielded_samples

    @property
    def num_classes(self) -> int | None:
        """Classes listed in manifest.json (None for foreign shards, which do not say)."""
        return self.shards.manifest.num_classes if self.shards.manifest is not None else None

    @property
    def dataset_size(self) -> int:
        """Samples in the split, over all ranks."""
        return self.plan.samples

    def __iter__(self):
        if self._started:
            self._finish_epoch()  # the previous iteration stopped early: that epoch is over
        self._started = True
        return self._epoch()

    def _epoch(self):
        # -> (images float [B, 3, crop, crop] or [B, 10, 3, crop, crop], labels int64 [B]) on self.device
        while self._batch < self.plan.batches:
            outputs = self._run()
            valid = self.plan.valid_in_batch(self._batch)
            self._batch += 1
            yield self._to_torch(outputs, valid)
        self._finish_epoch()

    def _finish_epoch(self) -> None:
        """Reads (and drops) the reader's remaining batches, so the next epoch starts at its beginning."""
        while self._reader_batch < self.plan.reader_batches:
            self._run()
        self.epoch, self._batch, self._reader_batch = self.epoch + 1, 0, 0
        self._started = False

    def _run(self):
        if self._failed is not None:
            raise LoaderError(f"{self!r} failed earlier and cannot go on") from self._failed
        try:
            outputs = self._pipe.run(output_stream(self.device))  # GPU: no wait for the batch on the host
        except RuntimeError as e:
            self._failed = explain_failure(e, self.shards)
            raise self._failed from e
        self._reader_batch += 1
        return outputs

    def _to_torch(self, outputs, valid: int):
        # Nothing here waits for the GPU: every tensor stays on its device and nothing is read back.
        images, labels, extras = outputs[0], outputs[1], outputs[2:]
        if self.shards.format == "contract":
            y = to_torch(labels).view(-1)
        else:
            y = labels_to_device(parse_class_labels(labels, self.shards.split), self.device)
        y = y[:valid]  # val: padding repeats a rank's last sample; it must not be counted twice
        x = self._after_graph(to_torch(images)[:valid], tuple(to_torch(e)[:valid] for e in extras))
        return x, y

    def _build(self, checkpoint: str | None = None):
        pipe = build_pipeline(self.shards, self.config, self.norm, self.dist, checkpoint=checkpoint)
        try:
            pipe.build()
        except RuntimeError as e:
            raise explain_failure(e, self.shards) from e
        return pipe

    def _check_sizes(self) -> None:
        """A truncated or rewritten shard fails here, before DALI reads it (cheap: one stat per shard)."""
        for path, size in zip(self.shards.paths, self.shards.sizes, strict=True):
            if size is not None and os.path.getsize(path) != size:
                shard = self.shards.origin_of(path)
                raise ShardError(
                    f"shard {shard} has {os.path.getsize(path)} bytes, manifest.json says {size}: truncated or "
                    "rewritten (run `preprocess verify`)",
                    shard=shard,
                )

    # Mid-epoch resume -------------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Where this rank is: epoch, batches consumed in it, and DALI's checkpoint of the reader and RNGs.

        Each rank has its own state (its reader slice and augmentation seeds): save every rank's
        (e.g. `torch.distributed.all_gather_object`) and pass the list to `load_state_dict`.
        Plain types only, so `torch.load(weights_only=True)` reads it.
        """
        checkpoint = self._pipe.checkpoint()
        if isinstance(checkpoint, str):
            checkpoint = checkpoint.encode("latin-1")
        return {
            "version": _STATE_VERSION,
            "epoch": self.epoch,
            "batch": self._batch,
            "reader_batch": self._reader_batch,
            "rank": self.dist.rank,
            "world_size": self.dist.world_size,
            "seed": self.config.seed,
            "split": self.config.split,
            "batch_size": self.config.batch_size,
            "dali": base64.b64encode(checkpoint).decode("ascii"),
        }

    def load_state_dict(self, state) -> None:
        """Continues exactly where `state` left off (the same args as the saved loader are expected).

        `state` is this rank's dict, or a list of every rank's dicts (this rank's is picked).
        """
        if isinstance(state, (list, tuple)):
            mine = [s for s in state if s.get("rank") == self.dist.rank]
            if len(mine) != 1:
                raise ValueError(f"loader states hold {len(mine)} entries for rank {self.dist.rank}, expected 1")
            state = mine[0]
        names = ("version", "rank", "world_size", "seed", "split", "batch_size")
        expected = (_STATE_VERSION, self.dist.rank, self.dist.world_size, self.config.seed, self.config.split,
                    self.config.batch_size)  # fmt: skip
        found = tuple(state.get(name) for name in names)
        if found != expected:
            raise ValueError(f"loader state for {names} = {found}, but this loader is {expected}")
        checkpoint = base64.b64decode(state["dali"])
        self._pipe = self._build(checkpoint=checkpoint)
        self.epoch, self._batch, self._reader_batch = state["epoch"], state["batch"], state["reader_batch"]
        self._started, self._failed = False, None


# DALI outputs -> torch tensors, without a copy on either device ------------------------------------------------------
# DALI's dynamic executor (the default since DALI 2.0) does not recycle an output buffer while something still
# references it, so a tensor handed over through DLPack stays valid after later batches: no copy of each batch.
# GPU: the loader asks DALI for its outputs on torch's current stream (`pipe.run(stream)`), so DALI orders that
# stream after its own work instead of making the CPU wait for the batch, and frees a buffer in that stream's order
# once torch drops it. `torch.from_dlpack` passes the same stream to DALI's `__dlpack__`, which would add the wait
# there if the outputs were bound to another stream.


def output_stream(device: torch.device):
    """The stream DALI binds its outputs to: torch's current one on CUDA; None (host order) on the CPU."""
    return torch.cuda.current_stream(device) if device.type == "cuda" else None


def to_torch(batch) -> torch.Tensor:
    """A DALI TensorList of uniform shape (CPU or GPU) -> a torch tensor on the same device, sharing its memory."""
    return torch.from_dlpack(batch.as_tensor())


def labels_to_device(labels: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host labels -> `device` through pinned memory: a copy from pageable memory would block until it is done."""
    if device.type == "cpu":
        return labels
    return labels.pin_memory().to(device, non_blocking=True)


def parse_class_labels(batch, where: str) -> torch.Tensor:
    """Foreign shards' ASCII `.cls` members (one TensorList of uint8 bytes) -> int64 [B]."""
    labels = []
    for i in range(len(batch)):
        text = np.asarray(batch[i]).tobytes().decode("ascii", errors="replace").strip()
        try:
            labels.append(int(text))
        except ValueError as e:
            raise ValueError(f"{where}: a .cls member holds {text!r}, not an integer class index") from e
    return torch.tensor(labels, dtype=torch.int64)
