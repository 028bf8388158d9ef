"""The source trees and builds the benchmarks run on when no real data is given, made once into bench/out/."""

from __future__ import annotations

import os

from photos import make_photos, make_synthetic

from preprocess.build import BuildConfig, build_shards
from preprocess.sample import SampleConfig, make_sample

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")


def sample_build(train_per_class: int, val_per_class: int, shard_size: int) -> str:
    """Shards root of a `preprocess make-sample` tree (10 classes) with these sizes; built on first use."""
    root = os.path.join(OUT, f"sample-{train_per_class}-{val_per_class}-{shard_size}")
    shards = os.path.join(root, "shards")
    if not os.path.exists(os.path.join(shards, "manifest.json")):
        print(f"generating a sample build ({10 * train_per_class} train images) in {root} ...", flush=True)
        src = os.path.join(root, "src")
        make_sample(SampleConfig(out=src, classes=10, train_per_class=train_per_class, val_per_class=val_per_class,
                                 overwrite=True))  # fmt: skip
        build_shards(BuildConfig(src=src, out=shards, shard_size=shard_size, overwrite=True, progress=False))
    return shards


def benchmark_tree(count: int, synthetic: bool = False) -> str:
    """An imagenet tree of `count` images cut from real photographs (or generated, `synthetic`); made on first use."""
    kind, make = ("synthetic", make_synthetic) if synthetic else ("realphotos", make_photos)
    src = os.path.join(OUT, f"{kind}-{count}")
    if not os.path.isdir(src):
        print(f"making {count} {kind} benchmark images in {src} ...", flush=True)
        make(src + ".partial", count)
        os.rename(src + ".partial", src)  # an interrupted run leaves no tree that looks complete
    return src


def benchmark_build(count: int, shard_size: int, synthetic: bool = False) -> str:
    """Shards root of `benchmark_tree(count, synthetic)`, built by our build on first use."""
    src = benchmark_tree(count, synthetic)
    shards = f"{src}-shards-{shard_size}"
    if not os.path.exists(os.path.join(shards, "manifest.json")):
        print(f"building shards of {src} in {shards} ...", flush=True)
        build_shards(BuildConfig(src=src, out=shards, shard_size=shard_size, overwrite=True, progress=False))
    return shards
