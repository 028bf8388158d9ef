"""Object storage for real: a local S3-compatible server (moto's server mode, as s3fs's own tests use)."""

from __future__ import annotations

import json
import logging
import os

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
