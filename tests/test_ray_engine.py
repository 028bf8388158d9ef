"""`build-shards --engine ray` on a real two-node Ray cluster on loopback: same bytes, faults, stops, resume, S3.

The cluster (`ray.cluster_utils.Cluster`: a head and a second node, one CPU each, separate raylets and object
stores) runs for the whole module. Ray must stay on 127.0.0.1: the environment below is set before Ray is
imported, no dashboard starts, and the fixture fails unless every node reports 127.0.0.1. Token auth is on
with a token from the environment, so no ~/.ray/auth_token is written.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import fsspec
import pytest
from test_interrupt import children, started, wait_for_parts
from test_resume import snapshot

from helpers import quick_build_config, tiny_sample_config, write
from pipeline.contract import MANIFEST_NAME
from preprocess.build import build_shards
from preprocess.sample import make_sample, sample_wnid

BUCKET = "ray-engine"  # moto keeps buckets per process, across servers: one of our own, removed at the end
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}
SHARD = 16  # images per shard: 12 shards of the source below, each a fraction of a second


@pytest.fixture(scope="module")
def s3(tiny_source):
    """An S3 endpoint on 127.0.0.1 (moto's server, as in test_s3) with the tiny source tree in our bucket."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    saved = dict(os.environ)
    os.environ.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=f"http://{host}:{port}")  # fmt: skip
    fsspec.filesystem("s3").clear_instance_cache()
    fs = fsspec.filesystem("s3")
    fs.mkdir(BUCKET)
    fs.put(f"{tiny_source}/", f"{BUCKET}/src/", recursive=True)
    try:
        yield fs
    finally:
        fs.rm(BUCKET, recursive=True)
        if fs.exists(BUCKET):
            fs.rmdir(BUCKET)
        fs.clear_instance_cache()
        os.environ.clear()
        os.environ.update(saved)
        server.stop()


@pytest.fixture(scope="module")
def cluster(s3):  # after the S3 server, so every node inherits its endpoint and credentials
    token_file = Path.home() / ".ray" / "auth_token"
    had_token = token_file.exists()
    saved = dict(os.environ)
    os.environ.update(RAY_ENV, RAY_AUTH_TOKEN=secrets.token_hex(16))
    import ray
    from ray.cluster_utils import Cluster

    head_args = {"num_cpus": 1, "include_dashboard": False, "object_store_memory": 100 * 2**20}
    cluster = Cluster(initialize_head=True, head_node_args=head_args)
    try:
        cluster.add_node(num_cpus=1, object_store_memory=100 * 2**20)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level="warning")
        nodes = [n for n in ray.nodes() if n["Alive"]]
        assert len(nodes) == 2 and {n["NodeManagerAddress"] for n in nodes} == {"127.0.0.1"}, nodes
        assert_listening_on_loopback_only()
        yield cluster
        assert_listening_on_loopback_only()  # the workers the tests started too
    finally:
        ray.shutdown()
        cluster.shutdown()
        os.environ.clear()
        os.environ.update(saved)
        assert had_token or not token_file.exists(), "the tests left a Ray auth token in ~/.ray"


def assert_listening_on_loopback_only(root: int | None = None) -> None:
    """Every TCP socket that a process started by `root` (Ray's nodes and workers) listens on is on 127.0.0.0/8."""
    listening = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            cols = row.split()
            if cols[3] == "0A":  # LISTEN
                listening[cols[9]] = cols[1].split(":")[0]  # inode -> local address, hex
    loopback = lambda a: a.endswith("7F") and (len(a) == 8 or a.startswith("0000000000000000FFFF0000"))  # noqa: E731
    found = []
    for pid in children(root or os.getpid()):
        try:
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:  # gone meanwhile
            continue
        found += [listening[link[8:-1]] for link in links if link.startswith("socket:[") and link[8:-1] in listening]
    assert found and all(loopback(a) for a in found), found


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray_source")
    make_sample(tiny_sample_config(root, classes=4, train_per_class=40, val_per_class=8, large_images=1))
    write(root / "train" / sample_wnid(1) / "empty.JPEG", b"")  # skips, so skipped.jsonl is compared too
    write(root / "val" / sample_wnid(2) / "noise.JPEG", bytes(range(256)) * 8)
    return root


@pytest.fixture(scope="module")
def reference(source, tmp_path_factory):
    """What the local engine builds from `source`: every file, and the manifest without its destination."""
    out = tmp_path_factory.mktemp("local")
    build_shards(quick_build_config(source, out, shard_size=SHARD, workers=2))
    return out


def ray_config(src, out, **overrides):
    return quick_build_config(src, out, shard_size=SHARD, workers=2, engine="ray", **overrides)


def same_build(out, reference) -> None:
    assert snapshot(out) == snapshot(reference)
    manifests = [json.loads((root / MANIFEST_NAME).read_text()) for root in (out, reference)]
    for manifest in manifests:
        del manifest["config"]["out"]
        manifest["config"].pop("resume")
    assert manifests[0] == manifests[1]


def staging_files(root) -> list[str]:
    return [f for _, _, files in os.walk(root) for f in files if f.startswith(".tmp")]


def cli(*args) -> list[str]:
    return [os.path.join(os.path.dirname(sys.executable), "preprocess"), "build-shards", "--no-progress", *args]


def test_two_node_build_is_byte_identical_to_the_local_engine(cluster, source, reference, tmp_path):
    report = build_shards(ray_config(source, tmp_path / "out"))
    assert report.found == {"train": 161, "val": 33} and report.written == {"train": 160, "val": 32}
    assert sorted(s["reason"] for s in report.skipped) == ["empty", "undecodable"]
    same_build(tmp_path / "out", reference)
    assert not staging_files(tmp_path / "out") and not (tmp_path / "out" / ".parts").exists()


def test_a_node_lost_mid_build_is_retried_and_the_build_is_identical(cluster, source, reference, tmp_path, capfd):
    out, outcome = tmp_path / "out", {}
    build = threading.Thread(target=lambda: outcome.update(report=build_shards(ray_config(source, out))))
    build.start()
    deadline = time.time() + 120
    while not (out / ".parts").is_dir() or len(os.listdir(out / ".parts")) < 2:
        assert build.is_alive() and time.time() < deadline, "the build ended before a node could be removed"
        time.sleep(0.01)
    second = next(iter(cluster.worker_nodes))
    cluster.remove_node(second, allow_graceful=False)
    build.join(timeout=300)
    try:
        assert "report" in outcome, "the build failed after losing a node"
        same_build(out, reference)
        assert not staging_files(out)
        deadline, said = time.time() + 15, ""  # Ray's own word that the lost node's task was retried (logged async)
        while "so the task will be retried" not in said and time.time() < deadline:
            said += "".join(capfd.readouterr())
            time.sleep(0.2)
        assert "so the task will be retried" in said, said[-2000:]
    finally:
        cluster.add_node(num_cpus=1, object_store_memory=100 * 2**20)  # two nodes again for the next tests
        cluster.wait_for_nodes()


@pytest.mark.parametrize("resume_engine", ["local", "ray"])
def test_driver_killed_then_resumed_with_either_engine(cluster, source, reference, tmp_path, resume_engine):
    out = tmp_path / "out"
    cmd = cli("--src", str(source), "--out", str(out), "--shard-size", str(SHARD), "--workers", "2",
              "--engine", "ray", "--ray-address", cluster.address)  # fmt: skip
    with started(cmd) as proc:
        wait_for_parts(proc, out, 2)
        proc.kill()
        proc.communicate()
    assert not (out / MANIFEST_NAME).exists()
    for shard in out.glob("*/*.tar"):  # only whole shards under final names
        with tarfile.open(shard) as tar:
            assert len(tar.getmembers()) % 4 == 0 and tar.getmembers()
    engine = {"engine": "ray"} if resume_engine == "ray" else {}
    build_shards(quick_build_config(source, out, shard_size=SHARD, workers=2, resume=True, **engine))
    same_build(out, reference)
    assert not staging_files(out) and not (out / ".lock").exists()


def test_sigterm_stops_the_ray_engine_cleanly(cluster, source, tmp_path):
    import ray

    out = tmp_path / "out"
    cmd = cli("--src", str(source), "--out", str(out), "--shard-size", str(SHARD), "--engine", "ray",
              "--ray-address", cluster.address)  # fmt: skip
    with started(cmd) as proc:
        wait_for_parts(proc, out, 1)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    lines = [line for line in stderr.splitlines() if not line.startswith("INFO ")]
    assert lines == ["build-shards stopped by SIGTERM; finished shards are kept: "
                     "run the same command with --resume to finish the build"], stderr  # fmt: skip
    assert not (out / ".lock").exists() and not (out / MANIFEST_NAME).exists()
    deadline = time.time() + 30  # every task cancelled: the cluster's CPUs are all free again
    while ray.available_resources().get("CPU", 0) < 2:
        assert time.time() < deadline, ray.available_resources()
        time.sleep(0.2)
    parts = sorted(os.listdir(out / ".parts"))
    time.sleep(2)
    assert sorted(os.listdir(out / ".parts")) == parts, "a task went on writing after the driver stopped"


def test_s3_source_and_destination(cluster, s3, tiny_build):
    report = build_shards(quick_build_config(f"s3://{BUCKET}/src", f"s3://{BUCKET}/shards", engine="ray"))
    local, _ = tiny_build
    assert report.written == {"train": 24, "val": 9}
    for path in snapshot(local):
        assert s3.cat_file(f"{BUCKET}/shards/{path}") == (local / path).read_bytes(), path
    assert not [p for p in s3.find(f"{BUCKET}/shards") if ".tmp" in p or ".parts" in p or p.endswith(".lock")]


def test_two_attempts_of_one_shard_at_once_publish_it_whole(cluster, source, reference, tmp_path):
    """A node cut off but still running, and the retry of its task: both write the same shard at the same time."""
    import ray

    from preprocess.layout import discover
    from preprocess.plan import BuildPlan
    from preprocess.ray_engine import AttemptCounter, build_shard

    cfg = ray_config(source, tmp_path / "out")
    plan = next(iter(BuildPlan(discover(str(source)), cfg).shards()))
    counter = ray.remote(AttemptCounter).options(num_cpus=0).remote()
    task = ray.remote(build_shard).options(num_cpus=1, max_retries=0)
    parts = ray.get([task.remote(plan, cfg, counter), task.remote(plan, cfg, counter)])
    deadline = time.time() + 30  # the attempts report their start asynchronously
    while (counts := ray.get(counter.counts.remote())) != (1, 2):
        assert time.time() < deadline, counts
        time.sleep(0.1)
    assert parts[0].shard == parts[1].shard and parts[0].skipped == parts[1].skipped
    assert (parts[0].sums.image_sum == parts[1].sums.image_sum).all() and parts[0].sums.count == len(plan.rows)
    name = plan.name
    assert (tmp_path / "out" / name).read_bytes() == (reference / name).read_bytes()
    assert not staging_files(tmp_path / "out")


def test_a_source_lost_mid_build_fails_naming_the_shard_without_retrying(cluster, source, tmp_path):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(source, src)
    out = tmp_path / "out"
    cmd = cli("--src", str(src), "--out", str(out), "--shard-size", str(SHARD), "--engine", "ray",
              "--ray-address", cluster.address)  # fmt: skip
    with started(cmd) as proc:
        wait_for_parts(proc, out, 1)
        src.rename(tmp_path / "unmounted")  # as if --src were missing on the nodes that run the next tasks
        _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stderr
    assert "Error: building shard" in stderr and "SourceUnavailable" in stderr and f"--src {src}" in stderr, stderr
    assert "Traceback" not in stderr
    assert not (out / MANIFEST_NAME).exists() and not (out / ".lock").exists()


def test_without_ray_installed_the_error_names_the_extra(tmp_path, source):
    code = ("import sys; sys.modules['ray'] = None\n"
            "from preprocess.cli import main\n"
            f"main(['build-shards', '--src', {str(source)!r}, '--out', {str(tmp_path / 'o')!r}, '--engine', 'ray'])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 1 and "pip install 'alexnet-pipeline[ray]'" in done.stderr, done.stderr


def test_a_local_instance_the_command_starts_stays_on_loopback(cluster, source, reference, tmp_path):
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    cmd = cli("--src", str(source), "--out", str(out), "--shard-size", str(SHARD), "--workers", "2",
              "--engine", "ray", "--ray-address", "local")  # fmt: skip
    with started(cmd, env=env) as proc:
        wait_for_parts(proc, out, 1)
        assert_listening_on_loopback_only(proc.pid)
        _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    same_build(out, reference)
