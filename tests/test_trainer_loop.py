"""The training loop and the chance detector on in-process stand-in data (unit tests of the loop only)."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from host_sync import HostSyncRecorder, recorded_after_first
from trainer_fixtures import StandInLoader, colour_batches

from pipeline import DistInfo
from trainer.chance import ChanceDetector
from trainer.loop import Progress, StepContext, count_into, evaluate, train_one_epoch
from trainer.metrics import MetricsWriter, read_metrics
from trainer.model import build_model
from trainer.schedule import LRSchedule
from trainer.train import sgd


def _train(kind, tmp_path, *, arch="alexnet-bn", lr=0.1, steps=60, chance_steps=20, classes=3):
    torch.manual_seed(0)
    model = build_model(arch, classes, width=0.0625)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loader = StandInLoader(colour_batches(kind, classes=classes, steps=steps))
    detector = ChanceDetector(classes, steps=chance_steps)
    metrics = MetricsWriter(str(tmp_path), enabled=True)
    ctx = StepContext(opt, LRSchedule(opt, kind="cosine", base_lr=lr, total_steps=10**6, steps_per_epoch=steps),
                      torch.amp.GradScaler("cuda", enabled=False), DistInfo(), classes, log_interval=5,
                      detector=detector, metrics=metrics)
    stats = train_one_epoch(model, loader, ctx, Progress())
    return model, stats, detector, read_metrics(metrics.path)


@pytest.mark.parametrize("kind", ["random-labels", "constant"])
def test_chance_detector_fires_on_unlearnable_data(kind, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        _, _, detector, rows = _train(kind, tmp_path)
    assert detector.fired >= 1 and detector.at_chance
    assert "AT CHANCE LEVEL" in caplog.text and "input normalisation" in caplog.text and "init" in caplog.text
    assert rows[-1]["at_chance"] is True


def test_chance_detector_quiet_on_learnable_data(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        _, stats, detector, rows = _train("learnable", tmp_path)
    assert detector.fired == 0, detector.last
    assert stats["top1"] > 0.6 and not any(r["at_chance"] for r in rows)


def test_detector_window_logic():
    d = ChanceDetector(10, steps=4)
    uniform = torch.full((10,), 3.0)
    assert not d.update(2, 2 * math.log(10), uniform)  # window not full yet
    assert d.update(2, 2 * math.log(10), uniform) and d.at_chance
    assert not d.update(4, 4 * 0.5, uniform) and not d.at_chance  # learned: clears
    assert d.update(4, 4 * 0.5, torch.tensor([30.0] + [0.0] * 9))  # collapsed onto one class
    assert d.fired == 2


def test_step_rows_have_every_key_and_data_wait(tmp_path):
    from trainer.metrics import STEP_KEYS

    _, stats, _, rows = _train("learnable", tmp_path, steps=10)
    assert len(rows) == 2 and all(set(STEP_KEYS) <= set(r) for r in rows)
    assert all(0 <= r["data_wait_frac"] <= 1 for r in rows) and stats["images_per_s"] > 0


def test_evaluate_counts_every_sample_and_ten_crop_averages():
    torch.manual_seed(0)
    model = build_model("alexnet-bn", 3, width=0.0625)
    batches = colour_batches("learnable", steps=3, batch=5) + [(torch.zeros(0, 3, 67, 67), torch.zeros(0).long())]
    center = evaluate(model, batches, info=DistInfo(), num_classes=3)
    assert center["count"] == 15 and center["confusion"].sum() == 15
    tens = [(x.unsqueeze(1).expand(-1, 10, -1, -1, -1), y) for x, y in batches]
    ten = evaluate(model, tens, info=DistInfo(), num_classes=3, ten_crop=True)
    # ten identical crops: averaged softmax gives the same predictions as the center crop
    assert ten["count"] == 15 and ten["top1"] == pytest.approx(center["top1"])
    assert ten["loss"] == pytest.approx(center["loss"], rel=1e-4)


def test_loss_above_chance_and_collapsed_val_count_as_chance():
    d = ChanceDetector(10, steps=4)
    spread = torch.ones(10)
    assert d.update(4, 4 * 3.0, spread)  # confident wrong guesses: loss above ln(10) is no better than chance
    d2 = ChanceDetector(10, steps=4)
    assert not d2.observe_val(spread) and d2.observe_val(torch.tensor([0.0, 50.0] + [0.0] * 8)) and d2.fired == 1


@pytest.mark.parametrize("scaled", [False, True], ids=["unscaled", "fp16-grad-scaler"])
def test_training_steps_and_evaluation_queue_without_a_host_sync(tmp_path, scaled):
    """Between log intervals a step must only queue work: no value read back, no tensor built from host data. Here on
    CPU tensors, the calls that would make the CPU wait for a CUDA GPU are recorded (from the second batch on). With
    the GradScaler that fp16 runs use, the trainer's optimizer must take the scaler's inf check on the device."""
    torch.manual_seed(0)
    classes, steps = 3, 6
    model = build_model("alexnet-bn", classes, width=0.0625)
    opt = sgd(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    recorder = HostSyncRecorder()
    loader = StandInLoader(colour_batches("learnable", steps=steps, batch=4))
    scaler = torch.amp.GradScaler("cpu", enabled=scaled)  # stands in for CUDA's: the same code path
    ctx = StepContext(opt, LRSchedule(opt, kind="cosine", base_lr=0.01, total_steps=100, steps_per_epoch=steps),
                      scaler, DistInfo(), classes, log_interval=100)
    stats = train_one_epoch(model, _Recorded(loader, recorder), ctx, Progress())
    assert stats["steps"] == steps and recorder.calls == []
    assert not scaled or scaler.get_scale() == 2.0**16  # no step found an inf: every step was taken
    val_recorder = HostSyncRecorder()
    val = _Recorded(colour_batches("learnable", steps=3, batch=5), val_recorder)
    result = evaluate(model, val, info=DistInfo(), num_classes=classes)
    assert result["count"] == 15 and val_recorder.calls == []


class _Recorded:
    """A loader whose iteration records host syncs from its second batch on."""

    def __init__(self, loader, recorder):
        self.loader, self.recorder = loader, recorder

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        return recorded_after_first(self.loader, self.recorder)


def test_count_into_counts_like_bincount():
    indices = torch.tensor([4, 0, 4, 2, 4, 0])
    for dtype in (torch.float64, torch.int64):
        counts = torch.zeros(6, dtype=dtype)
        count_into(count_into(counts, indices), indices[:2])
        expected = torch.bincount(indices, minlength=6) + torch.bincount(indices[:2], minlength=6)
        assert torch.equal(counts, expected.to(dtype))
