"""`build_shards(cfg)`: source tree -> shuffled WebDataset shards, DALI indexes, statistics and a manifest.

The flow: list the inputs, plan the shards (`preprocess.plan`), take the destination lock, keep the shards a
killed build finished (`--resume`), and hand the rest to an engine: `local` (a pool of worker processes whose
encoded samples this process writes in order) or `ray` (one Ray task per shard, on a cluster, see
`preprocess.ray_engine`). Each engine yields every finished shard's part record; statistics, the skip report
and the manifest are published from those parts by the same code, so the engines give the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import posixpath
import time
from collections import Counter, deque
from collections.abc import Iterator
from contextlib import closing
from dataclasses import asdict, dataclass, field

import numpy as np
from tqdm import tqdm

from pipeline.contract import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    MEAN_IMAGE_NAME,
    SKIPPED_NAME,
    SPLITS,
    STATS_NAME,
    Manifest,
    SplitInfo,
)
from preprocess.assemble import ShardAssembler, ShardWriteError
from preprocess.image import DEFAULT_MAX_PIXELS
from preprocess.layout import discover
from preprocess.lock import BuildLock
from preprocess.output import OutputDir, OutputExistsError
from preprocess.parallel import run_chunks
from preprocess.parts import PARTS_DIR, PartTotals, ShardPart
from preprocess.plan import BuildPlan, ShardPlan
from preprocess.stats import PixelSums, finalize

__all__ = ["BuildConfig", "BuildReport", "BuildAlreadyFinished", "TooManySkipped", "ShardWriteError", "build_shards"]

log = logging.getLogger(__name__)

ENGINES = ("local", "ray")
RUN_ONLY = ("engine", "ray_address")  # how a build ran, not what it built: kept out of the manifest


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
    engine: str = "local"
    ray_address: str = "auto"

    def __post_init__(self):
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {self.engine!r}")
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


class BuildAlreadyFinished(RuntimeError):
    """`--resume` found a build whose manifest is already published: there is nothing to finish."""


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


def _remove_strays(out: OutputDir, keep: set[str]) -> None:
    """Staging files of killed writers (a killed run, a lost node's attempt), and shards no longer in the plan."""
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
    plan = BuildPlan(dataset, cfg)
    found = plan.found
    log.info("%s layout: %d classes, %s inputs", dataset.layout, len(dataset.wnids), found)
    totals = PartTotals(cfg.size)
    with tqdm(total=sum(found.values()), unit="img", desc="build-shards", disable=not cfg.progress, smoothing=0.1) as bar:
        todo = _not_reused(plan, out, totals, bar) if cfg.resume else plan.shards()
        if cfg.engine == "ray":
            from preprocess.ray_engine import run_shards
        else:
            run_shards = _run_local
        # closing() stops the workers before the lock is released, wherever an exception or a signal hits
        with closing(run_shards(todo, cfg, out, bar)) as parts:
            for part in parts:
                totals.add(part)
    if len(totals) != plan.shard_count():
        raise RuntimeError(f"{len(totals)} of {plan.shard_count()} shards finished, yet the engine stopped")
    _remove_strays(out, totals.kept_files())
    return _publish(cfg, out, dataset, totals, found, started)


def _not_reused(plan: BuildPlan, out: OutputDir, totals: PartTotals, bar) -> Iterator[ShardPlan]:
    """The shards a killed build did not finish; the parts of those it did go straight to `totals`."""
    reused = 0
    for shard in plan.shards():
        part = _reusable(out, shard)
        if part is None:
            yield shard
        else:
            totals.add(part)
            bar.update(len(shard.rows))
            reused += 1
    log.info("resumed: %d of %d shards were complete and intact", reused, plan.shard_count())


def _run_local(shards: Iterator[ShardPlan], cfg: BuildConfig, out: OutputDir, bar) -> Iterator[ShardPart]:
    """The local engine: chunks of the shards on a pool of worker processes, shards written here in order."""
    digests, finished = {}, deque()
    assembler = ShardAssembler(out, digests, cfg.size, finished.append)

    def chunks():
        shard = next(shards, None)
        while shard is not None:
            following = next(shards, None)  # one shard ahead, to know which is the last
            digests[shard.split, shard.index] = shard.digest
            yield from shard.chunks(finishing_workers=cfg.workers if following is None else 0)
            shard = following

    try:
        with closing(run_chunks(chunks(), cfg, bar.update)) as results:
            for result in results:
                assembler.add(result)
                while finished:
                    part = finished.popleft()
                    del digests[part.split, part.index]
                    yield part
    except BaseException:
        assembler.abort()
        raise


def _publish(cfg, out: OutputDir, dataset, totals: PartTotals, found: dict, started: float) -> BuildReport:
    """Statistics, the skip report and, unless too much was skipped, the manifest, from every shard's part."""
    skipped = totals.skipped()
    _write_stats(out, totals.sums)
    out.write_bytes(SKIPPED_NAME, "".join(json.dumps(s, sort_keys=True) + "\n" for s in skipped).encode("utf-8"))
    splits = {s: SplitInfo(totals.shards(s)) for s in SPLITS}
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        image_size=cfg.size,
        classes=tuple(dataset.classes()),
        splits=splits,
        config={**{k: v for k, v in asdict(cfg).items() if k not in RUN_ONLY}, "layout": dataset.layout},
        found=found,
        skipped=tuple(skipped),
        conversions=totals.conversions(),
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
