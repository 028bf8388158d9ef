"""The two loop bodies: one training epoch and one evaluation pass. Dependencies come in as parameters.

Per-step values stay on the device and are synchronised once per log interval (`.item()` is a CPU-GPU sync
point); at that moment they are also summed over ranks, so rank 0 logs global running values. Between log
intervals a step only queues work: no value is read back and no tensor is built from host data (on CUDA,
`torch.tensor(n, device=...)` copies from pageable memory and `bincount` reads its input's range back, and either
makes the CPU wait for the GPU every step).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline import DistInfo
from trainer import dist
from trainer.chance import ChanceDetector
from trainer.data import timed
from trainer.metrics import MetricsWriter, topk_correct

__all__ = ["Progress", "StepContext", "train_one_epoch", "train_step", "TrainTally", "evaluate", "autocast", "count_into"]

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """Where the run stands: the epoch being trained (0-based) and optimizer steps done in total."""

    epoch: int = 0
    step: int = 0
    # This rank's running train sums for the epoch in progress (loss, top1, top5, samples, steps), so that a
    # mid-epoch resume reports the same epoch averages as an uninterrupted run. None: the epoch starts fresh.
    epoch_sums: torch.Tensor | None = None


@dataclass
class StepContext:
    """What a training step needs besides the model and the data."""

    optimizer: torch.optim.Optimizer
    schedule: Any  # trainer.schedule.LRSchedule
    scaler: torch.amp.GradScaler
    info: DistInfo
    num_classes: int
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    log_interval: int = 10
    max_steps: int = 0  # 0: no limit
    total_steps: int = 0  # for the ETA
    detector: ChanceDetector | None = None
    metrics: MetricsWriter | None = None


def autocast(device: str, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=dtype)


def _prepare(images: torch.Tensor, labels: torch.Tensor, device: str, channels_last: bool):
    images = images.to(device, non_blocking=True)
    if channels_last and images.dim() == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, labels.to(device, non_blocking=True).long()


def train_one_epoch(
    model: nn.Module,
    loader: Iterable,
    ctx: StepContext,
    progress: Progress,
    on_step: Callable[[Progress], None] | None = None,
) -> dict[str, Any]:
    """Trains until the loader is exhausted (or ctx.max_steps); returns this epoch's train averages.

    `on_step(progress)` runs after every step (the caller's mid-epoch checkpoints and injected faults). "complete"
    in the result says whether the loader finished the epoch (False when --max-steps stopped it).
    """
    model.train()
    steps_per_epoch = len(loader)
    tally = TrainTally(ctx, progress)
    complete = True
    for data_wait, (images, labels) in timed(loader):
        images, labels = _prepare(images, labels, ctx.info.device, ctx.channels_last)
        loss, logits = train_step(model, images, labels, ctx)
        progress.step += 1
        tally.add(loss, logits, labels, data_wait)
        if progress.step % ctx.log_interval == 0:
            tally.end_interval(progress)
        if on_step is not None:
            on_step(progress)
        # Stop early for --max-steps, but never on an epoch's last batch: the loader must see the epoch end, so
        # that its saved state points at the next epoch rather than at an exhausted one.
        if ctx.max_steps and progress.step >= ctx.max_steps and progress.step % steps_per_epoch:
            complete = False
            break
    return tally.end_epoch(progress, complete)


def train_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, ctx: StepContext):
    """One optimizer step on a batch already on the device; returns (loss, logits), still on the device."""
    with autocast(ctx.info.device, ctx.amp_dtype):
        logits = model(images)
        loss = F.cross_entropy(logits, labels)
    ctx.optimizer.zero_grad(set_to_none=True)
    ctx.scaler.scale(loss).backward()
    ctx.scaler.step(ctx.optimizer)
    ctx.scaler.update()
    ctx.schedule.step_batch()
    return loss, logits


class TrainTally:
    """An epoch's running train sums (loss, top1, top5, samples, steps) and data-wait times, kept on the device.

    Two sets of sums: the log interval's, reduced over ranks and logged by `end_interval`, and the epoch's, which
    live in `progress.epoch_sums` and are updated in place every step, so that a checkpoint takes them as they are.
    """

    def __init__(self, ctx: StepContext, progress: Progress):
        self.ctx = ctx
        device = ctx.info.device
        self.interval = self._zeros()
        self.epoch = self._zeros() if progress.epoch_sums is None else progress.epoch_sums.to(device)
        progress.epoch_sums = self.epoch
        self.preds = torch.zeros(ctx.num_classes, dtype=torch.float64, device=device)  # predictions per class
        self.wait = self.interval_wait = 0.0
        self.epoch_start = self.interval_start = time.perf_counter()
        self.images = 0  # this process's images in this call (a resumed epoch's rate covers only what it ran)

    def _zeros(self) -> torch.Tensor:
        return torch.zeros(5, dtype=torch.float64, device=self.ctx.info.device)

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, data_wait: float) -> None:
        device = self.ctx.info.device
        with torch.no_grad():
            top1, top5 = topk_correct(logits.float(), labels)
            n = labels.shape[0]
            step_sums = torch.stack([loss.detach().double() * n, top1.double(), top5.double(),
                                     torch.full((), n, dtype=torch.float64, device=device),
                                     torch.ones((), dtype=torch.float64, device=device)])
            self.interval += step_sums
            self.epoch += step_sums
            count_into(self.preds, logits.argmax(1))
        self.wait += data_wait
        self.interval_wait += data_wait
        self.images += n

    def end_interval(self, progress: Progress) -> None:
        elapsed = time.perf_counter() - self.interval_start
        _log_interval(self.ctx, progress, self.interval, self.preds, self.interval_wait, elapsed)
        self.interval, self.interval_wait, self.interval_start = self._zeros(), 0.0, time.perf_counter()
        self.preds.zero_()

    def end_epoch(self, progress: Progress, complete: bool) -> dict[str, Any]:
        """The epoch's averages over all ranks; an epoch stopped early keeps its sums in `progress` for a resume."""
        progress.epoch_sums = None if complete else self.epoch
        epoch_sums = dist.all_reduce_sum(self.ctx.info, self.epoch.clone())
        elapsed = time.perf_counter() - self.epoch_start
        loss_sum, c1, c5, count, steps = epoch_sums.tolist()
        world_size = self.ctx.info.world_size
        return {
            "loss": loss_sum / max(count, 1),
            "top1": c1 / max(count, 1),
            "top5": c5 / max(count, 1),
            "images_per_s": self.images * world_size / max(elapsed, 1e-9),  # train batches are equal on all ranks
            "data_wait_frac": self.wait / max(elapsed, 1e-9),
            "steps": int(round(steps / world_size)),
            "epoch_time": elapsed,
            "complete": complete,
        }


def count_into(counts: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """counts[i] += occurrences of i in `indices`, in place and on the device (what `bincount` gives, without its
    read-back of the indices' range)."""
    return counts.index_add_(0, indices, torch.ones_like(indices, dtype=counts.dtype))


def _log_interval(ctx: StepContext, progress: Progress, sums: torch.Tensor, preds: torch.Tensor, wait: float,
                  elapsed: float) -> None:
    """Reduces an interval's sums over ranks, feeds the chance detector, writes a row and a console line."""
    sums = dist.all_reduce_sum(ctx.info, sums.clone())
    dist.all_reduce_sum(ctx.info, preds)
    loss_sum, c1, c5, count, steps = sums.tolist()
    steps = int(round(steps / ctx.info.world_size))
    if ctx.detector is not None:
        ctx.detector.update(steps, loss_sum / max(count, 1) * steps, preds)
    lr = ctx.schedule.lr
    row = {
        "kind": "step", "epoch": progress.epoch, "step": progress.step, "loss": loss_sum / max(count, 1), "lr": lr,
        "top1": c1 / max(count, 1), "top5": c5 / max(count, 1), "images_per_s": count / max(elapsed, 1e-9),
        "data_wait_frac": min(1.0, wait / max(elapsed, 1e-9)),
        "at_chance": bool(ctx.detector.at_chance) if ctx.detector is not None else False, "time": time.time(),
    }
    if ctx.metrics is not None:
        ctx.metrics.write(row)
    if ctx.info.is_main:
        remaining = max(0, (ctx.total_steps or progress.step) - progress.step)
        eta = remaining * elapsed / max(steps, 1)
        log.info("epoch %d step %d loss %.4f lr %.3g top1 %.3f %.0f img/s data-wait %.0f%% ETA %s",
                 progress.epoch + 1, progress.step, row["loss"], lr, row["top1"], row["images_per_s"],
                 100 * row["data_wait_frac"], _hms(eta))


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600:d}:{s // 60 % 60:02d}:{s % 60:02d}"


@torch.inference_mode()
def evaluate(model: nn.Module, loader: Iterable, *, info: DistInfo, num_classes: int, ten_crop: bool = False,
             amp_dtype: torch.dtype | None = None, channels_last: bool = False) -> dict[str, Any]:
    """Exact val loss/top-1/top-5 over ALL ranks, and the confusion matrix (rows: true class).

    Pass the unwrapped model (not DDP): ranks may get different batch counts (the loader trims padding so
    every sample is seen exactly once), and DDP's forward must not wait for a rank that has no batch.
    With `ten_crop` the loader yields [B, 10, 3, c, c]; the softmax outputs of the 10 crops are averaged (4.1).
    """
    model.eval()
    device = info.device
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1, top5, n
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
    for images, labels in loader:
        if labels.numel() == 0:
            continue
        images, labels = _prepare(images, labels, device, channels_last and not ten_crop)
        with autocast(device, amp_dtype):
            if ten_crop:
                b, crops = images.shape[:2]
                probs = model(images.flatten(0, 1)).float().softmax(1).view(b, crops, -1).mean(1)
                loss = F.nll_loss(probs.clamp_min(1e-12).log(), labels, reduction="sum")
                scores = probs
            else:
                scores = model(images).float()
                loss = F.cross_entropy(scores, labels, reduction="sum")
        top1, top5 = topk_correct(scores, labels)
        sums += torch.stack([loss.double(), top1.double(), top5.double(),
                             torch.full((), labels.shape[0], dtype=torch.float64, device=device)])
        count_into(confusion, labels * num_classes + scores.argmax(1))
    dist.all_reduce_sum(info, sums)
    dist.all_reduce_sum(info, confusion)
    loss_sum, c1, c5, count = sums.tolist()
    return {
        "loss": loss_sum / max(count, 1),
        "top1": c1 / max(count, 1),
        "top5": c5 / max(count, 1),
        "count": int(count),
        "confusion": confusion.view(num_classes, num_classes).cpu(),
    }
