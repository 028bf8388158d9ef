"""Metrics as JSON lines (one row per logging step, per epoch, per evaluation, per event) and accuracy helpers.

Rows carry a "kind": "step" (train running values over the last log interval), "epoch" (train averages and
exact val results reduced over all ranks), "eval" (--eval-only), "event" (chance warnings, resumes).
Only rank 0 writes. On resume, rows newer than the checkpoint's step are dropped, so a restarted run's
file reads as if it had never stopped.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import torch

__all__ = ["MetricsWriter", "topk_correct", "STEP_KEYS", "EPOCH_KEYS", "METRICS_NAME", "read_metrics"]

METRICS_NAME = "metrics.jsonl"
STEP_KEYS = ("kind", "epoch", "step", "loss", "lr", "top1", "top5", "images_per_s", "data_wait_frac", "at_chance", "time")
EPOCH_KEYS = (
    "kind", "epoch", "step", "loss", "lr", "top1", "top5", "images_per_s", "data_wait_frac",
    "val_loss", "val_top1", "val_top5", "val_count", "epoch_time", "time",
)


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[torch.Tensor]:
    """Number of samples whose label is among the top-k predictions, per k (k capped at the class count)."""
    if logits.shape[0] == 0:
        return [torch.zeros((), device=logits.device) for _ in ks]
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top.eq(labels.view(-1, 1))
    return [hits[:, : min(k, top.shape[1])].any(dim=1).sum() for k in ks]


def _clean(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    return value


class MetricsWriter:
    def __init__(self, run_dir: str, *, enabled: bool):
        self.path = os.path.join(run_dir, METRICS_NAME)
        self.enabled = enabled

    def __repr__(self) -> str:
        return f"MetricsWriter({self.path!r}, enabled={self.enabled})"

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({k: _clean(v) for k, v in row.items()}) + "\n")

    def truncate_after(self, step: int) -> None:
        """Drops rows with a step beyond `step` (work a resumed run will redo)."""
        if not self.enabled or not os.path.exists(self.path):
            return
        rows = read_metrics(self.path)
        kept = [r for r in rows if r.get("step", 0) <= step]
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)
        os.replace(tmp, self.path)


def read_metrics(path: str) -> list[dict[str, Any]]:
    """Rows of a metrics file; a torn last line (crash mid-write) is ignored."""
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows
