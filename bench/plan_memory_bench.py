"""The driver's cost of discovering and planning a large source, on a synthetic listing (no files needed).

    python bench/plan_memory_bench.py                       # 1,000,000 inputs in 1,540 classes (ImageNet-21k-like)
    python bench/plan_memory_bench.py --inputs 14200000     # ImageNet-21k itself (minutes, ~1 GB)

A synthetic fsspec filesystem answers the folder listings of an ImageNet-layout tree with ImageNet-style file
names. Printed: bytes per input that discovery and the plan keep (tracemalloc), the peak, the seconds, and the
same listing held the way the build held it before (a SourceItem per input, a row tuple per input) as the
baseline; then the class folders listed one by one against in parallel, with a simulated object-storage round
trip per listing.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
import tracemalloc

import fsspec
from fsspec.spec import AbstractFileSystem

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from preprocess.build import BuildConfig  # noqa: E402
from preprocess.layout import discover  # noqa: E402
from preprocess.listing import SourceItem  # noqa: E402
from preprocess.plan import BuildPlan  # noqa: E402

IMAGENET_21K = 14_197_122


class SyntheticTree(AbstractFileSystem):
    """root/train/<wnid>/<wnid>_<i>.JPEG for `classes` classes of `per_class` files, listed on demand."""

    protocol = "synthetic"
    classes, per_class, latency = 1540, 650, 0.0

    def _wnid(self, c: int) -> str:
        return f"n{1440764 + 37 * c:08d}"

    def ls(self, path, detail=True, **kwargs):
        path = self._strip_protocol(path).rstrip("/")
        if self.latency:
            time.sleep(self.latency)
        parts = path.split("/")
        if path == "root":
            entries = [("root/train", "directory")]
        elif path == "root/train":
            entries = [(f"root/train/{self._wnid(c)}", "directory") for c in range(self.classes)]
        elif len(parts) == 3 and parts[1] == "train":
            entries = [(f"{path}/{parts[2]}_{10000 + i}.JPEG", "file") for i in range(self.per_class)]
        else:
            raise FileNotFoundError(path)
        if not detail:
            return [name for name, _ in entries]
        return [{"name": name, "type": kind, "size": 0} for name, kind in entries]

    def info(self, path, **kwargs):
        path = self._strip_protocol(path).rstrip("/")
        parts = path.split("/")
        if path in ("root", "root/train") or (len(parts) == 3 and parts[1] == "train"):
            return {"name": path, "type": "directory", "size": 0}
        raise FileNotFoundError(path)


def measure(fn):
    """(result, seconds, retained bytes, peak bytes) of fn(), under tracemalloc."""
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    gc.collect()
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return result, seconds, current - base, peak - base


def timed(fn) -> tuple[object, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def walk_plan(plan: BuildPlan) -> int:
    """Makes every shard as a build submits them (rows and digest), keeping none: what a resume check does."""
    return sum(len(shard.rows) for shard in plan.shards())


def baseline(dataset) -> list:
    """The listing and plan as the build held them before: a SourceItem and a row tuple per input."""
    items = sorted((SourceItem(i.path, i.relpath, i.wnid) for i in dataset.splits["train"]), key=lambda i: i.path)
    return [items, [(n, it.path, it.relpath, it.wnid, dataset.label[it.wnid]) for n, it in enumerate(items)]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=int, default=1_000_000)
    parser.add_argument("--per-class", type=int, default=650, help="ImageNet-21k averages 650")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="per folder listing, for the parallel test")
    parser.add_argument("--latency-folders", type=int, default=400)
    args = parser.parse_args()
    fsspec.register_implementation("synthetic", SyntheticTree, clobber=True)
    SyntheticTree.per_class = args.per_class
    SyntheticTree.classes = -(-args.inputs // args.per_class)
    n = SyntheticTree.classes * SyntheticTree.per_class
    cfg = BuildConfig(src="synthetic://root", shard_size=1000, workers=1, progress=False)
    print(f"synthetic listing: {n:,} inputs in {SyntheticTree.classes:,} class folders, {os.cpu_count()} cores")

    dataset, list_s = timed(lambda: discover("synthetic://root"))
    plan, plan_s = timed(lambda: BuildPlan(dataset, cfg))
    _, walk_s = timed(lambda: walk_plan(plan))
    del dataset, plan
    dataset, _, listing_bytes, listing_peak = measure(lambda: discover("synthetic://root"))
    plan, _, plan_bytes, plan_peak = measure(lambda: BuildPlan(dataset, cfg))
    _, _, _, walk_peak = measure(lambda: walk_plan(plan))
    old, _, old_bytes, old_peak = measure(lambda: baseline(dataset))
    del old
    per_input = (listing_bytes + plan_bytes) / n
    print()
    print(f"{'':34s} {'bytes/input':>12s} {'peak bytes/input':>17s} {'seconds':>8s}")
    print(f"{'discovery (compact listing)':34s} {listing_bytes / n:12.1f} {listing_peak / n:17.1f} {list_s:8.2f}")
    print(f"{'plan (one int per input)':34s} {plan_bytes / n:12.1f} {plan_peak / n:17.1f} {plan_s:8.2f}")
    print(f"{'every shard made once (rows, digest)':34s} {0:12.1f} {walk_peak / n:17.1f} {walk_s:8.2f}")
    print(f"{'baseline: SourceItems + row tuples':34s} {old_bytes / n:12.1f} {old_peak / n:17.1f}")
    print()
    scale = IMAGENET_21K / n
    peak = max(listing_peak, listing_bytes + plan_peak, listing_bytes + plan_bytes + walk_peak)
    gib = lambda b: b * scale / 2**30  # noqa: E731 (bytes measured here -> GiB for ImageNet-21k)
    print(f"kept by discovery + plan: {per_input:.1f} bytes per input, peak {peak / n:.1f} "
          f"({old_bytes / n / per_input:.1f}x less than the baseline)")  # fmt: skip
    print(f"ImageNet-21k ({IMAGENET_21K:,} inputs) at these rates: {gib(listing_bytes + plan_bytes):.2f} GiB kept, "
          f"{gib(peak):.2f} GiB peak (baseline {gib(old_bytes):.2f} GiB)")  # fmt: skip
    print(f"  seconds: discovery + plan {(list_s + plan_s) * scale:.0f}, making every shard {walk_s * scale:.0f} "
          "(spread over the build, as shards are submitted)")

    SyntheticTree.classes, SyntheticTree.per_class = args.latency_folders, 10
    SyntheticTree.latency = args.latency_ms / 1000
    import preprocess.layout as layout

    threads = layout.LISTING_THREADS
    _, parallel_s = timed(lambda: discover("synthetic://root"))
    layout.LISTING_THREADS = 1
    _, serial_s = timed(lambda: discover("synthetic://root"))
    layout.LISTING_THREADS = threads
    print()
    print(f"{args.latency_folders} class folders at {args.latency_ms:.0f} ms a listing: one by one {serial_s:.2f} s, "
          f"{threads} in parallel {parallel_s:.2f} s ({serial_s / parallel_s:.1f}x); "
          f"21,841 folders -> {serial_s * 21841 / args.latency_folders / 60:.1f} min vs "
          f"{parallel_s * 21841 / args.latency_folders:.0f} s")  # fmt: skip


if __name__ == "__main__":
    main()
