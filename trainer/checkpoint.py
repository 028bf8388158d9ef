"""Checkpoints that survive crashes mid-write and refuse pickled code.

- Written by rank 0 only, atomically: a temp file in the same dir, fsync, `os.replace`, fsync of the dir (T1, T5).
  A crash mid-write leaves at most a `.tmp-*` file; the previous checkpoint is never touched before the new one
  is in place.
- Named `checkpoint-<step>.pth`; the newest `keep` are kept, so a corrupt newest one has a fallback.
- Loaded with `torch.load(weights_only=True)` (T3): tensors, dicts, lists, numbers and strings only. A
  checkpoint that needs anything else (a crafted pickle, an argparse Namespace) is refused with `CheckpointError`.
- Resuming picks the newest checkpoint that loads; a truncated/corrupt newer one is skipped WITH A WARNING (T6).
  We chose fallback over stopping because torchrun restarts all workers unattended after a failure, and a
  crash while writing is exactly the case that produces a bad newest file; losing a few steps beats a dead job.
"""

from __future__ import annotations

import io
import logging
import os
import re
import tempfile
from typing import Any

import torch

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "list_checkpoints", "load_latest", "CHECKPOINT_RE"]

log = logging.getLogger(__name__)
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d{8})\.pth$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded safely: corrupt, truncated, or not weights-only."""


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step:08d}.pth"


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some filesystems (and Windows) cannot open a dir
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(state: dict[str, Any], run_dir: str, step: int, *, keep: int = 2) -> str:
    """Writes `state` as checkpoint-<step>.pth atomically and prunes all but the newest `keep` checkpoints.

    Call on rank 0 only (the trainer's caller enforces it); returns the final path.
    """
    os.makedirs(run_dir, exist_ok=True)
    final = os.path.join(run_dir, checkpoint_name(step))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-checkpoint-", suffix=".pth", dir=run_dir)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(run_dir)
    for _, old in list_checkpoints(run_dir)[keep:]:
        os.unlink(old)
    return final


def list_checkpoints(run_dir: str) -> list[tuple[int, str]]:
    """(step, path) of the checkpoints in `run_dir`, newest first."""
    if not os.path.isdir(run_dir):
        return []
    found = [(int(m.group(1)), os.path.join(run_dir, n)) for n in os.listdir(run_dir) if (m := CHECKPOINT_RE.match(n))]
    return sorted(found, reverse=True)


def load_checkpoint(path: str, map_location: str | torch.device = "cpu", *, data: bytes | None = None) -> dict[str, Any]:
    """Loads a checkpoint with weights_only=True; raises CheckpointError naming the file and the reason.

    `data`: the file's bytes, already read (and compared across ranks) by the caller; `path` then only names it.
    """
    try:
        state = torch.load(path if data is None else io.BytesIO(data), map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # torch raises UnpicklingError, RuntimeError or EOFError depending on the damage
        text = str(e)
        if "weights_only" in text or "Unsupported global" in text or "GLOBAL" in text:
            raise CheckpointError(
                f"{path}: refused: it is not a weights-only checkpoint (it would run pickled code on load). "
                f"Only load checkpoints you trust. Detail: {text.splitlines()[0] if text else type(e).__name__}"
            ) from e
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({type(e).__name__}: {text[:200]})") from e
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path}: not a trainer checkpoint (no 'model' entry)")
    return state


def load_latest(run_dir: str, map_location: str | torch.device = "cpu") -> tuple[str, dict[str, Any]] | None:
    """The newest checkpoint in `run_dir` that loads, skipping bad ones with a warning; None when there is none.

    Raises CheckpointError when checkpoints exist but none of them loads (never silently starts over).
    """
    candidates = list_checkpoints(run_dir)
    errors = []
    for _, path in candidates:
        try:
            state = load_checkpoint(path, map_location)
        except CheckpointError as e:
            log.warning("WARNING: skipping unusable checkpoint, falling back to an older one: %s", e)
            errors.append(str(e))
            continue
        return path, state
    if errors:
        raise CheckpointError(f"no usable checkpoint in {run_dir}: " + "; ".join(errors))
    return None
