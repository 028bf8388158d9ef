"""The in-process checks of `bench/gpu_check.py`: each takes a shards root and returns (passed, figures as text).

They need CUDA, except `is_420`. Each one says what it found in numbers, so a failing run tells the next person
where to look.
"""

from __future__ import annotations

import io
import tarfile
import time
import warnings

import torch

# Loader modes whose per-batch path differs: translate crops + torch finishing (train, val), DALI-finished crops.
MODES = {
    "train translate": dict(split="train"),
    "train random-resized": dict(split="train", crop="random_resized"),
    "val center": dict(split="val"),
    "val ten-crop": dict(split="val", ten_crop=True),
}
MAX_MEAN_DIFF = 1.0  # 0..255 units: nvJPEG's IDCT and libjpeg-turbo's differ by a level here and there


def is_420(root: str, count: int = 8) -> tuple[bool, str]:
    """Whether the first `count` train JPEGs of the build use 4:2:0 chroma, as `preprocess build-shards` writes."""
    import glob
    import os

    from PIL import Image, JpegImagePlugin

    shard = sorted(glob.glob(os.path.join(root, "train", "*.tar")))[0]
    samplings = []
    with tarfile.open(shard) as tar:
        for member in tar.getmembers():
            if member.name.endswith(".jpg") and len(samplings) < count:
                image = Image.open(io.BytesIO(tar.extractfile(member).read()))
                samplings.append(JpegImagePlugin.get_sampling(image))  # 0: 4:4:4, 1: 4:2:2, 2: 4:2:0
    names = {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}
    found = sorted({names.get(s, str(s)) for s in samplings})
    return samplings == [2] * len(samplings) and len(samplings) > 0, f"{len(samplings)} JPEGs: {', '.join(found)}"


def _loader(root: str, device: str = "gpu", batch_size: int = 64, **options):
    from pipeline import ImageNetLoader

    return ImageNetLoader(root, device=device, batch_size=batch_size, num_threads=4, seed=0, rank=0, world_size=1,
                          **options)  # fmt: skip


def _endless(loader):
    while True:
        yield from loader


def syncs_per_batch(root: str, batches: int = 6) -> tuple[bool, str]:
    """Synchronising CUDA calls torch reports while each mode's loader makes batches (after two warm-up batches)."""
    counts = {}
    for name, options in MODES.items():
        it = _endless(_loader(root, **options))
        next(it), next(it)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                for _ in range(batches):
                    next(it)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        counts[name] = sum("synchroniz" in str(w.message) for w in caught)
    detail = ", ".join(f"{name} {count}" for name, count in counts.items())
    return sum(counts.values()) == 0, f"{detail} (syncs in {batches} batches each; must be 0)"


def _sleep_cycles_per_ms() -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    torch.cuda._sleep(50_000_000)
    end.record()
    end.synchronize()
    return 50_000_000 / start.elapsed_time(end)


def runs_ahead(root: str, busy_ms: float = 500.0, batches: int = 3) -> tuple[bool, str]:
    """While torch's stream is busy for `busy_ms`, the loader must hand out batches without waiting for it: a wait
    anywhere in the per-batch path (a blocking copy, a value read back) would hold each next() until the GPU is free."""
    it = iter(_loader(root, split="train"))
    warm_up = [next(it) for _ in range(3)]
    del warm_up  # their buffers go back to DALI before the GPU is made busy
    cycles = int(busy_ms * _sleep_cycles_per_ms())
    torch.cuda.synchronize()
    torch.cuda._sleep(cycles)
    start = time.perf_counter()
    kept = [next(it) for _ in range(batches)]  # kept: none of their buffers is released while the GPU is busy
    host_ms = 1000 * (time.perf_counter() - start)
    torch.cuda.synchronize()
    del kept
    return host_ms < busy_ms / 2, f"{batches} batches handed out in {host_ms:.0f} ms while the GPU was busy {busy_ms:.0f} ms"


def cpu_vs_gpu_val(root: str) -> tuple[bool, str]:
    """Mean and largest |CPU - GPU| over the val split's center crops (mean image subtracted: 0..255 units)."""
    outputs = {}
    for device in ("cpu", "gpu"):
        outputs[device] = [(x.float().cpu(), y.cpu()) for x, y in _loader(root, device=device, split="val")]
    total, count, largest, labels_equal = 0.0, 0, 0.0, True
    for (a, la), (b, lb) in zip(outputs["cpu"], outputs["gpu"], strict=True):
        labels_equal &= torch.equal(la, lb)
        diff = (a - b).abs()
        total, count, largest = total + diff.sum().item(), count + diff.numel(), max(largest, diff.max().item())
    mean = total / max(count, 1)
    ok = labels_equal and count > 0 and mean < MAX_MEAN_DIFF
    return ok, f"mean {mean:.3f}, max {largest:.0f} over {count // (3 * 224 * 224)} images (must be < {MAX_MEAN_DIFF})"
