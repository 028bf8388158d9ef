"""Crash safety: a killed build resumes to the same bytes; damaged shards are rebuilt; one builder per output."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time

import pytest

from helpers import quick_build_config
from pipeline.contract import MANIFEST_NAME, load_manifest
from preprocess.build import BuildAlreadyFinished, build_shards
from preprocess.lock import BuildLocked
from preprocess.output import OutputExistsError


def snapshot(root) -> dict[str, bytes]:
    """Every published file of a build except the manifest (which records the flags it was run with)."""
    files = {}
    for directory, _, names in os.walk(root):
        for name in names:
            rel = os.path.relpath(os.path.join(directory, name), root)
            if rel != MANIFEST_NAME:
                files[rel] = open(os.path.join(directory, name), "rb").read()
    return files


@pytest.fixture(scope="module")
def clean_build(tiny_source, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean")
    build_shards(quick_build_config(tiny_source, out, shard_size=3))
    return out


@pytest.mark.parametrize("finished_shards", [1, 5])  # killed early, and midway (11 shards in all)
def test_sigkill_mid_build_then_resume_is_byte_identical(tiny_source, clean_build, tmp_path, finished_shards):
    out = tmp_path / "killed"
    cmd = [os.path.join(os.path.dirname(sys.executable), "preprocess"), "build-shards", "--src", str(tiny_source),
           "--out", str(out), "--shard-size", "3", "--workers", "1", "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / ".parts").is_dir() or len(os.listdir(out / ".parts")) < finished_shards:
        assert proc.poll() is None and time.time() < deadline, "the build ended before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / MANIFEST_NAME).exists()
    finals = [p for split in ("train", "val") for p in (out / split).glob(f"{split}-*.tar")]
    assert finals, "no shard was published before the kill"
    for shard in finals:  # under a final name there are only complete shards: 3 samples of 4 members
        with tarfile.open(shard) as tar:
            assert len(tar.getmembers()) == 12, shard

    with pytest.raises(OutputExistsError, match="--resume"):
        build_shards(quick_build_config(tiny_source, out, shard_size=3))
    report = build_shards(quick_build_config(tiny_source, out, shard_size=3, resume=True))
    assert report.written == {"train": 24, "val": 9}
    assert snapshot(out) == snapshot(clean_build)
    assert not (out / ".parts").exists() and not (out / ".lock").exists()
    with pytest.raises(BuildAlreadyFinished):
        build_shards(quick_build_config(tiny_source, out, shard_size=3, resume=True))


def test_resume_rebuilds_exactly_the_damaged_and_missing_shards(tiny_source, clean_build, tmp_path, monkeypatch):
    out = tmp_path / "damaged"
    import preprocess.build as build

    # A build that dies while publishing its manifest: every shard and part is on disk.
    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(build, "_publish", crash)
        with pytest.raises(KeyboardInterrupt):
            build_shards(quick_build_config(tiny_source, out, shard_size=3))
    flipped, missing = out / "train" / "train-000002.tar", out / "val" / "val-000001.tar"
    data = bytearray(flipped.read_bytes())
    data[700] ^= 0xFF
    flipped.write_bytes(bytes(data))
    os.remove(missing)
    stamps = {p: p.stat().st_mtime_ns for p in (out / "train").glob("*.tar")}

    rebuilt = []
    original = build.ShardPlan.chunks
    monkeypatch.setattr(build.ShardPlan, "chunks",
                        lambda self, **kw: rebuilt.append((self.split, self.index)) or original(self, **kw))  # fmt: skip
    build_shards(quick_build_config(tiny_source, out, shard_size=3, resume=True))
    assert sorted(rebuilt) == [("train", 2), ("val", 1)]
    assert snapshot(out) == snapshot(clean_build)
    unchanged = [p for p, t in stamps.items() if p != flipped and p.stat().st_mtime_ns == t]
    assert len(unchanged) == len(stamps) - 1


def test_resume_with_other_settings_rebuilds_the_affected_shards(tiny_source, tmp_path, monkeypatch):
    import preprocess.build as build

    out = tmp_path / "settings"
    with monkeypatch.context() as patch:
        patch.setattr(build, "_publish", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
        with pytest.raises(KeyboardInterrupt):
            build_shards(quick_build_config(tiny_source, out, shard_size=3, quality=90))
    build_shards(quick_build_config(tiny_source, out, shard_size=3, quality=70, resume=True))
    fresh = tmp_path / "fresh"
    build_shards(quick_build_config(tiny_source, fresh, shard_size=3, quality=70))
    assert snapshot(out) == snapshot(fresh)


def test_resume_after_the_pixels_change_rebuilds_every_shard(tiny_source, clean_build, tmp_path, monkeypatch):
    """Shards that an earlier version of the per-image code made are not mixed into a build by a newer one."""
    import preprocess.build as build
    import preprocess.plan as plan

    out = tmp_path / "older"
    with monkeypatch.context() as patch:
        patch.setattr(plan, "PIXELS_VERSION", plan.PIXELS_VERSION - 1)
        patch.setattr(build, "_publish", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
        with pytest.raises(KeyboardInterrupt):
            build_shards(quick_build_config(tiny_source, out, shard_size=3))
    rebuilt = []
    original = build.ShardPlan.chunks
    monkeypatch.setattr(build.ShardPlan, "chunks",
                        lambda self, **kw: rebuilt.append((self.split, self.index)) or original(self, **kw))  # fmt: skip
    build_shards(quick_build_config(tiny_source, out, shard_size=3, resume=True))
    assert len(rebuilt) == len(list(out.glob("*/*.tar"))) > 2
    assert snapshot(out) == snapshot(clean_build)


def test_a_second_builder_fails_fast_on_the_lock(tiny_source, tmp_path):
    out = tmp_path / "locked"
    out.mkdir()
    holder = {"host": socket.gethostname(), "pid": os.getppid(), "started": 0}  # a live process
    (out / ".lock").write_text(json.dumps(holder))
    started = time.time()
    with pytest.raises(BuildLocked, match="another build-shards is writing"):
        build_shards(quick_build_config(tiny_source, out))
    assert time.time() - started < 5 and json.loads((out / ".lock").read_text()) == holder


def test_a_stale_lock_of_a_dead_process_is_taken_over(tiny_source, tmp_path):
    out = tmp_path / "stale"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "started": 0}))
    build_shards(quick_build_config(tiny_source, out, limit=3))
    assert load_manifest(str(out)).splits["train"].samples == 3 and not (out / ".lock").exists()
