"""Train AlexNet on ImageNet shards, top to bottom: config, distributed setup, data, model, optimizer, resume, the
epoch loop, final evaluation and report. The loop bodies live in loop.py; `trainer/main.py` is the file that
`torchrun` (or `python`) runs, and it calls `main` here.
"""

from __future__ import annotations

import logging
import os
import sys
import time

import torch
from torch.nn.parallel import DistributedDataParallel

from pipeline import DistInfo
from pipeline.config import torch_dtype
from pipeline.contract import load_manifest
from trainer import dist, faults, state
from trainer.chance import ChanceDetector
from trainer.checkpoint import load_checkpoint
from trainer.config import AMP_DTYPES, TrainConfig, parse_args
from trainer.data import ResidentBatch, make_loader
from trainer.loop import Progress, StepContext, evaluate, train_one_epoch
from trainer.metrics import MetricsWriter
from trainer.model import build_model, count_parameters
from trainer.plot import plot_run
from trainer.report import write_report
from trainer.rng import seed_everything
from trainer.schedule import LRSchedule

__all__ = ["main", "train", "evaluate_only", "resolve_features"]

log = logging.getLogger("trainer")


def setup_logging(info: DistInfo) -> None:
    """Rank 0 logs; the others only report errors (N ranks repeating every line would bury the one that matters)."""
    level = logging.INFO if info.is_main else logging.ERROR
    logging.basicConfig(level=level, format=f"%(asctime)s [rank {info.rank}] %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stdout, force=True)


def resolve_features(cfg: TrainConfig, info: DistInfo) -> tuple[torch.dtype | None, bool]:
    """AMP and torch.compile apply on CUDA only; on CPU they are switched off, and the log says so.

    On CUDA it also sets the speed switches a GPU run wants: cuDNN benchmarks its convolution algorithms for the
    input shapes (fixed in training), and float32 matmuls (--amp off) run on TF32 tensor cores, as float32
    convolutions already do by default.
    """
    on_cuda = info.device.startswith("cuda")
    if cfg.amp != "off" and not on_cuda:
        log.info("--amp %s ignored on %s (CUDA only)", cfg.amp, info.device)
    if cfg.compile and not on_cuda:
        log.info("--compile ignored on %s (CUDA only)", info.device)
    amp_dtype = torch_dtype(AMP_DTYPES[cfg.amp]) if on_cuda and cfg.amp != "off" else None
    if on_cuda:
        torch.backends.cudnn.benchmark = True
        if amp_dtype is None:
            torch.set_float32_matmul_precision("high")
    return amp_dtype, cfg.compile and on_cuda


def build(cfg: TrainConfig, info: DistInfo, num_classes: int, arch: str | None = None, width: float | None = None):
    """The model on its device, the paper's init seeded identically on every rank."""
    seed_everything(cfg.seed)
    model = build_model(arch or cfg.arch, num_classes, width=width or cfg.width).to(info.device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def train(cfg: TrainConfig, info: DistInfo) -> dict:
    """One training run on this rank, resumed from the run dir's newest checkpoint if it has one; the final results."""
    manifest = load_manifest(cfg.data)
    start_run_dir(cfg, info)
    amp_dtype, use_compile = resolve_features(cfg, info)

    train_loader = make_loader(cfg, info, "train")
    if cfg.synthetic_data:
        train_loader = ResidentBatch(train_loader)
    val_loader = make_loader(cfg, info, "val")

    model = build(cfg, info, manifest.num_classes)
    objs = training_objects(cfg, info, model, train_loader, amp_dtype)
    metrics = MetricsWriter(cfg.out, enabled=info.is_main)
    log.info("%s: %d classes, %s params, world size %d, global batch %d, lr %g (--lr %g for batch 128), %s",
             cfg.arch, manifest.num_classes, f"{count_parameters(model):,}", info.world_size,
             cfg.global_batch(info.world_size), cfg.scaled_lr(info.world_size), cfg.lr, objs.schedule)

    seed_everything(cfg.seed + info.rank)  # dropout masks differ per rank; restored exactly on resume
    resume(cfg, info, objs, metrics)

    net = torch.compile(model) if use_compile else model
    if info.distributed:
        net = DistributedDataParallel(net, device_ids=[info.local_rank] if info.device.startswith("cuda") else None)
    detector = ChanceDetector(manifest.num_classes, steps=cfg.chance_steps, tolerance=cfg.chance_tolerance,
                              dominance=cfg.chance_dominance)
    steps = cfg.epochs * len(train_loader)
    total_steps = min(cfg.max_steps, steps) if cfg.max_steps else steps
    ctx = StepContext(objs.optimizer, objs.schedule, objs.scaler, info, manifest.num_classes, amp_dtype,
                      cfg.channels_last, cfg.log_interval, cfg.max_steps, total_steps, detector, metrics)
    val = run_epochs(cfg, info, objs, net, val_loader, ctx)
    return finish(cfg, info, model, manifest, val, amp_dtype, detector.fired)


def start_run_dir(cfg: TrainConfig, info: DistInfo) -> None:
    """Rank 0 saves the resolved config in the run dir; then every rank checks that it sees that same dir."""
    if info.is_main:
        os.makedirs(cfg.out, exist_ok=True)
        with open(os.path.join(cfg.out, "config.json"), "w") as f:
            f.write(cfg.to_json())
    dist.barrier(info)
    state.check_run_dir_shared(info, cfg.out)


def sgd(params, lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    """The paper's optimizer, as one fused kernel over every parameter instead of a loop of small ops. Fused, it is
    also the only SGD that fp16's GradScaler steps without a host sync: the scaler hands the fused kernel its inf
    check as a device tensor, where an unfused step reads that check back on the host every step."""
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, fused=True)


def training_objects(cfg: TrainConfig, info: DistInfo, model, train_loader, amp_dtype) -> state.TrainObjects:
    """The optimizer, LR schedule and gradient scaler for `model`: with the loader, what a checkpoint covers."""
    steps_per_epoch = len(train_loader)
    lr = cfg.scaled_lr(info.world_size)
    optimizer = sgd(model.parameters(), lr, cfg.momentum, cfg.weight_decay)
    schedule = LRSchedule(optimizer, kind=cfg.schedule, base_lr=lr, total_steps=cfg.epochs * steps_per_epoch,
                          steps_per_epoch=steps_per_epoch, patience=cfg.plateau_patience, factor=cfg.plateau_factor,
                          max_reductions=cfg.plateau_max_reductions, step_epochs=cfg.step_epochs)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype is torch.float16)
    return state.TrainObjects(model, optimizer, schedule, scaler, train_loader, Progress(), cfg.to_dict())


def resume(cfg: TrainConfig, info: DistInfo, objs: state.TrainObjects, metrics: MetricsWriter) -> None:
    """Puts the run back where its newest loadable checkpoint left it, if there is one and --resume allows."""
    resumed = state.find_resume_state(info, cfg.out, cfg.resume)
    if resumed is None:
        return
    progress = objs.progress
    state.restore(objs, resumed[1], info)
    metrics.truncate_after(progress.step)
    metrics.write({"kind": "event", "event": "resumed", "checkpoint": resumed[0], "epoch": progress.epoch,
                   "step": progress.step, "time": time.time()})
    log.info("resumed from %s at epoch %d, step %d", resumed[0], progress.epoch + 1, progress.step)


def run_epochs(cfg: TrainConfig, info: DistInfo, objs: state.TrainObjects, net, val_loader, ctx: StepContext):
    """Trains and evaluates epoch after epoch until --epochs (or --max-steps); returns the last evaluation."""
    progress, steps_per_epoch = objs.progress, len(objs.train_loader)

    def on_step(p: Progress) -> None:
        # Mid-epoch checkpoints; the epoch-end one is written after evaluation instead.
        if cfg.checkpoint_every_steps and p.step % cfg.checkpoint_every_steps == 0 and p.step % steps_per_epoch:
            state.save(objs, info, cfg.out, keep=cfg.keep_checkpoints)
        faults.maybe_fail(info.rank, p.step)

    val = None
    for epoch in range(progress.epoch, cfg.epochs):
        if cfg.max_steps and progress.step >= cfg.max_steps:
            break
        progress.epoch = epoch
        fired_before = ctx.detector.fired
        train_stats = train_one_epoch(net, objs.train_loader, ctx, progress, on_step)
        val = evaluate(objs.model, val_loader, info=info, num_classes=ctx.num_classes, amp_dtype=ctx.amp_dtype,
                       channels_last=cfg.channels_last)
        end_epoch(cfg, info, objs, ctx, train_stats, val, fired_before)
    return val


def end_epoch(cfg: TrainConfig, info: DistInfo, objs: state.TrainObjects, ctx: StepContext, train_stats: dict,
              val: dict, fired_before: int) -> None:
    """After an epoch's evaluation: the chance check, the schedule, the metrics row and log line, the checkpoint."""
    progress, detector, epoch = objs.progress, ctx.detector, objs.progress.epoch  # the epoch just trained
    detector.observe_val(val["confusion"].sum(0), val["loss"])
    if detector.fired > fired_before:
        ctx.metrics.write({"kind": "event", "event": "chance", "epoch": epoch, "step": progress.step,
                           **detector.last, "time": time.time()})
    complete = train_stats.pop("complete")
    if complete:
        objs.schedule.step_epoch(1.0 - val["top1"])
        progress.epoch = epoch + 1
    ctx.metrics.write({"kind": "epoch", "epoch": epoch, "step": progress.step, "lr": objs.schedule.lr, **train_stats,
                       "val_loss": val["loss"], "val_top1": val["top1"], "val_top5": val["top5"],
                       "val_count": val["count"], "at_chance": detector.at_chance, "complete": complete,
                       "time": time.time()})
    log.info("epoch %d done: train loss %.4f top1 %.3f | val loss %.4f top1 %.4f top5 %.4f (%d images) | %.1fs",
             epoch + 1, train_stats["loss"], train_stats["top1"], val["loss"], val["top1"], val["top5"],
             val["count"], train_stats["epoch_time"])
    state.save(objs, info, cfg.out, keep=cfg.keep_checkpoints)
    if info.is_main:
        plot_run(cfg.out)


def finish(cfg, info, model, manifest, val, amp_dtype, chance_warnings: int) -> dict:
    """Final evaluation (center crop, and ten-crop when asked), the per-class report and the curves."""
    if val is None:  # nothing trained in this process (already finished): evaluate the restored weights
        val = evaluate(model, make_loader(cfg, info, "val"), info=info, num_classes=manifest.num_classes,
                       amp_dtype=amp_dtype, channels_last=cfg.channels_last)
    result = {"val_top1": val["top1"], "val_top5": val["top5"], "val_count": val["count"],
              "chance_warnings": chance_warnings}
    confusion, header = val["confusion"], f"center crop {cfg.crop_size}: top-1 {val['top1']:.4f} top-5 {val['top5']:.4f}"
    if cfg.ten_crop:
        ten = evaluate(model, make_loader(cfg, info, "val", ten_crop=True), info=info, num_classes=manifest.num_classes,
                       ten_crop=True, amp_dtype=amp_dtype)
        result.update(ten_crop_top1=ten["top1"], ten_crop_top5=ten["top5"], ten_crop_count=ten["count"])
        confusion, header = ten["confusion"], header + f"\nten-crop: top-1 {ten['top1']:.4f} top-5 {ten['top5']:.4f}"
    if info.is_main:
        os.makedirs(cfg.out, exist_ok=True)
        MetricsWriter(cfg.out, enabled=True).write({"kind": "eval", **result, "time": time.time()})
        report = write_report(cfg.out, confusion, list(manifest.classes), header)
        plot = plot_run(cfg.out) if not cfg.eval_only else None
        log.info("FINAL val (%d images): top-1 %.2f%% top-5 %.2f%%%s", val["count"], 100 * val["top1"], 100 * val["top5"],
                 f" | ten-crop top-1 {100 * result['ten_crop_top1']:.2f}% top-5 {100 * result['ten_crop_top5']:.2f}%"
                 if cfg.ten_crop else "")
        log.info("per-class report: %s%s", report, f" | curves: {plot}" if plot else "")
    return result


def evaluate_only(cfg: TrainConfig, info: DistInfo) -> dict:
    """--eval-only --checkpoint PATH: the checkpoint's arch and width, this command's data and crop."""
    manifest = load_manifest(cfg.data)
    ckpt = load_checkpoint(cfg.checkpoint)
    saved = ckpt.get("config", {})
    model = build(cfg, info, manifest.num_classes, saved.get("arch", cfg.arch), saved.get("width", cfg.width))
    model.load_state_dict(ckpt["model"])
    log.info("evaluating %s (epoch %s, step %s)", cfg.checkpoint, ckpt.get("epoch"), ckpt.get("step"))
    amp_dtype, _ = resolve_features(cfg, info)
    return finish(cfg, info, model, manifest, None, amp_dtype, 0)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv, default_device="cuda" if torch.cuda.is_available() else "cpu")
    info = dist.setup(cfg.device)
    setup_logging(info)
    try:
        evaluate_only(cfg, info) if cfg.eval_only else train(cfg, info)
    finally:
        dist.teardown(info)
    return 0


