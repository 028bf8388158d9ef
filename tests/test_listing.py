"""The compact listing and plan: the same items and order as a list of SourceItems, at a fraction of the memory."""

from __future__ import annotations

import gc
import os
import sys
import tracemalloc

import fsspec
import numpy as np
import pytest

from helpers import jpeg_bytes, quick_build_config, write
from preprocess.layout import discover
from preprocess.listing import Listing, SourceItem
from preprocess.plan import BuildPlan

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
from plan_memory_bench import SyntheticTree  # noqa: E402


def test_a_listing_is_a_sequence_of_source_items(tmp_path):
    listing = Listing("/src")
    listing.add_folder("/src/train/cat", ["a.JPEG", "b ü.JPEG"], "cat")
    listing.add_folder("/src/val", ["x.JPEG", "y.JPEG"], ["dog", "cat"])
    items = [
        SourceItem("/src/train/cat/a.JPEG", "train/cat/a.JPEG", "cat"),
        SourceItem("/src/train/cat/b ü.JPEG", "train/cat/b ü.JPEG", "cat"),
        SourceItem("/src/val/x.JPEG", "val/x.JPEG", "dog"),
        SourceItem("/src/val/y.JPEG", "val/y.JPEG", "cat"),
    ]
    assert listing == items and list(listing) == items and listing[1:3] == items[1:3] and listing[-1] == items[-1]
    assert len(listing) == 4 and listing.wnids() == {"cat", "dog"}
    with pytest.raises(IndexError):
        listing[4]
    with pytest.raises(ValueError, match="2 names but 1 classes"):
        listing.add_folder("/src/val2", ["p", "q"], ["cat"])


def test_train_inputs_keep_path_order_when_a_folder_name_prefixes_another(tmp_path):
    """'cat/...' sorts after 'cat-a/...' by path, though 'cat' < 'cat-a' by name: the order of the old listing."""
    photo = jpeg_bytes(np.full((40, 40, 3), 90, np.uint8))
    for rel in ("train/cat/1.JPEG", "train/cat-a/2.JPEG", "train/cat.b/3.JPEG", "train/cat/0.JPEG"):
        write(tmp_path / rel, photo)
    items = discover(str(tmp_path)).splits["train"]
    assert [i.path for i in items] == sorted(i.path for i in items)
    assert [i.relpath for i in items] == ["train/cat-a/2.JPEG", "train/cat.b/3.JPEG", "train/cat/0.JPEG", "train/cat/1.JPEG"]


def test_discovery_and_plan_hold_tens_of_bytes_per_input_not_hundreds():
    """The driver of a 14M-input build must plan in under 2 GiB: about 150 bytes an input at most."""
    fsspec.register_implementation("synthetic", SyntheticTree, clobber=True)
    SyntheticTree.classes, SyntheticTree.per_class, SyntheticTree.latency = 120, 500, 0.0
    inputs = 120 * 500
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        dataset = discover("synthetic://root")
        plan = BuildPlan(dataset, quick_build_config("synthetic://root", "unused", shard_size=1000))
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
        shards = plan.shards()
        first = next(shards)
        assert first.rows[0][2].startswith("train/n") and len(first.rows) == 1000
        assert sum(1 for _ in shards) + 1 == plan.shard_count() == 60
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert len(dataset.splits["train"]) == inputs
    assert kept / inputs < 60, f"{kept / inputs:.0f} bytes per input kept"
    assert peak / inputs < 150, f"{peak / inputs:.0f} bytes per input at the peak"
