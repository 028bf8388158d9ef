"""build-shards end to end: samples, shuffling, accounting, reproducibility and crash safety."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from helpers import bomb_png, jpeg_bytes, quick_build_config, tiny_sample_config, write
from pipeline.contract import (
    MANIFEST_NAME,
    SKIPPED_NAME,
    decode_label,
    load_manifest,
    load_stats,
)
from preprocess.build import ShardWriteError, TooManySkipped, build_shards
from preprocess.output import OutputExistsError
from preprocess.sample import make_sample


def read_samples(shard_path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(shard_path) as tar:
        for member in tar:
            key, _, ext = member.name.partition(".")
            samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


def all_samples(out, split) -> dict[str, dict[str, bytes]]:
    merged = {}
    for shard in load_manifest(str(out)).splits[split].shards:
        merged.update(read_samples(out / split / shard.name))
    return merged


def test_every_sample_is_256_rgb_with_consistent_labels(tiny_build):
    out, report = tiny_build
    manifest = load_manifest(str(out))
    assert report.found == {"train": 24, "val": 9} and report.written == report.found and not report.skipped
    assert [c["wnid"] for c in manifest.classes] == sorted(c["wnid"] for c in manifest.classes)
    for split in ("train", "val"):
        samples = all_samples(out, split)
        assert len(samples) == manifest.splits[split].samples == report.found[split]
        for key, members in samples.items():
            assert set(members) == {"jpg", "cls", "json", "lbl"} and "." not in key
            meta = json.loads(members["json"])
            label = int(members["cls"].decode("ascii"))
            assert label == decode_label(members["lbl"]) == meta["label"]
            assert manifest.classes[label]["wnid"] == meta["wnid"] == meta["src"].split("/")[-2]
            with Image.open(io.BytesIO(members["jpg"])) as img:
                assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (256, 256))


def test_quirks_are_counted(tiny_build):
    _, report = tiny_build
    # make-sample plants, in train: a CMYK JPEG, a PNG and a palette PNG named .JPEG; a CMYK JPEG in val.
    assert report.conversions["cmyk"] == 2 and report.conversions["format_mismatch"] == 2
    assert report.conversions["palette"] == 1 and report.conversions["grayscale"] >= 3


def test_shards_hold_a_global_shuffle_of_the_split(tiny_build):
    out, _ = tiny_build
    manifest = load_manifest(str(out))
    assert [s.samples for s in manifest.splits["train"].shards] == [10, 10, 4]
    keys = list(all_samples(out, "train"))
    assert keys == [f"{i:08d}" for i in range(24)]
    labels = [json.loads(m["json"])["label"] for m in all_samples(out, "train").values()]
    assert labels != sorted(labels)  # not written class by class
    assert all(len(set(labels[i : i + 10])) > 1 for i in range(0, 20, 10))  # every shard mixes classes


def test_index_files_are_what_dali_wds2idx_writes(tiny_build, tmp_path):
    import shutil
    import subprocess

    out, _ = tiny_build
    shard = out / "train" / "train-000000.tar"
    wds2idx = shutil.which("wds2idx") or os.path.join(os.path.dirname(os.sys.executable), "wds2idx")
    subprocess.run([wds2idx, str(shard), str(tmp_path / "ref.idx")], check=True, capture_output=True)
    assert (tmp_path / "ref.idx").read_bytes() == (out / "train" / "train-000000.idx").read_bytes()


def test_no_temporary_files_remain(tiny_build):
    out, _ = tiny_build
    leftovers = [f for _, _, files in os.walk(out) for f in files if f.startswith(".tmp")]
    assert leftovers == []


def test_manifest_records_shards_with_sizes_and_hashes(tiny_build):
    out, report = tiny_build
    doc = json.loads((out / MANIFEST_NAME).read_text())
    assert doc["totals"] == {"found": 33, "written": 33, "skipped": 0, "bytes": report.bytes}
    assert doc["config"]["seed"] == 0 and doc["config"]["size"] == 256 and doc["format_version"] == 1
    for split in ("train", "val"):
        for shard in doc["splits"][split]["shards"]:
            data = (out / split / shard["name"]).read_bytes()
            assert len(data) == shard["bytes"] and hashlib.sha256(data).hexdigest() == shard["sha256"]


def test_same_seed_gives_byte_identical_shards_and_another_seed_does_not(tiny_source, tmp_path):
    builds = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        build_shards(quick_build_config(tiny_source, tmp_path / name, seed=seed, workers=2 if name == "b" else 1))
        builds[name] = {
            os.path.relpath(os.path.join(d, f), tmp_path / name): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(tmp_path / name)
            for f in files
            if f != MANIFEST_NAME  # the manifest records the worker count
        }
    assert builds["a"] == builds["b"]
    assert builds["a"]["train/train-000000.tar"] != builds["c"]["train/train-000000.tar"]


def test_bad_inputs_are_skipped_listed_and_accounted(tiny_source, tmp_path):
    src = tmp_path / "src"
    make_sample(tiny_sample_config(src, large_images=0, train_per_class=4, val_per_class=2))
    good = jpeg_bytes(np.full((300, 300, 3), 90, np.uint8))
    bad = {
        "train/n90000000/empty.JPEG": (b"", "empty"),
        "train/n90000000/trunc.JPEG": (good[: len(good) // 2], "truncated"),
        "train/n90000001/noise.JPEG": (os.urandom(3000), "undecodable"),
        "train/n90000001/readme.txt": (b"not an image", "undecodable"),
        "val/n90000002/bomb.JPEG": (bomb_png(20000), "too_large"),
    }
    for rel, (data, _) in bad.items():
        write(src / rel, data)
    report = build_shards(quick_build_config(src, tmp_path / "out"))
    assert sum(report.found.values()) == 12 + 6 + len(bad)
    assert sum(report.written.values()) + len(report.skipped) == sum(report.found.values())
    assert {s["path"]: s["reason"] for s in report.skipped} == {rel: reason for rel, (_, reason) in bad.items()}
    manifest = load_manifest(str(tmp_path / "out"))
    assert len(manifest.skipped) == len(bad)
    rows = [json.loads(line) for line in (tmp_path / "out" / SKIPPED_NAME).read_text().splitlines()]
    assert Counter(r["reason"] for r in rows) == Counter(reason for _, reason in bad.values())
    assert "skipped: empty 1, too_large 1, truncated 1, undecodable 2" in report.summary()


def test_too_many_skips_fail_after_the_report_and_publish_no_manifest(tmp_path):
    src = tmp_path / "src"
    make_sample(tiny_sample_config(src, large_images=0, train_per_class=2, val_per_class=1))
    for i in range(3):
        write(src / f"train/n90000000/bad{i}.JPEG", b"")
    with pytest.raises(TooManySkipped, match="3 inputs were skipped, more than --max-skipped 2"):
        build_shards(quick_build_config(src, tmp_path / "out", max_skipped=2))
    assert len((tmp_path / "out" / SKIPPED_NAME).read_text().splitlines()) == 3
    assert not (tmp_path / "out" / MANIFEST_NAME).exists()


def test_existing_build_is_not_overwritten_without_the_flag(tiny_source, tmp_path):
    out = tmp_path / "out"
    build_shards(quick_build_config(tiny_source, out, limit=5))
    before = (out / MANIFEST_NAME).read_bytes()
    with pytest.raises(OutputExistsError, match="already holds a build"):
        build_shards(quick_build_config(tiny_source, out, limit=5, seed=3))
    assert (out / MANIFEST_NAME).read_bytes() == before
    build_shards(quick_build_config(tiny_source, out, limit=5, seed=3, overwrite=True))
    assert json.loads((out / MANIFEST_NAME).read_text())["config"]["seed"] == 3


def test_a_crash_mid_shard_leaves_no_shard_and_no_manifest(tiny_source, tmp_path, monkeypatch):
    """The encoder fails on the 15th train sample: shard 0 (10 samples) is published, shard 1 is not."""
    import preprocess.tarshard as tarshard

    calls = {"n": 0}
    original = tarshard.ShardWriter.write

    def failing_write(self, key, members):
        calls["n"] += 1
        if calls["n"] == 15:
            raise OSError(28, "No space left on device")
        return original(self, key, members)

    monkeypatch.setattr(tarshard.ShardWriter, "write", failing_write)
    out = tmp_path / "out"
    with pytest.raises(ShardWriteError, match=r"train/train-000001\.tar failed: .*No space left") as raised:
        build_shards(quick_build_config(tiny_source, out))
    assert isinstance(raised.value.__cause__, OSError) and raised.value.__cause__.errno == 28
    files = sorted(os.listdir(out / "train"))  # no temporary left beside the one finished shard
    assert files == ["train-000000.idx", "train-000000.tar"]
    assert len(read_samples(out / "train" / "train-000000.tar")) == 10
    assert not (out / MANIFEST_NAME).exists()


def test_a_write_error_exits_non_zero_naming_the_shard(tiny_source, tmp_path, monkeypatch):
    """What a user sees from the command line when the disk fills up: exit 1, the shard's name, no manifest."""
    from click.testing import CliRunner

    import preprocess.tarshard as tarshard
    from preprocess.cli import main

    def full_disk(self, key, members):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tarshard.ShardWriter, "write", full_disk)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["build-shards", "--src", str(tiny_source), "--out", str(out), "--workers", "1",
                                       "--shard-size", "10", "--no-progress"])  # fmt: skip
    assert result.exit_code == 1
    assert "train-000000.tar failed" in result.output and "No space left" in result.output
    assert os.listdir(out / "train") == [] and not (out / MANIFEST_NAME).exists()


def test_limit_builds_a_smoke_subset(tiny_source, tmp_path):
    report = build_shards(quick_build_config(tiny_source, tmp_path / "out", limit=4))
    assert report.written == {"train": 4, "val": 4}
    assert load_stats(str(tmp_path / "out")).count == 4


def test_fsspec_destination_and_source_urls(tiny_source):
    """Any fsspec URL works on both sides: here a file:// source and an in-memory destination."""
    import fsspec

    from preprocess.verify import verify_build

    out = "memory://builds/tiny"
    report = build_shards(quick_build_config(f"file://{tiny_source}", out, limit=12))
    fs = fsspec.filesystem("memory")
    assert fs.exists("/builds/tiny/manifest.json") and report.written == {"train": 12, "val": 9}
    assert not [p for p in fs.find("/builds/tiny") if ".tmp" in p]
    assert verify_build(out) == ([], 3)
    fs.rm("/builds/tiny", recursive=True)


def test_odd_file_names_and_links_outside_the_source(tmp_path):
    """Dots, spaces and non-ASCII in names are fine (keys are positions); a link out of the tree is skipped."""
    src = tmp_path / "src"
    make_sample(tiny_sample_config(src, classes=2, large_images=0, train_per_class=2, val_per_class=1))
    photo = jpeg_bytes(np.full((300, 280, 3), 120, np.uint8))
    write(src / "train/n90000000/a.b.c name ü.JPEG", photo)
    write(tmp_path / "outside.JPEG", photo)
    os.symlink(tmp_path / "outside.JPEG", src / "train/n90000001/link.JPEG")
    report = build_shards(quick_build_config(src, tmp_path / "out"))
    assert [(s["path"], s["reason"]) for s in report.skipped] == [("train/n90000001/link.JPEG", "outside_source")]
    sources = {json.loads(m["json"])["src"]: key for key, m in all_samples(tmp_path / "out", "train").items()}
    assert "train/n90000000/a.b.c name ü.JPEG" in sources and "." not in sources["train/n90000000/a.b.c name ü.JPEG"]


def test_follow_links_reads_a_symlink_farm(tmp_path):
    src = tmp_path / "src"
    make_sample(tiny_sample_config(tmp_path / "real", classes=2, large_images=0, train_per_class=2, val_per_class=1))
    for path in (tmp_path / "real").rglob("*.JPEG"):
        link = src / path.relative_to(tmp_path / "real")
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(path)
    report = build_shards(quick_build_config(src, tmp_path / "out", follow_links=True))
    assert report.written == {"train": 4, "val": 2} and not report.skipped


def test_the_last_shard_is_cut_into_shrinking_pieces():
    """Guided scheduling at the end of a build: every row once, in order, pieces never above CHUNK_SIZE, shrinking
    to single images, and only the final piece closes the shard."""
    from preprocess.plan import CHUNK_SIZE, ShardPlan

    rows = tuple((i, f"p{i}", f"r{i}", "n0", 0) for i in range(600))
    shard = ShardPlan("train", 0, rows, "digest")
    plain, guided = shard.chunks(), shard.chunks(finishing_workers=2)
    assert [len(c.items) for c in plain] == [CHUNK_SIZE] * 18 + [600 - 18 * CHUNK_SIZE]
    sizes = [len(c.items) for c in guided]
    assert sizes[0] == CHUNK_SIZE and sizes[-1] == 1 and sizes == sorted(sizes, reverse=True)
    assert [row for c in guided for row in c.items] == list(rows)
    assert [c.last_in_shard for c in guided] == [False] * (len(guided) - 1) + [True]
