"""`build_shards(cfg)`: source tree -> shuffled WebDataset shards, DALI indexes, statistics and a manifest.

The flow, per split: list the inputs, shuffle them once with the seed (DALI's reader only shuffles inside
a buffer, so the global order must be in the shards), cut the order into shards of `shard_size` and the
shards into chunks; workers turn chunks into encoded samples, and the parent writes them in order. Keys
are positions in the shuffled order, so a build is reproducible byte for byte for a given seed.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import posixpath
import time
from collections import Counter
from contextlib import closing
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
from preprocess.lock import BuildLock
from preprocess.output import OutputDir, OutputExistsError
from preprocess.parallel import run_chunks
from preprocess.parts import PARTS_DIR, ShardPart, plan_digest
from preprocess.stats import PixelSums, finalize
from preprocess.tarshard import ShardWriter
from preprocess.worker import ChunkResult, ChunkTask

__all__ = ["BuildConfig", "BuildReport", "BuildAlreadyFinished", "TooManySkipped", "build_shards"]

log = logging.getLogger(__name__)

CHUNK_SIZE = 32  # images per worker task: small enough for an even load, large enough to amortise IPC


@dataclass(frozen=True)
class BuildConfig:
    src: str
    out: str = "shards"
    layout: str = "auto"
    val_labels: str | None = None
    class_names: str | None = None
    devkit_meta: str | None = None
    size: int = 256
    quality: int = 90
    shard_size: int = 1000
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    seed: int = 0
    max_skipped: int = 10
    max_pixels: int = DEFAULT_MAX_PIXELS
    follow_links: bool = False  # read links that lead out of the source tree (symlink farms of subsets)
    limit: int | None = None  # per split, for smoke runs
    overwrite: bool = False
    resume: bool = False
    progress: bool = True

    def __post_init__(self):
        for name in ("size", "shard_size", "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"quality must be in 1..100, got {self.quality}")
        if self.overwrite and self.resume:
            raise ValueError("overwrite and resume exclude each other")
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


class ShardWriteError(RuntimeError):
    """Writing or publishing one shard failed (disk full, I/O error, an encoder exception); the shard is discarded."""


class BuildAlreadyFinished(RuntimeError):
    """`--resume` found a build whose manifest is already published: there is nothing to finish."""


@dataclass(frozen=True)
class ShardPlan:
    split: str
    index: int
    rows: tuple[tuple[int, str, str, str, int], ...]  # (position, path, relpath, wnid, label)
    digest: str

    def chunks(self) -> list[ChunkTask]:
        pieces = [self.rows[i : i + CHUNK_SIZE] for i in range(0, len(self.rows), CHUNK_SIZE)]
        return [
            ChunkTask(self.split, self.index, n == len(pieces) - 1, piece, self.split == "train")
            for n, piece in enumerate(pieces)
        ]


def _plan(dataset: SourceDataset, cfg: BuildConfig) -> list[ShardPlan]:
    settings = {"size": cfg.size, "quality": cfg.quality, "max_pixels": cfg.max_pixels, "follow_links": cfg.follow_links,
                "format": FORMAT_VERSION}  # fmt: skip
    plans = []
    for split_number, split in enumerate(SPLITS):
        items = dataset.splits.get(split, [])
        order = np.random.default_rng([cfg.seed, split_number]).permutation(len(items))
        if cfg.limit is not None:
            order = order[: cfg.limit]
        picked = [items[i] for i in order]
        rows = [(pos, it.path, it.relpath, it.wnid, dataset.label[it.wnid]) for pos, it in enumerate(picked)]
        for index, start in enumerate(range(0, len(rows), cfg.shard_size)):
            shard_rows = tuple(rows[start : start + cfg.shard_size])
            plans.append(ShardPlan(split, index, shard_rows, plan_digest([r[:1] + r[2:] for r in shard_rows], settings)))
    return plans


def _reusable(out: OutputDir, plan: ShardPlan) -> ShardPart | None:
    """The saved part of a shard that a killed build finished, if it is still intact and of the same plan."""
    part = ShardPart.load(out, plan.split, plan.index)
    if part is None or part.digest != plan.digest:
        return None
    if part.shard is not None:
        shard_path = out.path(f"{plan.split}/{part.shard.name}")
        if not out.fs.exists(shard_path) or not out.fs.exists(out.path(f"{plan.split}/{part.shard.index}")):
            return None
        if hashlib.sha256(out.fs.cat_file(shard_path)).hexdigest() != part.shard.sha256:
            return None
    return part


class _ShardAssembler:
    """Consumes chunk results in order; publishes each shard, then its part, once its last chunk arrives."""

    def __init__(self, out: OutputDir, plans: dict[tuple[str, int], ShardPlan], size: int):
        self.out, self.plans, self.size = out, plans, size
        self.parts: list[ShardPart] = []
        self._writer: ShardWriter | None = None

    def add(self, result: ChunkResult) -> None:
        try:
            self._add(result)
        except Exception as e:  # _build_locked then aborts the open shard, removing its temporary file
            name = f"{result.task.split}/{shard_name(result.task.split, result.task.shard)}"
            raise ShardWriteError(f"writing shard {self.out.path(name)} failed: {e}; the shard was discarded") from e

    def _add(self, result: ChunkResult) -> None:
        task = result.task
        if self._writer is None:
            self._name = shard_name(task.split, task.shard)
            self._writer = ShardWriter(self.out.staging_path(f"{task.split}/{self._name}"))
            self._part = ShardPart(
                task.split, task.shard, self.plans[task.split, task.shard].digest, None, [], {},
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
        self.parts.append(self._part)

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


def _check_output(out: OutputDir, cfg: BuildConfig) -> None:
    """Refuses to touch an earlier build unless told how (before any work, so it fails fast)."""
    existing = out.existing_build_files()
    if cfg.resume:
        if out.fs.exists(out.path(MANIFEST_NAME)):
            raise BuildAlreadyFinished(f"{cfg.out} holds a finished build; pass --overwrite to rebuild it")
    elif existing and not cfg.overwrite:
        raise OutputExistsError(
            f"{cfg.out} already holds a build ({', '.join(existing[:3])}...); "
            "pass --resume to finish an interrupted one or --overwrite to replace it"
        )


def _remove_strays(out: OutputDir, parts: list[ShardPart]) -> None:
    """Staging files of killed writers (a killed run, a lost node's attempt), and shards no longer in the plan."""
    keep = {f"{p.split}/{name}" for p in parts if p.shard for name in (p.shard.name, p.shard.index)}
    for split in SPLITS:
        if out.fs.isdir(out.path(split)):
            for path in out.fs.ls(out.path(split), detail=False):
                if f"{split}/{posixpath.basename(path)}" not in keep:
                    out.fs.rm(path)


def build_shards(cfg: BuildConfig) -> BuildReport:
    """Builds the shards described by `cfg`.

    Raises:
        OutputExistsError: `cfg.out` holds an earlier build and neither `resume` nor `overwrite` is set.
        BuildAlreadyFinished: `resume` on a build whose manifest is already published.
        BuildLocked: another builder writes to `cfg.out`.
        LayoutError: the source is not a supported layout.
        ShardWriteError: a shard could not be written; it is discarded and no manifest is published.
        TooManySkipped: more than `cfg.max_skipped` inputs were skipped (after the report is written).
    """
    started = time.perf_counter()
    out = OutputDir(cfg.out)
    try:
        with BuildLock(out):
            try:
                return _build_locked(cfg, out, started)
            finally:
                out.discard_staged()  # before the lock goes
    finally:
        out.close()


def _build_locked(cfg: BuildConfig, out: OutputDir, started: float) -> BuildReport:
    _check_output(out, cfg)
    dataset = discover(
        cfg.src, layout=cfg.layout, val_labels=cfg.val_labels, class_names=cfg.class_names, devkit_meta=cfg.devkit_meta
    )
    if cfg.overwrite:
        out.clear()  # only once the source is known to be good
    plans = _plan(dataset, cfg)
    found = Counter({s: 0 for s in SPLITS})
    for plan in plans:
        found[plan.split] += len(plan.rows)
    log.info("%s layout: %d classes, %s inputs", dataset.layout, len(dataset.wnids), dict(found))

    reused = {(p.split, p.index): part for p in plans if cfg.resume and (part := _reusable(out, p)) is not None}
    if reused:
        log.info("resuming: %d of %d shards are complete and intact", len(reused), len(plans))
    todo = [task for p in plans if (p.split, p.index) not in reused for task in p.chunks()]
    assembler = _ShardAssembler(out, {(p.split, p.index): p for p in plans}, cfg.size)
    try:
        # closing() stops the workers before the lock is released, wherever an exception or a signal hits
        with closing(run_chunks(todo, sum(len(t.items) for t in todo), cfg)) as results:
            for result in results:
                assembler.add(result)
    except BaseException:
        assembler.abort()
        raise
    built = {(p.split, p.index): p for p in assembler.parts}
    parts = [reused.get((p.split, p.index)) or built[p.split, p.index] for p in plans]
    _remove_strays(out, parts)
    return _publish(cfg, out, dataset, parts, dict(found), started)


def _publish(cfg, out: OutputDir, dataset, parts: list[ShardPart], found: dict, started: float) -> BuildReport:
    """Statistics, the skip report and, unless too much was skipped, the manifest, from every shard's part."""
    sums, skipped, conversions = PixelSums(cfg.size), [], Counter()
    for part in parts:
        skipped += part.skipped
        conversions.update(part.conversions)
        if part.sums is not None:
            sums.merge(part.sums)
    _write_stats(out, sums)
    out.write_bytes(SKIPPED_NAME, "".join(json.dumps(s, sort_keys=True) + "\n" for s in skipped).encode("utf-8"))
    splits = {s: SplitInfo(tuple(p.shard for p in parts if p.split == s and p.shard)) for s in SPLITS}
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        image_size=cfg.size,
        classes=tuple(dataset.classes()),
        splits=splits,
        config={**asdict(cfg), "layout": dataset.layout},
        found=found,
        skipped=tuple(skipped),
        conversions=dict(sorted(conversions.items())),
    )
    written = {s: splits[s].samples for s in SPLITS}
    assert sum(written.values()) + len(skipped) == sum(found.values()), "an input was neither written nor skipped"
    report = BuildReport(
        manifest=None,
        seconds=time.perf_counter() - started,
        found=found,
        written=written,
        skipped=skipped,
        conversions=manifest.conversions,
        bytes=sum(s.bytes for s in splits.values()),
    )
    if len(skipped) > cfg.max_skipped:
        raise TooManySkipped(
            f"{len(skipped)} inputs were skipped, more than --max-skipped {cfg.max_skipped}; see "
            f"{out.path(SKIPPED_NAME)}. No manifest was written.\n{report.summary()}"
        )
    out.write_bytes(MANIFEST_NAME, manifest.to_json().encode("utf-8"))  # last: marks the build finished
    out.fs.rm(out.path(PARTS_DIR), recursive=True)
    report.manifest = manifest
    return report
