"""Every `torch.distributed` call of the trainer, behind the loader's frozen `pipeline.DistInfo`, which falls back
to one process.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; plain `python trainer/main.py` sets none and runs as rank 0 of 1.
Shards and seeds follow the GLOBAL rank (with the local rank, ranks of different machines would read the same
slice and draw the same augmentations); the local rank only picks the GPU. The loader receives the same
`DistInfo`, so it can never disagree with the trainer about where this process stands.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as tdist

from pipeline import DistInfo

__all__ = ["setup", "teardown", "barrier", "all_reduce_sum", "all_gather_objects", "broadcast_object",
           "agree_on_attempt"]

log = logging.getLogger(__name__)


def setup(device: str) -> DistInfo:
    """Initialises the process group when launched by torchrun: NCCL on GPUs, gloo on CPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda, but no CUDA device is available (use --device cpu)")
        torch.cuda.set_device(local_rank)
        device_name = f"cuda:{local_rank}"
    else:
        device_name = "cpu"
        # Ranks on one machine share its cores: without this each one starts a thread per core and they thrash.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world_size))
    if world_size > 1 and not tdist.is_initialized():
        cuda = device == "cuda"
        _init_process_group("nccl" if cuda else "gloo", torch.device("cuda", local_rank) if cuda else None)
    return DistInfo(rank, world_size, local_rank, local_world_size, device_name)


def _init_process_group(backend: str, device_id: torch.device | None = None) -> None:
    """init_process_group on torchrun's store, under a key prefix per restart attempt.

    `device_id` (NCCL): the process's GPU, so that the communicator is created now rather than lazily by the first
    collective (which warns that it has to guess the device, and makes the first barrier slow).

    torchrun (torch >= 2.5) shares its rendezvous TCPStore with the workers, and the store outlives a restart:
    without a prefix, restarted workers can read the previous attempt's gloo/NCCL addresses and fail to
    connect (pytorch/pytorch#135712). The prefix must be the same on every node: a node started again after a
    failure has a restart count of 0 while the others count on, so the attempt is agreed through the store.
    """
    store, rank, world_size = next(tdist.rendezvous("env://"))
    attempt = agree_on_attempt(store, rank, world_size)
    store = tdist.PrefixStore(f"trainer/attempt-{attempt}", store)
    tdist.init_process_group(backend=backend, store=store, rank=rank, world_size=world_size, device_id=device_id)


def agree_on_attempt(store, rank: int, world_size: int, *, timeout_s: float = 1800.0) -> str:
    """A name for this launch of the job that every rank agrees on, though the store may hold older launches' keys.

    Rank 0 takes a new number from a counter in the store (so no older launch used it) and hands it to each
    other rank in reply to a fresh random token that rank posted; rank 0 answers until every rank has confirmed
    this number, so a token left by an older launch can delay an answer but never be the one a rank waits for.
    """
    prefix = "trainer/launch"
    if rank != 0:
        token = uuid.uuid4().hex
        store.set(f"{prefix}/ask/{rank}", token)
        answer = f"{prefix}/answer/{rank}/{token}"
        store.wait([answer], timedelta(seconds=timeout_s))
        attempt = store.get(answer).decode()
        store.set(f"{prefix}/confirmed/{rank}/{attempt}", "1")
        return attempt
    attempt = str(store.add(f"{prefix}/counter", 1))
    answered: dict[int, str] = {}
    waiting, deadline = set(range(1, world_size)), time.monotonic() + timeout_s
    while waiting:
        for other in sorted(waiting):
            if store.check([f"{prefix}/confirmed/{other}/{attempt}"]):
                waiting.discard(other)
            elif store.check([f"{prefix}/ask/{other}"]):
                token = store.get(f"{prefix}/ask/{other}").decode()
                if answered.get(other) != token:
                    store.set(f"{prefix}/answer/{other}/{token}", attempt)
                    answered[other] = token
        if waiting:
            if time.monotonic() > deadline:
                raise TimeoutError(f"ranks {sorted(waiting)} never joined launch {attempt} of the job")
            time.sleep(0.01)
    return attempt


def teardown(info: DistInfo) -> None:
    if info.distributed and tdist.is_initialized():
        tdist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        tdist.barrier()


def all_reduce_sum(info: DistInfo, tensor: torch.Tensor) -> torch.Tensor:
    """Sums `tensor` over ranks in place (identity on one process) and returns it."""
    if info.distributed:
        tdist.all_reduce(tensor, op=tdist.ReduceOp.SUM)
    return tensor


def all_gather_objects(info: DistInfo, obj: Any) -> list[Any]:
    """Picklable `obj` from every rank, indexed by rank (used for per-rank RNG states in checkpoints)."""
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    tdist.all_gather_object(out, obj)
    return out


def broadcast_object(info: DistInfo, obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    if not info.distributed:
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=0)
    return box[0]
