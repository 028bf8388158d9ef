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
from dataclasses import asdict, fields

import torch

from pipeline.allocator import keep_batch_memory_mapped
from pipeline.config import LoaderConfig
from pipeline.diagnose import explain_failure
from pipeline.errors import LoaderError, ShardError
from pipeline.finish import TorchFinisher, finished_by_kernel
from pipeline.graph import READER_NAME, build_pipeline
from pipeline.mean_image import TenCropMeanImage, subtracted_by_torch
from pipeline.normalize import load_normalization
from pipeline.output import labels_to_device, output_stream, parse_class_labels, to_torch
from pipeline.sharding import DistInfo, EpochPlan, dist_from_env, plan_epoch
from pipeline.sources import find_shards

__all__ = ["ImageNetLoader"]

log = logging.getLogger(__name__)
_STATE_VERSION = 1
_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ImageNetLoader:
    """Augmented batches of one split for one (global) rank; see pipeline/README.md for every option.

    Raises (at construction, or while iterating for `ShardError`):
        ContractError: manifest.json / stats.json / mean_image.npy missing or malformed.
        NoShardsError: no shards for the split.
        ShardError: a shard is missing, truncated or holds a corrupt sample (names the shard and key).
        ValueError: a bad option, or foreign shards without the mean/std the options need.
    """

    def __init__(self, root: str, *, rank: int | None = None, world_size: int | None = None,
                 local_rank: int | None = None, eigval=None, eigvec=None, **options):  # fmt: skip
        unknown = set(options) - {f.name for f in fields(LoaderConfig)}
        if unknown:
            raise TypeError(f"ImageNetLoader: unknown options {sorted(unknown)}")
        for name in ("mean", "std"):
            if options.get(name) is not None:
                options[name] = tuple(float(v) for v in options[name])
        if options.get("device", "auto") == "auto":
            options["device"] = "gpu" if torch.cuda.is_available() else "cpu"
        self.root = str(root)
        self.config = LoaderConfig(**options)
        self.dist: DistInfo = dist_from_env(rank, world_size, local_rank)
        cfg = self.config
        # Remote shards: one download per node into the shared cache, with a progress bar on its first local rank.
        self.shards = find_shards(self.root, cfg.split, cfg.format, cfg.cache_dir, progress=self.dist.local_rank == 0)
        self._check_sizes()
        if cfg.crop_size > self.shards.image_size:
            raise ValueError(f"ImageNetLoader: crop_size {cfg.crop_size} is larger than the shards' "
                             f"{self.shards.image_size}x{self.shards.image_size} images")  # fmt: skip
        self.norm = load_normalization(self.root, cfg, self.shards.format == "contract", eigval, eigvec)
        self.device = torch.device(f"cuda:{self.dist.local_rank}" if cfg.device == "gpu" else "cpu")
        if cfg.device == "cpu" and cfg.malloc_tuning:
            keep_batch_memory_mapped()  # before DALI's threads allocate: else 1 process in 3 runs 10-15% slower
        self._finisher = None  # on the GPU, translate and center crops leave DALI as uint8 and are finished by torch
        if cfg.device == "gpu" and finished_by_kernel(cfg):
            self._finisher = TorchFinisher(self.norm, cfg, self.device, self.shards.image_size)
        self._mean_image = None
        if subtracted_by_torch(cfg, self.norm):
            self._mean_image = TenCropMeanImage(self.norm.mean_image, cfg, self.device)
        self.epoch, self._batch, self._reader_batch = 0, 0, 0
        self._started, self._failed = False, None
        self._pipe = self._build()
        samples = int(self._pipe.reader_meta(READER_NAME)["epoch_size"])
        self.plan: EpochPlan = plan_epoch(samples, cfg.batch_size, self.dist, cfg.drops_last)
        if self.plan.batches == 0:
            log.warning("%r yields no batch per epoch (%d samples on this rank)", self, self.plan.rank_samples)

    def __repr__(self) -> str:
        changed = {k: v for k, v in asdict(self.config).items() if v != getattr(LoaderConfig, k, None)}
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
        x = to_torch(images)[:valid]
        if self._finisher is not None:  # GPU: uint8 crops + (start, mirror[, alphas]) -> float32, any layout
            x = self._finisher(x, *(to_torch(e)[:valid] for e in extras))
        else:
            if self._mean_image is not None:
                x = self._mean_image(x)  # DALI made float32 here
            if self.config.channels_last:  # DALI made NHWC: the same memory is NCHW in channels_last format
                x = x.permute(0, 3, 1, 2) if x.dim() == 4 else x.permute(0, 1, 4, 2, 3)
        if x.dtype != _TORCH_DTYPES[self.config.dtype]:
            x = x.to(_TORCH_DTYPES[self.config.dtype])  # DALI has no bfloat16
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
