"""Object storage for real: a local S3-compatible server (moto's server mode, as s3fs's own tests use)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tarfile

import fsspec
import pytest

from helpers import quick_build_config
from pipeline.contract import load_manifest, load_stats
from preprocess.build import ShardWriteError, build_shards
from preprocess.lock import BuildLocked
from preprocess.verify import verify_build


@pytest.fixture(scope="module")
def s3(tiny_source):
    """An S3 endpoint on 127.0.0.1 with a bucket holding the tiny source tree; yields the s3fs filesystem."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    saved = dict(os.environ)
    os.environ.update(
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=f"http://{host}:{port}",
    )
    fsspec.filesystem("s3").clear_instance_cache()
    fs = fsspec.filesystem("s3")
    fs.mkdir("bucket")
    fs.put(f"{tiny_source}/", "bucket/src/", recursive=True)
    yield fs
    fs.clear_instance_cache()
    os.environ.clear()
    os.environ.update(saved)
    server.stop()


def test_build_from_s3_to_s3_and_verify(s3, tiny_build):
    out = "s3://bucket/shards"
    report = build_shards(quick_build_config("s3://bucket/src", out, workers=2))
    assert report.written == {"train": 24, "val": 9}
    assert verify_build(out) == ([], 4)
    assert not [p for p in s3.find("bucket/shards") if ".tmp" in p or ".parts" in p or p.endswith(".lock")]
    local, _ = tiny_build  # the same bytes as a local build of the same tree
    for name in ("train/train-000000.tar", "val/val-000000.idx", "stats.json", "mean_image.npy"):
        assert s3.cat_file(f"bucket/shards/{name}") == (local / name).read_bytes(), name
    manifest = load_manifest(out)
    assert manifest.splits["train"].samples == 24 and load_stats(out).count == 24


def test_second_builder_on_s3_fails_on_the_conditional_create(s3):
    s3.pipe_file("bucket/locked/.lock", json.dumps({"host": "elsewhere", "pid": 1}).encode())
    with pytest.raises(BuildLocked, match="another build-shards"):
        build_shards(quick_build_config("s3://bucket/src", "s3://bucket/locked"))


def test_uploads_retry_transient_errors_and_report_persistent_ones(s3, monkeypatch):
    import preprocess.output as output

    monkeypatch.setattr(output, "BACKOFF_SECONDS", 0.01)
    real_put = s3.put_file  # s3fs makes its sync methods per instance; the build uses this cached instance
    failures = {"left": 2}

    def flaky_put(lpath, rpath, **kwargs):
        if failures["left"] > 0:
            failures["left"] -= 1
            raise ConnectionResetError("connection reset by peer")
        return real_put(lpath, rpath, **kwargs)

    monkeypatch.setattr(s3, "put_file", flaky_put)
    report = build_shards(quick_build_config("s3://bucket/src", "s3://bucket/flaky", limit=4))
    assert failures["left"] == 0 and report.written == {"train": 4, "val": 4}
    assert verify_build("s3://bucket/flaky")[0] == []

    monkeypatch.setattr(s3, "put_file", lambda *a, **k: (_ for _ in ()).throw(TimeoutError("timed out")))
    with pytest.raises(ShardWriteError, match=r"uploading bucket/broken/train/train-000000.idx failed 5 times"):
        build_shards(quick_build_config("s3://bucket/src", "s3://bucket/broken", limit=4))
    assert not s3.exists("bucket/broken/manifest.json") and not s3.exists("bucket/broken/train/train-000000.tar")


@pytest.fixture(scope="module")
def s3_shards(s3, tiny_build):
    """A finished build on S3 (the local tiny build, uploaded): what a training job reads."""
    local, _ = tiny_build
    s3.put(f"{local}/", "bucket/published/", recursive=True)
    return "s3://bucket/published"


def test_loader_reads_s3_shards_through_a_verified_local_cache(s3_shards, tmp_path):
    import torch

    from pipeline import ImageNetLoader

    cache = tmp_path / "cache"
    loader = ImageNetLoader(s3_shards, split="val", batch_size=4, device="cpu", crop_size=96, num_threads=1,
                            rank=0, world_size=1, cache_dir=str(cache))  # fmt: skip
    labels = torch.cat([labels for _, labels in loader]).tolist()
    expected = []
    for shard in load_manifest(s3_shards).splits["val"].shards:  # the labels the shards hold, in order
        with fsspec.open(f"{s3_shards}/val/{shard.name}", "rb") as f, tarfile.open(fileobj=f) as tar:
            expected += [int(tar.extractfile(m).read()) for m in tar if m.name.endswith(".cls")]
    assert labels == expected and len(labels) == 9
    cached = sorted(p.name for p in cache.rglob("*.tar"))
    assert cached == ["val-000000.tar"]  # downloaded once, next to its verified-hash marker
    assert not list(cache.rglob("*.part-*"))


def test_trainer_trains_a_few_steps_from_s3(s3_shards, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "ALEXNET_PIPELINE_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "trainer/main.py", "--data", s3_shards, "--out", str(out), "--device", "cpu",
           "--arch", "alexnet-bn", "--width", "0.25", "--crop-size", "96", "--batch-size", "4", "--workers", "1",
           "--epochs", "1", "--max-steps", "3", "--log-interval", "1"]  # fmt: skip
    done = subprocess.run(cmd, env=env, cwd=os.path.dirname(os.path.dirname(__file__)), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "step"] == [1, 2, 3]
    final = [r for r in rows if r["kind"] == "eval"]
    assert len(final) == 1 and final[0]["val_count"] == 9  # the whole val split, read from S3 too


def test_a_finished_build_on_s3_is_never_overwritten(s3_shards, s3):
    """W4 on object storage: without --overwrite nothing is written over the finished build's objects."""
    from preprocess.build import BuildAlreadyFinished
    from preprocess.output import OutputExistsError

    before = {p: s3.info(p)["ETag"] for p in s3.find("bucket/published")}
    with pytest.raises(OutputExistsError, match="already holds a build"):
        build_shards(quick_build_config("s3://bucket/src", s3_shards))
    with pytest.raises(BuildAlreadyFinished, match="finished build"):
        build_shards(quick_build_config("s3://bucket/src", s3_shards, resume=True))
    assert {p: s3.info(p)["ETag"] for p in s3.find("bucket/published")} == before
