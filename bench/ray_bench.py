"""build-shards --engine ray against --engine local on the same cores, in one run, alternating.

    python bench/ray_bench.py                    # 10,000 generated ImageNet-like photos (cached in bench/out/)
    python bench/ray_bench.py --images 20000 --rounds 3

The Ray side is a two-node Ray cluster started here on loopback (`ray.cluster_utils.Cluster`: a head and a
second node, one CPU each), the local side a pool of two worker processes. Printed: the rate of each engine
per round; the Ray engine's rate once its workers are up and over the whole run with its start-up, as a
fraction of the local engine's; the start-up cost; what the driver pays per finished shard (receiving a part
record with its 1.5 MB of exact sums, and merging it) and its memory; and from those, how many shards and
images a second one driver keeps up with.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
import tracemalloc

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from photos import make_photos  # noqa: E402

from preprocess.build import BuildConfig, build_shards  # noqa: E402
from preprocess.layout import discover  # noqa: E402

os.environ.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0")  # before Ray is imported
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a cluster of this process's own, on loopback, for minutes


def start_cluster():
    """(cluster, seconds to start it and connect, seconds until both nodes have a worker with our code loaded)."""
    import ray
    from ray.cluster_utils import Cluster

    start = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="warning")
    up = time.perf_counter() - start
    nodes = [n for n in ray.nodes() if n["Alive"]]
    assert len(nodes) == 2 and {n["NodeManagerAddress"] for n in nodes} == {"127.0.0.1"}, nodes

    @ray.remote(num_cpus=1)
    def load_code(_):
        import preprocess.ray_engine  # noqa: F401 (what each worker imports before its first shard)

        time.sleep(0.5)  # hold the CPU so the other call lands on the other node
        return ray.get_runtime_context().get_node_id()

    assert len(set(ray.get([load_code.remote(i) for i in range(2)]))) == 2
    return cluster, up, time.perf_counter() - start - up


def driver_cost_per_shard(shards: int = 30) -> tuple[float, float]:
    """ms to receive one train part record from the other node (ray.get) and to merge it into the totals."""
    import ray

    from preprocess.parts import PartTotals, ShardPart
    from preprocess.stats import PixelSums

    @ray.remote(num_cpus=1)
    def part(i):
        rng = np.random.default_rng(i)
        sums = PixelSums(256, 1000, rng.integers(0, 2**31, (256, 256, 3), dtype=np.uint32), np.ones((3, 3), np.int64))
        return ShardPart("train", i, "0" * 64, None, [], {"cmyk": 1}, sums)

    refs = [part.remote(i) for i in range(shards)]
    ray.wait(refs, num_returns=len(refs), fetch_local=False)
    totals = PartTotals(256)
    start = time.perf_counter()
    parts = [ray.get(ref) for ref in refs]
    receive = time.perf_counter() - start
    start = time.perf_counter()
    for p in parts:
        totals.add(p)
    merge = time.perf_counter() - start
    return 1e3 * receive / shards, 1e3 * merge / shards


def run(cfg: BuildConfig) -> tuple[float, float]:
    """(wall seconds, driver CPU seconds) of one build."""
    wall, cpu = time.perf_counter(), time.process_time()
    build_shards(cfg)
    return time.perf_counter() - wall, time.process_time() - cpu


def report(n: int, times: dict, startup_s: float, same: bool) -> None:
    local_s, ray_s = min(times["local"]), min(times["ray"])
    whole_s = startup_s + ray_s
    print()
    print(f"{'engine':40s} {'images/s':>10s} {'of local':>9s}")
    print(f"{'local (2 worker processes)':40s} {n / local_s:10.1f} {'':>9s}")
    print(f"{'ray, workers up (2 nodes x 1 CPU)':40s} {n / ray_s:10.1f} {local_s / ray_s:9.0%}   (target >= 90%)")
    print(f"{'ray, whole run with its start-up':40s} {n / whole_s:10.1f} {local_s / whole_s:9.0%}   (target >= 75%)")
    print(f"ray start-up cost: {startup_s:.1f} s; the engines' stats.json, mean_image.npy and first shard "
          f"{'are identical' if same else 'DIFFER'}")  # fmt: skip
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best time of each engine counts")
    parser.add_argument("--shard-size", type=int, default=1000)
    args = parser.parse_args()
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out", f"photos-{args.images}")
    if not os.path.isdir(src):
        print(f"generating {args.images} ImageNet-like photos in {src} ...", flush=True)
        make_photos(src, args.images)
    paths = [item.path for item in discover(src).splits["train"]]
    for p in paths:  # the page cache warm for both engines alike
        open(p, "rb").read()
    n, shards = len(paths), -(-len(paths) // args.shard_size)
    print(f"{n} images, {shards} shards of {args.shard_size}, {os.cpu_count()} cores; local: 2 worker processes; "
          f"ray: 2 nodes on loopback, 1 CPU each; best of {args.rounds} alternating rounds")  # fmt: skip
    cluster, up_s, workers_s = start_cluster()
    print(f"ray start-up: cluster {up_s:.1f} s, first worker with our code on each node {workers_s:.1f} s")

    times = {"local": [], "ray": []}
    driver_cpu = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for engine in ("local", "ray"):
                cfg = BuildConfig(src=src, out=f"{tmp}/{engine}", shard_size=args.shard_size, workers=2, progress=False,
                                  overwrite=True, engine=engine)  # fmt: skip
                wall, cpu = run(cfg)
                times[engine].append(wall)
                if engine == "ray":
                    driver_cpu.append(cpu)
                print(f"  round {r + 1} {engine:5s} {n / wall:7.1f} images/s  ({wall:.1f} s)", flush=True)
        same = all(open(f"{tmp}/local/{f}", "rb").read() == open(f"{tmp}/ray/{f}", "rb").read()
                   for f in ("stats.json", "mean_image.npy", "train/train-000000.tar"))  # fmt: skip
        tracemalloc.start()
        run(BuildConfig(src=src, out=f"{tmp}/ray", shard_size=args.shard_size, workers=2, progress=False,
                        overwrite=True, engine="ray"))  # fmt: skip
        heap_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    receive_ms, merge_ms = driver_cost_per_shard()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    report(n, times, up_s + workers_s, same)
    per_shard_ms = 1e3 * min(driver_cpu) / shards
    print(f"driver, per finished shard: receive the part {receive_ms:.2f} ms + merge it {merge_ms:.2f} ms; "
          f"all its work (plan rows, submit, receive, merge) {per_shard_ms:.1f} ms CPU")  # fmt: skip
    print(f"driver memory: Python heap peak during a Ray build {heap_peak / 2**20:.1f} MiB; process peak RSS {rss:.0f} MiB")
    print(f"one driver keeps up with {1e3 / per_shard_ms:.0f} shards/s = {1e3 / per_shard_ms * args.shard_size:,.0f} "
          f"images/s at {args.shard_size} images a shard; ImageNet-21k (14,200 shards) costs it "
          f"{14200 * per_shard_ms / 1e3:.0f} s of CPU")  # fmt: skip
    import ray

    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main()
