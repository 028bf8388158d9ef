"""What a checkpoint holds, and how a run is put back exactly where it stopped.

A checkpoint is a plain dict: model, optimizer, schedule, scaler, epoch (the epoch to train next, or the one in
progress for a mid-epoch checkpoint), step, and one entry per rank for the RNG states (torch, numpy, python,
cuda) and the loader state, plus the config as a dict. Gathering per-rank states is a collective: every rank
calls `gather_state`, only rank 0 gets the dict back and writes it.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from trainer import dist
from trainer.checkpoint import CheckpointError, load_checkpoint, load_latest, save_checkpoint
from trainer.dist import DistInfo
from trainer.loop import Progress
from trainer.rng import capture_rng, restore_rng

__all__ = ["TrainObjects", "gather_state", "save", "find_resume_state", "restore"]

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

    Rank 0 chooses (with the fallback over corrupt files) and every rank loads the same file.
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
    return choice, load_checkpoint(choice)


def restore(objs: TrainObjects, state: dict[str, Any], info: DistInfo) -> None:
    """Puts model, optimizer, schedule, scaler, progress, RNGs and the loader back as they were saved."""
    try:
        objs.model.load_state_dict(state["model"])
        objs.optimizer.load_state_dict(state["optimizer"])
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
