"""The trainer's CUDA settings (checked on any machine) and its host-sync-free steps (CUDA only; `make gpu-check`
runs them). The CPU tests in test_trainer_loop.py hold the same loop to "no host sync" with a dispatch recorder."""

from __future__ import annotations

import warnings

import pytest
import torch
from trainer_fixtures import colour_batches

from pipeline import DistInfo
from trainer.config import TrainConfig
from trainer.loop import Progress, StepContext, evaluate, train_one_epoch
from trainer.model import build_model
from trainer.schedule import LRSchedule
from trainer.train import resolve_features, sgd

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def restored_switches():
    saved = torch.backends.cudnn.benchmark, torch.get_float32_matmul_precision()
    yield
    torch.backends.cudnn.benchmark = saved[0]
    torch.set_float32_matmul_precision(saved[1])


@pytest.mark.parametrize("amp, tf32", [("off", True), ("bf16", False)])
def test_cuda_runs_benchmark_cudnn_and_use_tf32_without_amp(restored_switches, amp, tf32):
    torch.backends.cudnn.benchmark = False
    torch.set_float32_matmul_precision("highest")
    resolve_features(TrainConfig(data="shards", amp=amp, device="cpu"), DistInfo(device="cpu"))
    assert not torch.backends.cudnn.benchmark and torch.get_float32_matmul_precision() == "highest"  # CPU: untouched
    amp_dtype, _ = resolve_features(TrainConfig(data="shards", amp=amp, device="cuda"), DistInfo(device="cuda:0"))
    assert torch.backends.cudnn.benchmark and (amp_dtype is None) == tf32
    assert torch.get_float32_matmul_precision() == ("high" if tf32 else "highest")


class SyncCounted:
    """A loader over resident batches whose iteration counts, from its second batch to its end, the synchronising
    CUDA calls torch reports (set_sync_debug_mode): the steps' own syncs, without the first step's set-up and
    without what the caller does after the loop."""

    def __init__(self, batches):
        self.batches, self.syncs = batches, None

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        it = iter(self.batches)
        yield next(it)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                yield from it
            finally:
                torch.cuda.set_sync_debug_mode("default")
        self.syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message)]


@needs_gpu
@pytest.mark.parametrize("amp_dtype", [None, torch.bfloat16, torch.float16])
def test_cuda_steps_and_evaluation_queue_without_a_host_sync(amp_dtype):
    """fp16 steps through the GradScaler, which the trainer's fused SGD lets step without reading its inf check."""
    device, classes, steps = "cuda:0", 3, 6
    torch.manual_seed(0)
    model = build_model("alexnet-bn", classes, width=0.0625).to(device).to(memory_format=torch.channels_last)
    opt = sgd(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    batches = [(x.to(device), y.to(device)) for x, y in colour_batches("learnable", steps=steps, batch=4)]
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype is torch.float16)
    ctx = StepContext(opt, LRSchedule(opt, kind="cosine", base_lr=0.01, total_steps=100, steps_per_epoch=steps),
                      scaler, DistInfo(device=device), classes, amp_dtype, channels_last=True,
                      log_interval=100)  # fmt: skip
    train = SyncCounted(batches)
    assert train_one_epoch(model, train, ctx, Progress())["steps"] == steps and train.syncs == []
    val = SyncCounted(batches[:3])
    assert evaluate(model, val, info=DistInfo(device=device), num_classes=classes, amp_dtype=amp_dtype)["count"] == 12
    assert val.syncs == []
