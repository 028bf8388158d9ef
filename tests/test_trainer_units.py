"""Config, schedules, metrics and the per-class report: pure units, no process group."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from trainer.config import TrainConfig, get_args_parser, parse_args
from trainer.metrics import MetricsWriter, read_metrics, topk_correct
from trainer.report import classification_report_from_confusion, write_report
from trainer.schedule import LRSchedule


def test_defaults_are_the_paper_recipe():
    cfg = TrainConfig(data="x")
    assert (cfg.arch, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.epochs, cfg.schedule) == (
        "alexnet", 0.01, 0.9, 5e-4, 90, "plateau")
    assert cfg.scaled_lr(1) == pytest.approx(0.01)  # 128 on one rank
    assert TrainConfig(data="x", batch_size=64).scaled_lr(4) == pytest.approx(0.02)  # global 256


def test_help_lists_every_option_with_its_default(capsys):
    with pytest.raises(SystemExit):
        get_args_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    for flag in ("--data", "--out", "--arch", "--epochs", "--batch-size", "--lr", "--device", "--workers", "--seed",
                 "--resume", "--max-steps", "--eval-only", "--checkpoint", "--ten-crop", "--crop-size", "--width",
                 "--schedule", "--amp", "--channels-last", "--compile", "--log-interval", "--checkpoint-every-steps",
                 "--chance-steps"):
        assert flag in text
    words = " ".join(text.split())
    assert "GLOBAL batch of 128; scaled linearly to the real global batch (default: 0.01)" in words


def test_config_roundtrip_and_unknown_keys_fail():
    cfg = parse_args(["--data", "d", "--width", "0.5", "--ten-crop"])
    assert TrainConfig.from_dict(json.loads(cfg.to_json())) == cfg
    with pytest.raises(ValueError, match="lrr"):
        TrainConfig.from_dict({**cfg.to_dict(), "lrr": 1})


@pytest.mark.parametrize("bad", [["--crop-size", "32"], ["--width", "0"], ["--eval-only"], []])
def test_bad_values_are_rejected(bad, capsys):
    args = bad if bad == [] else ["--data", "d", *bad]
    with pytest.raises(SystemExit):
        parse_args(args)


def _opt():
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)


def test_plateau_divides_by_ten_after_patience_and_at_most_three_times():
    opt = _opt()
    s = LRSchedule(opt, kind="plateau", base_lr=0.01, total_steps=100, steps_per_epoch=10, patience=1)
    assert not s.step_epoch(0.5)
    assert not s.step_epoch(0.5)  # first bad epoch: within patience
    assert s.step_epoch(0.5) and opt.param_groups[0]["lr"] == pytest.approx(0.001)
    assert not s.step_epoch(0.4)  # improvement resets the count
    for _ in range(20):
        s.step_epoch(0.4)
    assert s.reductions == 3 and s.lr == pytest.approx(1e-5)


def test_cosine_and_step_and_state_roundtrip():
    opt = _opt()
    cos = LRSchedule(opt, kind="cosine", base_lr=0.1, total_steps=10, steps_per_epoch=5)
    for _ in range(5):
        cos.step_batch()
    assert cos.lr == pytest.approx(0.05)
    other = LRSchedule(_opt(), kind="cosine", base_lr=0.1, total_steps=10, steps_per_epoch=5)
    other.load_state_dict(cos.state_dict())
    assert other.lr == cos.lr and other.optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
    step = LRSchedule(_opt(), kind="step", base_lr=0.1, total_steps=100, steps_per_epoch=2, step_epochs=3)
    for _ in range(6):
        step.step_batch()
    assert step.lr == pytest.approx(0.01)


def test_topk_correct():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5]])
    top1, top5 = topk_correct(logits, torch.tensor([1, 2, 0]))
    assert top1.item() == 1 and top5.item() == 3  # top-5 capped at 3 classes


def test_metrics_truncate_after_resume_and_torn_line(tmp_path):
    m = MetricsWriter(str(tmp_path), enabled=True)
    for step in (1, 2, 3):
        m.write({"kind": "step", "step": step, "loss": math.nan})
    with open(m.path, "a") as f:
        f.write('{"kind": "st')
    m.truncate_after(2)
    assert [r["step"] for r in read_metrics(m.path)] == [1, 2] and read_metrics(m.path)[0]["loss"] is None
    MetricsWriter(str(tmp_path / "other"), enabled=False).write({"a": 1})
    assert not (tmp_path / "other").exists()


def test_report_from_confusion_counts_every_sample(tmp_path):
    confusion = np.array([[3, 1], [0, 2]])
    text, doc = classification_report_from_confusion(confusion, ["cat", "dog"])
    assert doc["cat"]["support"] == 4 and doc["dog"]["support"] == 2 and doc["accuracy"] == pytest.approx(5 / 6)
    path = write_report(str(tmp_path), torch.tensor(confusion), [{"index": 0, "wnid": "n1"}, {"index": 1, "wnid": "n2"}])
    assert "n1" in open(path).read() and (tmp_path / "report.json").exists()


def test_resident_batch_repeats_the_first_batch_for_an_epoch_and_passes_state_through():
    """--synthetic-data (the trainer benchmark's baseline) trains on the loader's first batch, len(loader) times."""
    from trainer.data import ResidentBatch

    class Loader:
        def __init__(self):
            self.state = {"epoch": 0}

        def __len__(self):
            return 3

        def __iter__(self):
            return iter([(torch.full((2, 3), float(i)), torch.tensor([i, i])) for i in range(3)])

        def state_dict(self):
            return self.state

        def load_state_dict(self, state):
            self.state = state

    resident = ResidentBatch(Loader())
    batches = list(resident)
    assert len(batches) == len(resident) == 3
    assert all(torch.equal(images, torch.zeros(2, 3)) and labels.tolist() == [0, 0] for images, labels in batches)
    resident.load_state_dict({"epoch": 4})
    assert resident.state_dict() == {"epoch": 4}
