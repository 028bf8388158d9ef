"""Learning-rate schedules with a state dict that is weights-only safe (plain numbers).

- plateau (the paper, section 5): divide by 10 when the validation top-1 error stops improving for
  `patience` epochs, at most `max_reductions` times (the paper reduced it 3 times in about 90 epochs).
- step: divide by 10 every `step_epochs` epochs.
- cosine: per-step cosine decay from the base lr to 0 over the whole run (short runs such as the demo).
The base lr is already scaled to the global batch (config.scaled_lr).
"""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["LRSchedule"]


class LRSchedule:
    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        kind: str,
        base_lr: float,
        total_steps: int,
        steps_per_epoch: int,
        patience: int = 2,
        factor: float = 0.1,
        max_reductions: int = 3,
        step_epochs: int = 30,
    ):
        if kind not in ("plateau", "step", "cosine"):
            raise ValueError(f"unknown schedule {kind!r}")
        self.optimizer = optimizer
        self.kind = kind
        self.base_lr = base_lr
        self.total_steps = max(1, total_steps)
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.patience = patience
        self.factor = factor
        self.max_reductions = max_reductions
        self.step_epochs = step_epochs
        self.step_count = 0
        self.scale = 1.0
        self.best_error = math.inf
        self.bad_epochs = 0
        self.reductions = 0
        self._apply()

    def __repr__(self) -> str:
        return f"LRSchedule(kind={self.kind!r}, base_lr={self.base_lr:g}, total_steps={self.total_steps})"

    @property
    def lr(self) -> float:
        if self.kind == "cosine":
            progress = min(1.0, self.step_count / self.total_steps)
            return self.base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
        if self.kind == "step":
            return self.base_lr * self.factor ** (self.step_count // (self.step_epochs * self.steps_per_epoch))
        return self.base_lr * self.scale

    def _apply(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr

    def step_batch(self) -> None:
        """After each optimizer step."""
        self.step_count += 1
        self._apply()

    def step_epoch(self, val_top1_error: float | None) -> bool:
        """After each epoch's evaluation; returns True when the plateau rule reduced the lr."""
        if self.kind != "plateau" or val_top1_error is None:
            return False
        if val_top1_error < self.best_error - 1e-4:
            self.best_error = val_top1_error
            self.bad_epochs = 0
            return False
        self.bad_epochs += 1
        if self.bad_epochs > self.patience and self.reductions < self.max_reductions:
            self.scale *= self.factor
            self.reductions += 1
            self.bad_epochs = 0
            self._apply()
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        keys = ("kind", "base_lr", "step_count", "scale", "best_error", "bad_epochs", "reductions")
        return {k: getattr(self, k) for k in keys}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["kind"] != self.kind:
            raise ValueError(f"checkpoint schedule is {state['kind']!r}, this run uses {self.kind!r}")
        for k in ("step_count", "scale", "best_error", "bad_epochs", "reductions"):
            setattr(self, k, state[k])
        self._apply()
