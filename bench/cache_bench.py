"""Time to first batch and bytes fetched per node on an s3:// root: this checkout against a baseline git ref.

    python bench/cache_bench.py                          # generated sample build, baseline: the loader before the cache
    python bench/cache_bench.py shards/ --baseline-ref 0ebdd3b --procs 1 4

A local S3 server (moto, on 127.0.0.1, behind a counter of the bytes it serves) holds the build. For each code
(the baseline ref's `pipeline/`, taken with `git archive`, and this checkout's) and each process count N, N
loader processes of one "node" (ranks 0..N-1 of N, one shared, empty cache) are started, wait until all have
imported, and are released at once; each builds an `ImageNetLoader` on the train split and takes one batch.
Printed per run: the node's time until the split is cached and to its first batch (its slowest rank), the bytes
and GETs the server served for the split's shards and indexes, against the split's size from the manifest; then
ours/baseline.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))  # the counting S3 server the tests use
sys.path.insert(0, REPO)

FIRST_BATCH = """
import sys, time
from pipeline import ImageNetLoader
from pipeline.sources import find_shards
rank, world, root, cache = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
print("ready", flush=True)
sys.stdin.readline()
start = time.perf_counter()
find_shards(root, "train", cache_dir=cache)  # what the loader does first: the split, cached (both codes)
cached = time.perf_counter() - start
loader = ImageNetLoader(root, split="train", batch_size=32, device="cpu", crop_size=96, num_threads=1,
                        rank=rank, world_size=world, local_rank=rank, cache_dir=cache)
next(iter(loader))
print(f"cached {cached:.3f} first-batch {time.perf_counter() - start:.3f}", flush=True)
"""


def baseline_code(ref: str, into: str) -> str:
    """The `pipeline` package of git ref `ref`, extracted under `into` (nothing in the repository changes)."""
    archive = subprocess.run(["git", "-C", REPO, "archive", ref, "pipeline"], check=True, capture_output=True).stdout
    with tempfile.TemporaryFile() as f:
        f.write(archive)
        f.seek(0)
        with tarfile.open(fileobj=f) as tar:
            tar.extractall(into, filter="data")
    return into


def one_node(code: str, procs: int, root: str, cache: str) -> tuple[float, float]:
    """Seconds from the release of `procs` ranks until the slowest has the split cached, and has its first batch."""
    env = {**os.environ, "PYTHONPATH": code, "OMP_NUM_THREADS": "1"}
    ranks = [subprocess.Popen([sys.executable, "-c", FIRST_BATCH, str(r), str(procs), root, cache], env=env, cwd=code,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for r in range(procs)]
    for rank in ranks:
        assert rank.stdout.readline().strip() == "ready"
    for rank in ranks:
        rank.stdin.write("go\n")
        rank.stdin.flush()
    cached, first = [], []
    for rank in ranks:
        out, _ = rank.communicate(timeout=900)
        assert rank.returncode == 0, f"a rank failed (exit {rank.returncode})"
        words = out.split()
        cached.append(float(words[words.index("cached") + 1]))
        first.append(float(words[words.index("first-batch") + 1]))
    return max(cached), max(first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", help="a local build to serve (default: the generated sample build)")
    parser.add_argument("--baseline-ref", default="0ebdd3b",
                        help="git ref whose pipeline/ is the baseline (default: the last commit before the node cache)")
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 4], help="ranks per node to measure")
    args = parser.parse_args()
    from s3_server import counting_s3

    from pipeline.contract import load_manifest

    if args.root is None:
        sys.path.insert(0, os.path.join(REPO, "bench"))
        from samples import sample_build

        args.root = sample_build(100, val_per_class=5, shard_size=64)
    split = load_manifest(args.root).splits["train"]
    print(f"train split: {len(split.shards)} shards, {split.bytes:,} bytes; moto S3 on 127.0.0.1; "
          f"baseline: {args.baseline_ref}'s pipeline/ vs this checkout")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp, counting_s3() as (counter, fs):
        fs.mkdir("bench")
        fs.put(f"{args.root}/", "bench/shards/", recursive=True)
        root = "s3://bench/shards"
        codes = {"baseline": baseline_code(args.baseline_ref, os.path.join(tmp, "baseline")), "ours": REPO}
        results = {}
        for procs in args.procs:
            for name, code in codes.items():
                counter.reset()
                cache = os.path.join(tmp, f"cache-{name}-{procs}")
                cached, seconds = one_node(code, procs, root, cache)
                shard_paths = [p for p in counter.bytes if p.startswith("/bench/shards/train/")]
                fetched = sum(counter.bytes[p] for p in shard_paths)
                gets = sum(counter.gets[p] for p in shard_paths)
                results[name, procs] = (seconds, fetched, cached)
                print(f"{name:8s} {procs} rank(s)/node: split cached after {cached:5.2f} s, first batch after "
                      f"{seconds:6.2f} s (slowest rank); "
                      f"{fetched:,} bytes in {gets} GETs for the split's shards+indexes "
                      f"({fetched / split.bytes:.2f}x the shards' size)", flush=True)  # fmt: skip
            base, ours = results["baseline", procs], results["ours", procs]
            print(f"  -> {procs} rank(s): ours/baseline: time to first batch {ours[0] / base[0]:.2f}x, time until the "
                  f"split is cached {ours[2] / base[2]:.2f}x, bytes fetched per node {ours[1] / base[1]:.2f}x", flush=True)


if __name__ == "__main__":
    main()
