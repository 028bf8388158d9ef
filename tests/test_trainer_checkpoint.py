"""Checkpoints: atomic writes (T1), weights-only loads (T3), one writer (T5), fallback over a corrupt newest (T6)."""

from __future__ import annotations

import argparse
import logging
import os

import pytest
import torch

from trainer.checkpoint import CheckpointError, list_checkpoints, load_checkpoint, load_latest, save_checkpoint
from trainer.rng import capture_rng, restore_rng


def _state(value: float) -> dict:
    return {"model": {"w": torch.full((4,), value)}, "epoch": 1, "step": 2, "config": {"arch": "alexnet"},
            "rng": [capture_rng()]}


def test_save_load_roundtrip_keeps_last_two(tmp_path):
    for step in (1, 2, 3):
        save_checkpoint(_state(step), str(tmp_path), step, keep=2)
    assert [s for s, _ in list_checkpoints(str(tmp_path))] == [3, 2]
    path, state = load_latest(str(tmp_path))
    assert path.endswith("checkpoint-00000003.pth") and torch.equal(state["model"]["w"], torch.full((4,), 3.0))
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp")]


def test_t1_crash_mid_save_leaves_previous_intact(tmp_path, monkeypatch):
    save_checkpoint(_state(1), str(tmp_path), 1)
    real_save = torch.save

    def half_then_raise(obj, f, *a, **k):
        import io

        buf = io.BytesIO()
        real_save(obj, buf)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", half_then_raise)
    with pytest.raises(OSError):
        save_checkpoint(_state(2), str(tmp_path), 2)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-00000001.pth"]  # no partial file, no temp file
    assert torch.equal(load_checkpoint(str(tmp_path / "checkpoint-00000001.pth"))["model"]["w"], torch.full((4,), 1.0))


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


@pytest.mark.parametrize("payload", [_Evil(), argparse.Namespace(lr=0.1)], ids=["os.system", "namespace"])
def test_t3_non_weights_only_pickle_is_refused(tmp_path, payload, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "checkpoint-00000001.pth"
    torch.save({"model": {}, "extra": payload}, path)
    with pytest.raises(CheckpointError, match="refused.*weights-only"):
        load_checkpoint(str(path))
    assert not (tmp_path / "PWNED").exists()


def test_t3_our_checkpoint_loads_weights_only(tmp_path):
    save_checkpoint(_state(5), str(tmp_path), 5)
    state = torch.load(tmp_path / "checkpoint-00000005.pth", weights_only=True)
    assert state["config"] == {"arch": "alexnet"}


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_t6_corrupt_newest_falls_back_with_warning(tmp_path, caplog, damage):
    save_checkpoint(_state(1), str(tmp_path), 1)
    newest = save_checkpoint(_state(2), str(tmp_path), 2)
    data = open(newest, "rb").read()
    bad = {"truncate": data[: len(data) // 3], "garbage": os.urandom(len(data)), "empty": b""}[damage]
    with open(newest, "wb") as f:
        f.write(bad)
    with caplog.at_level(logging.WARNING):
        path, state = load_latest(str(tmp_path))
    assert path.endswith("checkpoint-00000001.pth") and state["model"]["w"][0] == 1.0
    assert "checkpoint-00000002.pth" in caplog.text and "falling back" in caplog.text


def test_t6_all_corrupt_is_a_clear_error(tmp_path):
    (tmp_path / "checkpoint-00000001.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        load_latest(str(tmp_path))


def test_no_checkpoint_means_fresh_start(tmp_path):
    assert load_latest(str(tmp_path)) is None and load_latest(str(tmp_path / "missing")) is None


def test_t5_only_rank0_writes(tmp_path, monkeypatch):
    from pipeline import DistInfo
    from trainer import state as st

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    objs = st.TrainObjects(model, opt, _Sched(), torch.amp.GradScaler("cuda", enabled=False), _Loader(),
                           st.Progress(0, 3), {"arch": "x"})
    monkeypatch.setattr(st.dist, "all_gather_objects", lambda info, obj: [obj, obj])
    barriers = []
    monkeypatch.setattr(st.dist, "barrier", lambda info: barriers.append(info.rank))
    assert st.save(objs, DistInfo(rank=1, world_size=2), str(tmp_path), keep=2) is None
    assert os.listdir(tmp_path) == [] and barriers == [1]  # rank 1 writes nothing and waits at the barrier
    path = st.save(objs, DistInfo(rank=0, world_size=2), str(tmp_path), keep=2)
    assert os.listdir(tmp_path) == ["checkpoint-00000003.pth"] and barriers == [1, 0]
    state = load_checkpoint(path)
    assert state["step"] == 3 and len(state["loader"]) == 2 and len(state["rng"]) == 2


class _Sched:
    def state_dict(self):
        return {"kind": "cosine"}

    def load_state_dict(self, state):
        assert state == {"kind": "cosine"}


class _Loader:
    def state_dict(self):
        return {"epoch": 0, "batches": 1}

    def load_state_dict(self, state):
        assert state == {"epoch": 0, "batches": 1}


def test_restore_keeps_the_runs_fused_optimizer_over_an_older_unfused_checkpoint(tmp_path):
    """A checkpoint's optimizer state carries the flags it was saved with. Restored into the trainer's fused SGD, an
    older, unfused state must not turn it back: a GradScaler (fp16) cannot step unfused groups of a fused optimizer."""
    from pipeline import DistInfo
    from trainer import state as st
    from trainer.train import sgd

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    older = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)  # as the trainer made it before it fused
    model(torch.randn(8, 4)).square().mean().backward()
    older.step()
    objs = st.TrainObjects(model, older, _Sched(), torch.amp.GradScaler("cpu", enabled=True), _Loader(),
                           st.Progress(0, 1), {"arch": "x"})  # fmt: skip
    path = st.save(objs, DistInfo(), str(tmp_path), keep=1)

    fused, scaler = sgd(model.parameters(), 0.1, 0.9, 0.0), torch.amp.GradScaler("cpu", enabled=True)
    st.restore(st.TrainObjects(model, fused, _Sched(), scaler, _Loader(), st.Progress(), {"arch": "x"}),
               load_checkpoint(path), DistInfo())  # fmt: skip
    assert all(group["fused"] for group in fused.param_groups)
    assert torch.equal(fused.state[model.weight]["momentum_buffer"], older.state[model.weight]["momentum_buffer"])
    before = model.weight.detach().clone()
    scaler.scale(model(torch.randn(8, 4)).square().mean()).backward()
    scaler.step(fused)
    assert not torch.equal(model.weight, before)  # the step was taken, unscaled by the fused kernel
    assert model.weight.sub(before).abs().max() < 1.0


def test_rng_roundtrip():
    import random

    import numpy as np

    saved = capture_rng()
    a = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng(torch.load(_save_to_bytes({"model": {}, "rng": saved}), weights_only=True)["rng"])
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def _save_to_bytes(obj):
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf
