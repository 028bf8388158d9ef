"""The Ray engine: one Ray task per shard, on the cluster `--ray-address` names, the same bytes as the local engine.

Each task reads its inputs from --src, writes its shard, index and part record at --out with the local
engine's writer, and returns the part record; no image crosses Ray's object store (whose spilling is the
usual way Ray data jobs fail). Tasks are submitted as the plan makes them, a bounded window at a time, and
the driver merges the returned parts in any order: the sums are exact integers.

Faults: a worker or node that dies is retried by Ray (`max_retries`); each attempt stages under names of its
own (`OutputDir`), so an attempt cut off but still running and its retry never share a temporary file, and
their outputs are identical, so whichever publishes last publishes the same bytes. An exception raised by our
own code (a full disk, a bug) is not retried: the same input would fail the same way, so the build stops
naming the shard. Ctrl-C or SIGTERM cancel every running task (its worker is killed) before the lock goes.

Straggler attempts are not duplicated: every shard is an equal-sized random sample of its split, so tasks
take about the same time and the tail of a build is about one task long, while duplicates would double the
writes to object storage for it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from dataclasses import replace

from preprocess.assemble import ShardAssembler, ShardWriteError
from preprocess.interrupt import raise_on_sigterm
from preprocess.output import OutputDir
from preprocess.parts import ShardPart
from preprocess.plan import ShardPlan
from preprocess.worker import check_source, init_worker, process_chunk

__all__ = ["RayUnavailable", "run_shards", "build_shard", "RETRIES"]

log = logging.getLogger(__name__)

RETRIES = 3  # attempts after the first when the worker or node running a task dies
TASKS_PER_CPU = 2  # submitted and not finished, per cluster CPU: every CPU has its next task waiting
REFRESH_SECONDS = 2.0  # how often the cluster size and the attempt counts are read again
LOOPBACK = "127.0.0.1"


class RayUnavailable(RuntimeError):
    """Ray is not installed, or the cluster cannot be reached or started."""


def import_ray(address: str):
    """Imports Ray, first telling it to stay on loopback when the cluster is a local one."""
    if address == "local" or _is_loopback(os.environ.get("RAY_ADDRESS") if address == "auto" else address):
        # Read once, when Ray is imported: nodes then use 127.0.0.1 instead of the machine's routable address.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError as e:
        raise RayUnavailable("--engine ray needs Ray: pip install 'alexnet-pipeline[ray]'") from e
    return ray


def _is_loopback(address: str | None) -> bool:
    host = (address or "").removeprefix("ray://").rpartition(":")[0]
    return host == "localhost" or host.startswith("127.")


def _connect(ray, address: str, cpus: int) -> bool:
    """Connects this driver; True when it called ray.init (and so must call ray.shutdown)."""
    if ray.is_initialized():  # the caller (a notebook, a test) connected already
        return False
    if address != "local":
        try:
            ray.init(address=address, logging_level=logging.WARNING)
            return True
        except ConnectionError as e:
            if address != "auto" or os.environ.get("RAY_ADDRESS"):  # a named cluster: never a silent local stand-in
                named = address if address != "auto" else os.environ["RAY_ADDRESS"]
                raise RayUnavailable(f"cannot reach the Ray cluster at {named}: {e}") from e
    _start_local(ray, cpus)
    return True


def _start_local(ray, cpus: int) -> None:
    """A Ray instance for this build alone, listening on 127.0.0.1 only: an open Ray port runs anyone's code."""
    from ray._private import ray_constants  # the switch Ray read at import; the env var covers its children

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    log.info("no Ray cluster found: starting a local Ray instance with %d CPUs on %s", cpus, LOOPBACK)
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING)
    addresses = {node["NodeManagerAddress"] for node in ray.nodes()}
    if addresses != {LOOPBACK}:
        ray.shutdown()
        raise RayUnavailable(f"the local Ray instance listens on {sorted(addresses)}, not only {LOOPBACK}; stopped it")


class AttemptCounter:
    """A Ray actor that counts task attempts, so the driver can show tasks running and retried.

    Progress only, and a lower bound: an attempt lost before its report arrives (while its worker still imports
    our code) is not counted; Ray itself logs every retry.
    """

    def __init__(self):
        self.shards, self.attempts = set(), 0

    def started(self, key: tuple[str, int]) -> None:
        self.shards.add(key)
        self.attempts += 1

    def counts(self) -> tuple[int, int]:
        return len(self.shards), self.attempts


def build_shard(plan: ShardPlan, cfg, counter) -> ShardPart:
    """One task: reads the shard's inputs, publishes its tar, index and part record at cfg.out, returns the part."""
    try:
        counter.started.remote((plan.split, plan.index))
    except Exception:  # noqa: BLE001 (progress only: a lost counter must not fail the shard)
        pass
    init_worker(cfg.src, cfg.size, cfg.quality, cfg.max_pixels, cfg.follow_links, own_process=False)
    check_source()
    out, parts = OutputDir(cfg.out), []
    assembler = ShardAssembler(out, {(plan.split, plan.index): plan.digest}, cfg.size, parts.append)
    try:
        for chunk in plan.chunks():
            assembler.add(process_chunk(chunk))
    except BaseException:
        assembler.abort()
        raise
    finally:
        out.close()
    return parts[0]


def run_shards(shards: Iterator[ShardPlan], cfg, out: OutputDir, bar) -> Iterator[ShardPart]:
    """Yields each shard's part as its task finishes (in any order), keeping a bounded window submitted."""
    # Workers run in directories of their own: a relative local path must mean what it means here.
    cfg = replace(cfg, src=_absolute(cfg.src), out=_absolute(cfg.out))
    ray = import_ray(cfg.ray_address)
    connected_here = _connect(ray, cfg.ray_address, cfg.workers)
    raise_on_sigterm()  # ray.init installs a SIGTERM handler of its own that skips our cleanup
    in_flight: dict = {}
    try:
        yield from _drive(ray, iter(shards), cfg, bar, in_flight)
    finally:
        for ref in in_flight:  # Ctrl-C, SIGTERM or a failed shard: no task may go on writing
            ray.cancel(ref, force=True)
        if connected_here:
            ray.shutdown()


def _absolute(path: str) -> str:
    return path if "://" in path else os.path.abspath(path)


def _drive(ray, shards: Iterator[ShardPlan], cfg, bar, in_flight: dict) -> Iterator[ShardPart]:
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    counter = ray.remote(AttemptCounter).options(num_cpus=0, scheduling_strategy=here).remote()
    task = ray.remote(build_shard).options(num_cpus=1, max_retries=RETRIES, retry_exceptions=False)
    done = window = 0
    counts, counts_ref, refreshed = (0, 0), None, 0.0
    exhausted = False
    while True:
        if time.monotonic() - refreshed > REFRESH_SECONDS:  # the cluster may grow or shrink
            window = TASKS_PER_CPU * max(1, int(ray.cluster_resources().get("CPU", 1)))
            counts, counts_ref = _read_counts(ray, counter, counts, counts_ref)
            refreshed = time.monotonic()
            bar.set_postfix_str(f"tasks running {max(counts[0] - done, 0)}, done {done}, retried {counts[1] - counts[0]}")
        while not exhausted and len(in_flight) < window:
            plan = next(shards, None)
            if plan is None:
                exhausted = True
            else:
                in_flight[task.remote(plan, cfg, counter)] = (plan.name, len(plan.rows))
        if not in_flight:
            break
        ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=1.0)
        for ref in ready:
            name, images = in_flight.pop(ref)
            part = _result(ray, ref, name, cfg.out)
            done += 1
            bar.update(images)
            yield part
    counts, _ = _read_counts(ray, counter, counts, None, wait=True)
    if counts[1] > counts[0]:
        log.warning("%d task attempts were retried after a worker or node was lost", counts[1] - counts[0])


def _read_counts(ray, counter, counts, pending, wait: bool = False):
    """The counter's last answer, and the next question in flight (never blocking the driver unless `wait`)."""
    try:
        if pending is not None and ray.wait([pending], timeout=None if wait else 0)[0]:
            counts, pending = ray.get(pending), None
        if pending is None and not wait:
            pending = counter.counts.remote()
        elif wait:
            counts = ray.get(counter.counts.remote(), timeout=10)
    except ray.exceptions.RayError:  # the counter's node was lost: progress shows less, the build goes on
        pending = None
    return counts, pending


def _result(ray, ref, name: str, out_url: str) -> ShardPart:
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:  # our code raised: the same inputs would fail again
        cause = e.cause
        if isinstance(cause, ShardWriteError):
            raise ShardWriteError(str(cause)) from None
        raise ShardWriteError(f"building shard {out_url}/{name} failed: {type(cause).__name__}: {cause}") from None
    except ray.exceptions.RayError as e:  # lost workers or nodes, beyond the retries
        raise ShardWriteError(f"building shard {out_url}/{name} failed after {RETRIES} retries: {e}") from None
