"""One download per node: ranks of a machine share the remote-shard cache (real moto S3 server, real processes)."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
from s3_server import counting_s3

from pipeline.contract import load_manifest
from pipeline.errors import CacheSpaceError
from pipeline.node_cache import CachedFile, fetch, is_complete

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = "s3://nodecache/shards"
FIRST_BATCH = """
import sys, time
from pipeline import ImageNetLoader
rank = int(sys.argv[1])
loader = ImageNetLoader(sys.argv[2], split="train", batch_size=2, device="cpu", crop_size=64, num_threads=1,
                        rank=rank, world_size=4, local_rank=rank, cache_dir=sys.argv[3])
images, labels = next(iter(loader))
print("first batch", tuple(images.shape))
"""


@pytest.fixture(scope="module")
def s3(tiny_build):
    with counting_s3() as (counter, fs):
        fs.mkdir("nodecache")
        fs.put(f"{tiny_build[0]}/", "nodecache/shards/", recursive=True)
        yield counter, fs
        fs.rm("nodecache", recursive=True)  # moto's buckets live in this process, whichever server serves them


def _sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _shard_objects(split: str) -> dict[str, int]:
    """URL path -> bytes of every shard and index object of `split` (what one node must download once)."""
    manifest = load_manifest(ROOT)
    out = {}
    for shard in manifest.splits[split].shards:
        out[f"/nodecache/shards/{split}/{shard.name}"] = shard.bytes
        out[f"/nodecache/shards/{split}/{shard.index}"] = None
    return out


def test_four_ranks_of_a_node_download_each_shard_once(s3, tmp_path):
    counter, _ = s3
    counter.reset()
    cache = tmp_path / "cache"
    procs = [subprocess.Popen([sys.executable, "-c", FIRST_BATCH, str(rank), ROOT, str(cache)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in range(4)]  # fmt: skip
    outs = [p.communicate(timeout=240) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    assert all("first batch (2, 3, 64, 64)" in out for out, _ in outs)
    assert not [err for _, err in outs[1:] if "fetching split 'train'" in err]  # the bar: local rank 0's only
    objects = _shard_objects("train")
    assert len(objects) == 6  # three shards and their indexes
    assert {path: counter.gets[path] for path in objects} == {path: 1 for path in objects}
    for path, size in objects.items():
        assert size is None or counter.bytes[path] == size, path  # each shard's bytes crossed the wire once
    # every cached shard is the manifest's, and nothing half-written is left
    for shard in load_manifest(ROOT).splits["train"].shards:
        [cached] = list(cache.rglob(shard.name))
        assert _sha256(cached) == shard.sha256 and cached.stat().st_size == shard.bytes
    assert not [p for p in cache.rglob("*") if ".part-" in p.name or ".tmp-" in p.name]


def _items(tmp_path, split="val"):
    shards = load_manifest(ROOT).splits[split].shards
    return [CachedFile(f"nodecache/shards/{split}/{s.name}", str(tmp_path / split / s.name), s.sha256, s.bytes)
            for s in shards]


def test_a_download_killed_halfway_never_passes_as_complete(s3, tmp_path):
    counter, fs = s3
    [item] = _items(tmp_path)
    script = ("import sys, fsspec; from pipeline.node_cache import CachedFile, fetch; "
              f"fetch(fsspec.filesystem('s3'), [CachedFile({item.remote!r}, {item.local!r}, {item.sha256!r}, "
              f"{item.size})], what='val', progress=False)")  # fmt: skip
    counter.slow = 0.05  # ~0.6 s for the 180 KiB shard: time to kill the process halfway
    try:
        proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
        deadline = time.monotonic() + 60
        while not [p for p in (tmp_path / "val").glob("*.part-*") if p.stat().st_size > 0]:
            assert proc.poll() is None and time.monotonic() < deadline, "the download never started"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        counter.slow = 0.0
    assert not os.path.exists(item.local) and not is_complete(item)
    # a file with the right name but without a valid marker (killed between rename and marker) is not complete
    with open(item.local, "wb") as f:
        f.write(b"\0" * item.size)
    assert not is_complete(item)
    fetch(fs, [item], what="val", progress=False)  # takes over: the leftovers are replaced, not trusted
    assert is_complete(item) and _sha256(item.local) == item.sha256
    assert not list((tmp_path / "val").glob("*.part-*"))
    with open(item.local, "r+b") as f:  # truncated after the fact: no longer complete
        f.truncate(item.size // 2)
    assert not is_complete(item)


def test_a_split_larger_than_the_cache_disk_fails_before_downloading(s3, tmp_path):
    """A 256 KiB tmpfs in a private mount namespace: val (180 KiB) fits, train (480 KiB) does not."""
    counter, _ = s3
    cache = tmp_path / "small-disk"
    cache.mkdir()
    train_bytes = load_manifest(ROOT).splits["train"].bytes
    fetch_cmd = f"{sys.executable} -m pipeline.fetch {ROOT} --cache-dir {cache}"
    script = (f"mount -t tmpfs -o size=256k tmpfs {cache} && {fetch_cmd} --split val && "
              f"{fetch_cmd} --split train; echo train-exit=$?; find {cache} -name '*.tar*' | sort")
    counter.reset()
    done = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "val: 1 shards cached" in done.stdout and "train-exit=1" in done.stdout
    assert f"{train_bytes:,} bytes still to download" in done.stderr and str(cache) in done.stderr
    free = int(re.search(r"which has only ([\d,]+) bytes free", done.stderr).group(1).replace(",", ""))
    assert 0 < free < train_bytes  # the error names both figures
    assert not [line for line in done.stdout.splitlines() if "/train/" in line]  # nothing of train was written
    assert not [p for p in counter.gets if "/train/" in p]  # not even requested


def test_the_space_rule_counts_what_is_cached_already(s3, tmp_path):
    """Only missing bytes count; bytes other processes already wrote to .part files are on the disk already."""
    _, fs = s3
    items = _items(tmp_path, "train")
    fetch(fs, items[:2], what="train", progress=False)
    free = shutil.disk_usage(tmp_path).free
    huge = CachedFile(items[2].remote, items[2].local, items[2].sha256, free + 1)
    with pytest.raises(CacheSpaceError, match=rf"{free + 1:,} bytes still to download") as info:
        fetch(fs, [*items[:2], huge], what="train", progress=False)
    assert info.value.need == free + 1 and info.value.free < info.value.need
    with open(huge.local + ".part-1-1", "wb") as f:  # a process of this node is halfway through it
        f.write(b"\0" * 4096)
    with pytest.raises(CacheSpaceError, match=rf"{free + 1 - 4096:,} bytes still to download"):
        fetch(fs, [huge], what="train", progress=False)
