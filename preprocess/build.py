"""`build_shards(cfg)`: source tree -> shuffled WebDataset shards, DALI indexes, statistics and a manifest.

The flow, per split: list the inputs, shuffle them once with the seed (DALI's reader only shuffles inside
a buffer, so the global order must be in the shards), cut the order into shards of `shard_size` and the
shards into chunks; workers turn chunks into encoded samples, and the parent writes them in order. Keys
are positions in the shuffled order, so a build is reproducible byte for byte for a given seed.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np

from pipeline.contract import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    MEAN_IMAGE_NAME,
    SKIPPED_NAME,
    SPLITS,
    STATS_NAME,
    Manifest,
    ShardInfo,
    SplitInfo,
    index_name,
    shard_name,
)
from preprocess.image import DEFAULT_MAX_PIXELS
from preprocess.layout import SourceDataset, discover
from preprocess.output import OutputDir, OutputExistsError
from preprocess.parallel import run_chunks
from preprocess.stats import PixelSums, finalize
from preprocess.tarshard import ShardWriter
from preprocess.worker import ChunkResult, ChunkTask

__all__ = ["BuildConfig", "BuildReport", "TooManySkipped", "build_shards"]

log = logging.getLogger(__name__)

CHUNK_SIZE = 32  # images per worker task: small enough for an even load, large enough to amortise IPC


@dataclass(frozen=True)
class BuildConfig:
    src: str
    out: str = "shards"
    layout: str = "auto"
    val_labels: str | None = None
    class_names: str | None = None
    size: int = 256
    quality: int = 90
    shard_size: int = 1000
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    seed: int = 0
    max_skipped: int = 10
    max_pixels: int = DEFAULT_MAX_PIXELS
    limit: int | None = None  # per split, for smoke runs
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self):
        for name in ("size", "shard_size", "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"quality must be in 1..100, got {self.quality}")
        if self.max_skipped < 0:
            raise ValueError(f"max_skipped must be >= 0, got {self.max_skipped}")


@dataclass
class BuildReport:
    manifest: Manifest | None
    seconds: float
    found: dict[str, int]
    written: dict[str, int]
    skipped: list[dict]
    conversions: dict[str, int]
    bytes: int

    @property
    def images_per_second(self) -> float:
        return sum(self.found.values()) / max(self.seconds, 1e-9)

    def summary(self) -> str:
        reasons = Counter(s["reason"] for s in self.skipped)
        lines = [
            f"processed {sum(self.found.values())} images in {self.seconds:.1f} s ({self.images_per_second:.1f} images/s)",
            "written: " + ", ".join(f"{k} {v}" for k, v in self.written.items()),
            "skipped: " + (", ".join(f"{r} {n}" for r, n in sorted(reasons.items())) if reasons else "none"),
            "converted: " + (", ".join(f"{k} {v}" for k, v in sorted(self.conversions.items())) or "none"),
            f"output: {self.bytes / 2**20:.1f} MiB",
        ]
        return "\n".join(lines)


class TooManySkipped(RuntimeError):
    """More inputs were skipped than --max-skipped allows; the skip report is written, the manifest is not."""


def _plan(dataset: SourceDataset, cfg: BuildConfig) -> list[ChunkTask]:
    tasks = []
    for split_number, split in enumerate(SPLITS):
        items = dataset.splits.get(split, [])
        order = np.random.default_rng([cfg.seed, split_number]).permutation(len(items))
        if cfg.limit is not None:
            order = order[: cfg.limit]
        picked = [items[i] for i in order]
        rows = [(pos, it.path, it.relpath, it.wnid, dataset.label[it.wnid]) for pos, it in enumerate(picked)]
        for shard, start in enumerate(range(0, len(rows), cfg.shard_size)):
            shard_rows = rows[start : start + cfg.shard_size]
            chunks = [shard_rows[i : i + CHUNK_SIZE] for i in range(0, len(shard_rows), CHUNK_SIZE)]
            for n, chunk in enumerate(chunks):
                tasks.append(ChunkTask(split, shard, n == len(chunks) - 1, tuple(chunk), split == "train"))
    return tasks


class _ShardAssembler:
    """Consumes chunk results in order and writes each shard once its last chunk has arrived."""

    def __init__(self, out: OutputDir):
        self.out = out
        self.shards: dict[str, list[ShardInfo]] = {s: [] for s in SPLITS}
        self._writer: ShardWriter | None = None

    def add(self, result: ChunkResult) -> None:
        task = result.task
        if self._writer is None:
            self._name = shard_name(task.split, task.shard)
            self._writer = ShardWriter(self.out.staging_path(f"{task.split}/{self._name}"))
        for key, members in result.samples:
            self._writer.write(key, members)
        if task.last_in_shard:
            self._finish(task.split)

    def _finish(self, split: str) -> None:
        writer, self._writer = self._writer, None
        with writer:
            if writer.samples == 0:  # every input of this shard was skipped: no empty tar
                writer.discard()
                return
            done = writer.finish()
        idx = index_name(self._name)
        self.out.write_bytes(f"{split}/{idx}", done.index_text.encode("ascii"))
        self.out.publish(done.path, f"{split}/{self._name}")
        self.shards[split].append(ShardInfo(self._name, idx, done.samples, done.bytes, done.sha256))

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.discard()
            self._writer = None


def _write_stats(out: OutputDir, sums: PixelSums) -> None:
    stats, mean_image = finalize(sums)
    buf = io.BytesIO()
    np.save(buf, mean_image, allow_pickle=False)
    out.write_bytes(MEAN_IMAGE_NAME, buf.getvalue())
    out.write_bytes(STATS_NAME, stats.to_json().encode("utf-8"))


def build_shards(cfg: BuildConfig) -> BuildReport:
    """Builds the shards described by `cfg`.

    Raises:
        OutputExistsError: `cfg.out` holds an earlier build and `cfg.overwrite` is false.
        LayoutError: the source is not a supported layout.
        TooManySkipped: more than `cfg.max_skipped` inputs were skipped (after the report is written).
    """
    started = time.perf_counter()
    out = OutputDir(cfg.out)
    existing = out.existing_build_files()
    if existing and not cfg.overwrite:
        raise OutputExistsError(f"{cfg.out} already holds a build ({existing[:3]}...); pass --overwrite to replace it")
    dataset = discover(cfg.src, layout=cfg.layout, val_labels=cfg.val_labels, class_names=cfg.class_names)
    if existing:
        out.clear()
    tasks = _plan(dataset, cfg)
    found = Counter(t.split for t in tasks for _ in t.items)
    log.info("%s layout: %d classes, %s inputs", dataset.layout, len(dataset.wnids), dict(found))

    assembler, sums = _ShardAssembler(out), PixelSums(cfg.size)
    skipped: list[dict] = []
    conversions: Counter = Counter()
    try:
        for result in run_chunks(tasks, cfg):
            assembler.add(result)
            skipped += result.skipped
            conversions.update(result.conversions)
            if result.sums is not None:
                sums.merge(result.sums)
    except BaseException:
        assembler.abort()
        out.close()
        raise
    _write_stats(out, sums)
    out.write_bytes(SKIPPED_NAME, "".join(json.dumps(s, sort_keys=True) + "\n" for s in skipped).encode("utf-8"))

    splits = {s: SplitInfo(tuple(assembler.shards[s])) for s in SPLITS}
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        image_size=cfg.size,
        classes=tuple(dataset.classes()),
        splits=splits,
        config={**asdict(cfg), "layout": dataset.layout},
        found={s: found.get(s, 0) for s in SPLITS},
        skipped=tuple(skipped),
        conversions=dict(sorted(conversions.items())),
    )
    written = {s: splits[s].samples for s in SPLITS}
    assert sum(written.values()) + len(skipped) == sum(found.values()), "an input was neither written nor skipped"
    report = BuildReport(
        manifest=None,
        seconds=time.perf_counter() - started,
        found=dict(manifest.found),
        written=written,
        skipped=skipped,
        conversions=manifest.conversions,
        bytes=sum(s.bytes for s in splits.values()),
    )
    if len(skipped) > cfg.max_skipped:
        out.close()
        raise TooManySkipped(
            f"{len(skipped)} inputs were skipped, more than --max-skipped {cfg.max_skipped}; see "
            f"{out.path(SKIPPED_NAME)}. No manifest was written.\n{report.summary()}"
        )
    out.write_bytes(MANIFEST_NAME, manifest.to_json().encode("utf-8"))  # last: marks the build finished
    out.close()
    report.manifest = manifest
    return report
