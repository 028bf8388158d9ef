"""Does the loader keep a GPU busy? Loader throughput and the data-wait share of real AlexNet training steps.

    python bench/gpu_bench.py shards/                      # any CUDA machine; shards from `preprocess build-shards`
    python bench/gpu_bench.py                              # a generated sample, a whole number of batches
    python bench/gpu_bench.py shards/ --batch-size 256 --threads 8 --steps 200

Prints, in one run on one GPU:
- the loader alone (`device="gpu"`: nvJPEG / hardware "mixed" decode + GPU augmentation), images/s;
- the baseline: AlexNet training steps (bf16 autocast, channels_last, SGD) on one batch already resident on the GPU,
  i.e. the speed with a perfect loader, images/s;
- the same steps fed by the loader, images/s, their ratio to the baseline, and the fraction of step time spent
  waiting in `next(loader)`. The loader keeps up when that fraction is small and the ratio is close to 1.

This is the same `ImageNetLoader` graph the CPU tests run; only `device` differs. `--device cpu` runs the same
script on the CPU (DALI CPU operators, CPU bf16 autocast): the figures then mean little, but CI runs it that way
so that the script itself cannot rot on machines without a GPU.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from samples import sample_build  # noqa: E402

from pipeline import ImageNetLoader  # noqa: E402
from pipeline.contract import load_manifest  # noqa: E402
from trainer.model import build_model  # noqa: E402
from trainer.train import sgd  # noqa: E402


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def batches(loader):
    """Endless batches: epochs follow each other, as in training."""
    while True:
        yield from loader


def sample_per_class(batch_size: int, classes: int = 10, at_least: int = 1000) -> int:
    """Images per class of the default sample: at least `at_least` in all, and a whole number of batches, so that no
    partial batch is dropped (the loader would still decode it, and the bench would understate the loader)."""
    step = math.lcm(batch_size, classes) // classes
    return step * max(1, math.ceil(at_least / classes / step))


def dropped_note(loader) -> str | None:
    """A line for the output when the train loader drops a partial batch per epoch, else None."""
    plan = loader.plan
    dropped = plan.rank_samples - plan.batches * plan.batch_size
    if dropped <= 0:
        return None
    return (f"note: {dropped} of {plan.rank_samples} train images per epoch fall in a partial batch that the loader "
            f"reads, decodes and drops: 'loader alone' understates it by up to {dropped / plan.rank_samples:.0%} "
            "(choose a batch size that divides the split)")  # fmt: skip


def loader_rate(it, steps: int, device: str) -> float:
    for _ in range(2):  # warm-up: pipeline start, decoder allocations
        next(it)
    sync(device)
    count = 0
    start = time.perf_counter()
    for _ in range(steps):
        images, _ = next(it)
        count += images.shape[0]
    sync(device)
    return count / (time.perf_counter() - start)


def train_rate(model, optimizer, next_batch, steps: int, device: str) -> tuple[float, float]:
    """(images/s, fraction of wall time spent in next_batch) for `steps` AlexNet training steps."""
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(images, labels):
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = loss_fn(model(images.contiguous(memory_format=torch.channels_last)), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(2):
        step(*next_batch())
    sync(device)
    waited, count = 0.0, 0
    start = time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        images, labels = next_batch()
        waited += time.perf_counter() - t0
        step(images, labels)
        count += images.shape[0]
    sync(device)
    return count / (time.perf_counter() - start), waited / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", nargs="?", help="shards root (default: the demo's generated sample)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--crop-size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=min(8, os.cpu_count() or 1), help="DALI CPU threads")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: a smoke run of this script")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_bench needs a CUDA GPU (the CPU path is measured by bench/loader_bench.py)")

    root = args.root or sample_build(sample_per_class(args.batch_size), val_per_class=20, shard_size=128)
    torch.backends.cudnn.benchmark = True
    loader_device = "gpu" if args.device == "cuda" else "cpu"
    loader = ImageNetLoader(root, split="train", batch_size=args.batch_size, device=loader_device,
                            crop_size=args.crop_size, num_threads=args.threads, seed=0, rank=0, world_size=1)  # fmt: skip
    model = build_model("alexnet", load_manifest(root).num_classes).to(args.device)
    model = model.to(memory_format=torch.channels_last)
    optimizer = sgd(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)  # the trainer's

    it = batches(loader)
    alone = loader_rate(it, args.steps, args.device)
    resident = tuple(t.clone() for t in next(it))
    ideal, _ = train_rate(model, optimizer, lambda: resident, args.steps, args.device)
    fed, wait = train_rate(model, optimizer, lambda: next(it), args.steps, args.device)

    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU (smoke run)"
    print(f"{name}, batch {args.batch_size}, crop {args.crop_size}, {args.threads} DALI threads")
    print(f"{'contender':52s} {'images/s':>10s}")
    what = "mixed decode + GPU augmentation" if args.device == "cuda" else "CPU decode + augmentation"
    print(f"{'loader alone (' + what + ')':52s} {alone:10.0f}")
    print(f"{'baseline: AlexNet bf16 steps on a resident batch':52s} {ideal:10.0f}")
    print(f"{'AlexNet bf16 steps fed by the loader':52s} {fed:10.0f}")
    print()
    print(f"fed / resident: {fed / ideal:.2f}   data-wait fraction of step time: {wait:.1%}   (the loader keeps up: < 10%)")
    note = dropped_note(loader)
    if note:
        print(note)


if __name__ == "__main__":
    main()
