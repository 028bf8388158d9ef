"""Detects a run that sits at chance level and says so LOUDLY instead of hiding it.

The known failure of naive AlexNet re-implementations: with N(0, 0.01) init and unnormalised inputs the net
predicts one constant class and the loss stays at ln(classes) (or above it, when the constant guess is a
confident one). Over a window of the last `steps` steps, the run is "at chance" when the mean loss has not
come down below ln(C) by more than `tolerance * ln(C)`, OR when a single class gets at
least `dominance` of all predictions (collapsed outputs, as with constant images). The warning fires when
the run enters that state (again only if it recovered and fell back); the state goes into every metrics row.
"""

from __future__ import annotations

import logging
import math
from collections import deque

import torch

__all__ = ["ChanceDetector", "chance_warning"]

log = logging.getLogger(__name__)


def chance_warning(num_classes: int, where: str, mean_loss: float, dominant: float) -> str:
    bar = "!" * 100
    return (
        f"\n{bar}\n"
        f"!!! TRAINING IS AT CHANCE LEVEL {where}: mean loss {mean_loss:.4f} vs ln({num_classes}) = "
        f"{math.log(num_classes):.4f}; {dominant:.0%} of predictions go to a single class.\n"
        "!!! The net is not learning: its loss is no better than a uniform guess, or it predicts one class for all.\n"
        "!!! Usual fixes: (1) init: the paper's N(0, 0.01) with biases 1 can stall; try --arch alexnet-bn (kaiming);\n"
        "!!!              (2) input normalisation: check the loader subtracts the mean (and scales) the images;\n"
        "!!!              (3) learning rate: too high diverges into one class, too low never leaves chance; remember\n"
        "!!!                  --lr is for a global batch of 128 and is scaled linearly; (4) labels: do they match images?\n"
        f"{bar}"
    )


class ChanceDetector:
    def __init__(self, num_classes: int, *, steps: int, tolerance: float = 0.05, dominance: float = 0.9):
        self.num_classes = num_classes
        self.steps = steps
        self.chance_loss = math.log(num_classes)
        self.tolerance = tolerance
        self.dominance = dominance
        self._chunks: deque[tuple[int, float, torch.Tensor]] = deque()  # (steps, loss sum, prediction counts)
        self._window_steps = 0
        self.at_chance = False
        self.fired = 0  # number of warnings issued
        self.last = {"mean_loss": float("nan"), "dominant": float("nan")}

    def __repr__(self) -> str:
        return f"ChanceDetector(classes={self.num_classes}, steps={self.steps}, tolerance={self.tolerance})"

    def observe_val(self, pred_counts: torch.Tensor, val_loss: float = float("nan")) -> bool:
        """Val predictions per class (eval mode, no dropout): all in one class means collapsed outputs."""
        counts = pred_counts.detach().to("cpu", torch.float64)
        dominant = float(counts.max() / counts.sum().clamp(min=1))
        if dominant >= self.dominance and not self.at_chance:
            self.at_chance = True
            self.fired += 1
            self.last = {"mean_loss": val_loss, "dominant": dominant}
            log.warning(chance_warning(self.num_classes, "on the val split", val_loss, dominant))
            return True
        return False

    def update(self, steps: int, loss_sum: float, pred_counts: torch.Tensor) -> bool:
        """Adds `steps` steps (their summed loss and a per-class count of argmax predictions).

        Returns True when this update raised a warning.
        """
        self._chunks.append((steps, float(loss_sum), pred_counts.detach().to("cpu", torch.float64)))
        self._window_steps += steps
        # Keep just enough chunks to cover the window.
        while self._chunks and self._window_steps - self._chunks[0][0] >= self.steps:
            self._window_steps -= self._chunks.popleft()[0]
        if self._window_steps < self.steps:
            return False
        mean_loss = sum(c[1] for c in self._chunks) / self._window_steps
        counts = sum(c[2] for c in self._chunks)
        dominant = float(counts.max() / counts.sum().clamp(min=1))
        self.last = {"mean_loss": mean_loss, "dominant": dominant}
        near = mean_loss >= (1.0 - self.tolerance) * self.chance_loss  # at or above chance: nothing learned
        collapsed = dominant >= self.dominance
        was = self.at_chance
        self.at_chance = near or collapsed
        if self.at_chance and not was:
            self.fired += 1
            log.warning(chance_warning(self.num_classes, f"for the last {self._window_steps} steps", mean_loss, dominant))
            return True
        return False
