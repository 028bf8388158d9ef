"""One frozen, typed configuration for a training run; the command line only fills it.

The resolved config is saved as JSON in the run dir and as a plain dict inside every checkpoint (never an
argparse Namespace: `torch.load(weights_only=True)` refuses arbitrary classes; case T3 of docs/RELIABILITY.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["TrainConfig", "get_args_parser", "parse_args", "ARCHS", "SCHEDULES", "AMP_MODES", "AMP_DTYPES",
           "REFERENCE_BATCH", "MIN_CROP"]

ARCHS = ("alexnet", "alexnet-bn")
SCHEDULES = ("plateau", "step", "cosine")
# --amp -> the precision that autocast computes in and that the loader delivers images in on CUDA: a name of
# pipeline.config.DTYPES, the loader's one table of output types ("off" computes and loads in float32).
AMP_DTYPES = {"off": "float32", "bf16": "bfloat16", "fp16": "float16"}
AMP_MODES = tuple(AMP_DTYPES)
# The paper's global batch: --lr is the learning rate for this batch and scales linearly with the real one.
REFERENCE_BATCH = 128
# Smallest crop for which conv1 (11/4) and the three 3/2 max pools still leave at least one pixel.
MIN_CROP = 67


@dataclass(frozen=True)
class TrainConfig:
    data: str = ""
    out: str = "runs/alexnet"
    arch: str = "alexnet"
    width: float = 1.0
    epochs: int = 90
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "plateau"
    plateau_patience: int = 2
    plateau_factor: float = 0.1
    plateau_max_reductions: int = 3
    step_epochs: int = 30
    device: str = "cpu"
    workers: int = 4
    seed: int = 0
    resume: str = ""
    max_steps: int = 0
    eval_only: bool = False
    checkpoint: str = ""
    ten_crop: bool = False
    crop_size: int = 224
    amp: str = "off"
    channels_last: bool = False
    compile: bool = False
    log_interval: int = 10
    checkpoint_every_steps: int = 0
    keep_checkpoints: int = 2
    chance_steps: int = 200
    chance_tolerance: float = 0.05
    chance_dominance: float = 0.9
    synthetic_data: bool = False

    def __post_init__(self):
        checks = {
            "arch": self.arch in ARCHS,
            "schedule": self.schedule in SCHEDULES,
            "amp": self.amp in AMP_MODES,
            "device": self.device in ("cpu", "cuda"),
            "width": self.width > 0,
            "epochs": self.epochs >= 1,
            "batch_size": self.batch_size >= 1,
            "lr": self.lr > 0,
            "crop_size": self.crop_size >= MIN_CROP,
            "log_interval": self.log_interval >= 1,
            "keep_checkpoints": self.keep_checkpoints >= 2,
            "chance_steps": self.chance_steps >= 1,
            "max_steps": self.max_steps >= 0,
            "checkpoint_every_steps": self.checkpoint_every_steps >= 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError("invalid config value(s): " + ", ".join(f"{n}={getattr(self, n)!r}" for n in bad))
        if self.eval_only and not self.checkpoint:
            raise ValueError("--eval-only needs --checkpoint PATH")

    def global_batch(self, world_size: int) -> int:
        return self.batch_size * world_size

    def scaled_lr(self, world_size: int) -> float:
        """The paper's linear rule: --lr is for a global batch of 128 (section 5) and scales with the real one."""
        return self.lr * self.global_batch(world_size) / REFERENCE_BATCH

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> TrainConfig:
        """Strict: an unknown key is an error, so a typo never silently falls back to a default."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(doc) - known)
        if unknown:
            raise ValueError(f"unknown config key(s): {unknown}")
        return cls(**doc)


_HELP = {
    "data": "shards root (local path or fsspec URL) holding manifest.json from `preprocess build-shards` (required)",
    "out": "run dir: config.json, metrics.jsonl, checkpoints, curves.png, report.txt",
    "arch": "alexnet: the paper's net (LRN, N(0, 0.01) init); alexnet-bn: BatchNorm instead of LRN, kaiming init",
    "width": "channel multiplier for every conv and hidden fc layer (1.0 = the paper; small values for tests/demo)",
    "epochs": "epochs to train (the paper: about 90)",
    "batch_size": "batch size PER RANK; the global batch is this times the world size",
    "lr": f"learning rate for a GLOBAL batch of {REFERENCE_BATCH}; scaled linearly to the real global batch",
    "momentum": "SGD momentum (the paper: 0.9)",
    "weight_decay": "SGD weight decay (the paper: 5e-4)",
    "schedule": "plateau: lr/10 when val top-1 error stops improving (the paper); step: lr/10 every --step-epochs; "
    "cosine: per-step cosine decay to 0",
    "plateau_patience": "epochs without a val top-1 improvement before the plateau schedule divides the lr",
    "plateau_factor": "factor the plateau schedule multiplies the lr by",
    "plateau_max_reductions": "how many times the plateau schedule reduces the lr at most (the paper: 3)",
    "step_epochs": "epochs between lr divisions for --schedule step",
    "device": "cpu or cuda (NCCL on GPUs, gloo on CPU)",
    "workers": "loader threads per rank",
    "seed": "seed for init, dropout and the loader's shuffling",
    "resume": "checkpoint file to resume from; without it a run dir that holds checkpoints resumes automatically",
    "max_steps": "stop after this many optimizer steps in total (smoke runs; 0 = no limit)",
    "eval_only": "evaluate --checkpoint on the val split and exit",
    "checkpoint": "checkpoint file for --eval-only",
    "ten_crop": "also evaluate with ten crops (4 corners + center, and their flips), softmax averaged (paper 4.1)",
    "crop_size": f"train/val crop side (the paper: 224 or 227; at least {MIN_CROP})",
    "amp": "mixed precision on CUDA: off, bf16 or fp16 (fp16 with a GradScaler); ignored on CPU",
    "channels_last": "channels_last memory format for model and images",
    "compile": "torch.compile the model (CUDA only; ignored on CPU)",
    "log_interval": "optimizer steps between console lines and metrics rows",
    "checkpoint_every_steps": "also checkpoint every N steps (mid-epoch resume through the loader's state; 0 = off)",
    "keep_checkpoints": "checkpoints kept in the run dir (at least 2, so a corrupt latest one has a fallback)",
    "chance_steps": "steps at chance level (loss near ln(classes) or one class predicted) before a LOUD warning",
    "chance_tolerance": "relative distance from ln(classes) that still counts as chance loss",
    "chance_dominance": "fraction of predictions going to a single class that counts as collapsed",
    "synthetic_data": "benchmark only: train on the loader's first batch, resident, for every step (the speed of a "
    "perfect loader; bench/trainer_bench.py compares it with the real one)",
}


def get_args_parser(default_device: str = "cpu") -> argparse.ArgumentParser:
    """A parser built from TrainConfig's fields, so the two never drift apart."""
    parser = argparse.ArgumentParser(
        prog="trainer/main.py",
        description="Train AlexNet on ImageNet shards (single process, or DDP under torchrun).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    defaults = TrainConfig(device=default_device)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        kwargs: dict[str, Any] = {"default": default, "help": _HELP[f.name]}
        if isinstance(default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = type(default)
        if f.name == "data":
            kwargs.update(required=True, default=argparse.SUPPRESS)
        if f.name in ("arch", "schedule", "amp", "device"):
            kwargs["choices"] = {"arch": ARCHS, "schedule": SCHEDULES, "amp": AMP_MODES, "device": ("cpu", "cuda")}[f.name]
        parser.add_argument(flag, **kwargs)
    return parser


def parse_args(argv: list[str] | None = None, default_device: str = "cpu") -> TrainConfig:
    args = get_args_parser(default_device).parse_args(argv)
    try:
        cfg = TrainConfig(**vars(args))
    except ValueError as e:
        get_args_parser(default_device).error(str(e))
    return cfg
