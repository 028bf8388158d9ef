"""What a checkpoint holds, and how a run is put back exactly where it stopped.

A checkpoint is a plain dict: model, optimizer, schedule, scaler, epoch (the epoch to train next, or the one in
progress for a mid-epoch checkpoint), step, and one entry per rank for the RNG states (torch, numpy, python,
cuda) and the loader state, plus the config as a dict. Gathering per-rank states is a collective: every rank
calls `gather_state`, only rank 0 gets the dict back and writes it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import uuid
from typing import Any

import torch
from torch import nn

from pipeline import DistInfo
from trainer import dist
from trainer.checkpoint import CheckpointError, load_checkpoint, load_latest, save_checkpoint
from trainer.loop import Progress
from trainer.rng import capture_rng, restore_rng

__all__ = ["TrainObjects", "gather_state", "save", "find_resume_state", "restore", "check_run_dir_shared",
           "RunDirNotShared"]

log = logging.getLogger(__name__)


class TrainObjects:
    """The stateful objects a checkpoint covers (the unwrapped model, not DDP)."""

    def __init__(self, model: nn.Module, optimizer, schedule, scaler, train_loader, progress: Progress, config: dict):
        self.model = model
        self.optimizer = optimizer
        self.schedule = schedule
        self.scaler = scaler
        self.train_loader = train_loader
        self.progress = progress
        self.config = config


def gather_state(objs: TrainObjects, info: DistInfo) -> dict[str, Any] | None:
    """The checkpoint dict on rank 0, None elsewhere. A collective: every rank must call it."""
    sums = objs.progress.epoch_sums
    mine = {"rng": capture_rng(), "loader": objs.train_loader.state_dict(),
            "epoch_sums": None if sums is None else sums.detach().cpu()}
    per_rank = dist.all_gather_objects(info, mine)
    if not info.is_main:
        return None
    return {
        "model": objs.model.state_dict(),
        "optimizer": objs.optimizer.state_dict(),
        "schedule": objs.schedule.state_dict(),
        "scaler": objs.scaler.state_dict(),
        "epoch": objs.progress.epoch,
        "step": objs.progress.step,
        "rng": [p["rng"] for p in per_rank],
        "loader": [p["loader"] for p in per_rank],
        "epoch_sums": [p["epoch_sums"] for p in per_rank],
        "world_size": info.world_size,
        "config": dict(objs.config),
    }


def save(objs: TrainObjects, info: DistInfo, run_dir: str, *, keep: int) -> str | None:
    """Checkpoint written by rank 0 only; the other ranks wait at a barrier until it is in place (T5)."""
    state = gather_state(objs, info)
    path = None
    if info.is_main:
        path = save_checkpoint(state, run_dir, objs.progress.step, keep=keep)
        log.info("checkpoint %s (epoch %d, step %d)", path, objs.progress.epoch, objs.progress.step)
    dist.barrier(info)
    return path


def find_resume_state(info: DistInfo, run_dir: str, resume: str) -> tuple[str, dict[str, Any]] | None:
    """The checkpoint to resume from: --resume PATH, else the newest valid one in the run dir (torchrun restarts).

    Rank 0 chooses (with the fallback over corrupt files); every rank reads that file and the ranks compare its
    size and sha256 before anyone loads it, so no rank starts from another state than the others.
    """
    choice = None
    if info.is_main:
        if resume:
            choice = resume
        else:
            found = load_latest(run_dir)
            choice = found[0] if found else None
    choice = dist.broadcast_object(info, choice)
    if choice is None:
        return None
    data, seen = _read(choice)
    _require_same(info, seen, f"the checkpoint {choice}")
    return choice, load_checkpoint(choice, data=data)


class RunDirNotShared(RuntimeError):
    """Some ranks do not see the run directory (or checkpoint) that rank 0 sees; raised on every rank at once."""


def check_run_dir_shared(info: DistInfo, run_dir: str) -> None:
    """Fails at start-up, on every rank, unless every rank sees the file rank 0 has just written in `run_dir`.

    Rank 0 alone writes checkpoints, and every rank reads them on resume, including after rank 0's node is
    replaced: a run directory on one node's local disk would only fail at the first restart, hours in.
    """
    if not info.distributed:
        return
    probe = None
    if info.is_main:
        probe = os.path.join(run_dir, f".shared-check-{uuid.uuid4().hex}")
        with open(probe, "w") as f:
            f.write(os.path.basename(probe))
    probe = dist.broadcast_object(info, probe)
    try:
        with open(probe) as f:
            seen = "sees it" if f.read() == os.path.basename(probe) else "sees other contents"
    except OSError as e:
        seen = f"does not see it ({type(e).__name__})"
    try:
        _require_same(info, seen, f"the run directory {run_dir} (file {os.path.basename(probe)} written by rank 0)")
    finally:
        if info.is_main:
            os.remove(probe)


def _read(path: str) -> tuple[bytes | None, str]:
    """The file's bytes and what this rank sees: its size and sha256, or the error opening it."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return None, f"cannot read it ({type(e).__name__}: {e.strerror})"
    return data, f"{len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()[:16]}"


def _require_same(info: DistInfo, seen: str, what: str) -> None:
    """A collective: every rank raises the same RunDirNotShared unless all ranks saw what rank 0 saw."""
    views = dist.all_gather_objects(info, (socket.gethostname(), seen))
    differ = [(rank, host, view) for rank, (host, view) in enumerate(views) if view != views[0][1]]
    if differ:
        listing = "; ".join(f"rank {r} on {h}: {v}" for r, h, v in [(0, *views[0])] + differ)
        raise RunDirNotShared(
            f"ranks see different contents of {what}: {listing}. The run directory (--out) must be on storage "
            "all nodes share (a shared file system mounted at the same path on every node)")


def restore(objs: TrainObjects, state: dict[str, Any], info: DistInfo) -> None:
    """Puts model, optimizer, schedule, scaler, progress, RNGs and the loader back as they were saved."""
    # How the optimizer runs (fused or not) is this run's choice, and loading a state would bring back the flags it
    # was saved with: an older checkpoint's unfused groups under the GradScaler of a fused optimizer fail to step.
    how = {flag: objs.optimizer.defaults[flag] for flag in ("fused", "foreach") if flag in objs.optimizer.defaults}
    try:
        objs.model.load_state_dict(state["model"])
        objs.optimizer.load_state_dict(state["optimizer"])
        for group in objs.optimizer.param_groups:
            group.update(how)
        objs.schedule.load_state_dict(state["schedule"])
        objs.scaler.load_state_dict(state["scaler"])
    except (KeyError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"checkpoint does not match this run (arch, width, classes or schedule): {e}") from e
    objs.progress.epoch = int(state["epoch"])
    objs.progress.step = int(state["step"])
    if int(state.get("world_size", 1)) == info.world_size:
        restore_rng(state["rng"][info.rank])
        objs.train_loader.load_state_dict(state["loader"][info.rank])
        objs.progress.epoch_sums = state.get("epoch_sums", [None] * info.world_size)[info.rank]
    else:
        log.warning("checkpoint was written with world size %s, this run has %d: RNG and loader positions are "
                    "reset, so results will differ from an uninterrupted run", state.get("world_size"), info.world_size)
        restore_rng(state["rng"][0])
    if torch.cuda.is_available() and info.device.startswith("cuda"):
        torch.cuda.synchronize()
