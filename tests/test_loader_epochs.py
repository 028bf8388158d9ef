"""Epoch semantics: exact-once coverage, rank splits, reshuffling, determinism and mid-epoch resume (DALI CPU)."""

from __future__ import annotations

import pytest
import torch
from coded_shards import epoch_labels

from pipeline import ImageNetLoader

FAST = dict(device="cpu", num_threads=1, crop_size=64, lighting_std=0.0, shuffle_buffer=16)


def loader(build, **options) -> ImageNetLoader:
    return ImageNetLoader(build.root, **{**FAST, **options})


def test_train_epoch_yields_every_sample_once_and_len_counts_batches(coded_build):
    train = loader(coded_build, split="train", batch_size=8)
    assert len(train) == 5 and train.num_classes == 2000 and train.dataset_size == 40
    labels = epoch_labels(train)
    assert sorted(labels) == sorted(coded_build.labels["train"])
    images, batch_labels = next(iter(train))
    assert images.shape == (8, 3, 64, 64) and images.dtype == torch.float32
    assert batch_labels.dtype == torch.int64 and batch_labels.shape == (8,)


@pytest.mark.parametrize("world_size, batch_size", [(1, 6), (3, 7)])
def test_train_without_drop_last_still_yields_every_sample_once(coded_build, world_size, batch_size):
    ranks = [
        loader(coded_build, split="train", batch_size=batch_size, drop_last=False, rank=r, world_size=world_size)
        for r in range(world_size)
    ]
    assert len({len(r) for r in ranks}) == 1
    for _ in range(2):  # padding never lands inside an epoch, whatever the shuffle buffer did
        assert sorted(label for r in ranks for label in epoch_labels(r)) == sorted(coded_build.labels["train"])


def test_train_drops_the_remainder(coded_build):
    train = loader(coded_build, split="train", batch_size=6)  # 40 = 6 * 6 + 4
    labels = epoch_labels(train)
    assert len(train) == 6 and len(labels) == 36 and len(set(labels)) == 36


def test_epochs_are_reshuffled_and_the_same_seed_gives_the_same_stream(coded_build):
    first = loader(coded_build, split="train", batch_size=8, seed=3)
    epochs = [epoch_labels(first) for _ in range(3)]
    assert all(sorted(e) == sorted(coded_build.labels["train"]) for e in epochs)
    assert epochs[0] != epochs[1] != epochs[2]
    again = loader(coded_build, split="train", batch_size=8, seed=3)
    assert [epoch_labels(again) for _ in range(3)] == epochs
    other = loader(coded_build, split="train", batch_size=8, seed=4)
    assert epoch_labels(other) != epochs[0]


def test_two_ranks_split_each_epoch_disjointly_and_completely(coded_build):
    ranks = [loader(coded_build, split="train", batch_size=4, rank=r, world_size=2, seed=1) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 5
    for _ in range(3):
        seen = [epoch_labels(r) for r in ranks]
        assert not set(seen[0]) & set(seen[1])
        assert sorted(seen[0] + seen[1]) == sorted(coded_build.labels["train"])


def test_uneven_rank_slices_still_give_equal_batch_counts(coded_build):
    # 40 samples over 3 ranks: slices of 13, 13, 14 -> 3 full batches of 4 on every rank
    ranks = [loader(coded_build, split="train", batch_size=4, rank=r, world_size=3) for r in range(3)]
    assert {len(r) for r in ranks} == {3}
    seen = [epoch_labels(r) for r in ranks]
    assert [len(s) for s in seen] == [12, 12, 12]
    assert len(set(seen[0]) | set(seen[1]) | set(seen[2])) == 36


def test_val_is_in_order_and_identical_across_passes(coded_build):
    val = loader(coded_build, split="val", batch_size=4)
    first, second = [], []
    for _ in range(2):
        passes = [(images.clone(), labels.clone()) for images, labels in val]
        (first if not first else second).extend(passes)
    assert [int(v) for _, labels in first for v in labels] == sorted(coded_build.labels["val"])
    assert len(first) == len(second) == len(val) == 4
    for (a, la), (b, lb) in zip(first, second, strict=True):
        assert torch.equal(a, b) and torch.equal(la, lb)


@pytest.mark.parametrize("batch_size", [3, 4, 7])
def test_val_counts_every_sample_once_across_two_ranks(coded_build, batch_size):
    ranks = [loader(coded_build, split="val", batch_size=batch_size, rank=r, world_size=2) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1])
    seen = [epoch_labels(r) for r in ranks]
    assert sorted(seen[0] + seen[1]) == sorted(coded_build.labels["val"])  # 13: odd, nothing twice
    assert [r.samples_per_epoch for r in ranks] == [len(s) for s in seen]
    assert ranks[0].dataset_size == 13


def test_torchrun_environment_sets_rank_and_world_size(coded_build, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    val = loader(coded_build, split="val", batch_size=4)
    assert (val.dist.rank, val.dist.world_size) == (1, 2)
    assert epoch_labels(val) == sorted(coded_build.labels["val"])[6:]


def batches(loader, count):
    out = []
    for images, labels in loader:
        out.append((images.clone(), labels.clone()))
        if len(out) == count:
            break
    return out


def test_resume_mid_epoch_continues_the_exact_stream(coded_build):
    options = dict(split="train", batch_size=4, seed=5, lighting_std=0.1)
    straight = loader(coded_build, **options)
    reference = [b for _ in range(2) for b in batches(straight, len(straight))]  # 2 epochs, 20 batches

    interrupted = loader(coded_build, **options)
    head = batches(interrupted, 3)  # epoch 0, batches 0..2
    state = interrupted.state_dict()
    assert (state["epoch"], state["batch"]) == (0, 3)

    resumed = loader(coded_build, **options)
    resumed.load_state_dict([state])
    tail = batches(resumed, len(resumed) - 3) + batches(resumed, len(resumed))
    for (a, la), (b, lb) in zip(head + tail, reference, strict=True):
        assert torch.equal(la, lb) and torch.equal(a, b)


def test_leaving_an_epoch_early_then_iterating_starts_the_next_epoch(coded_build):
    train = loader(coded_build, split="train", batch_size=8)
    batches(train, 2)
    assert train.epoch == 0
    assert len(epoch_labels(train)) == 40 and train.epoch == 2


def test_batches_stay_valid_after_later_batches(coded_build):
    """The CPU path hands out DALI's buffers without a copy: they must not be overwritten by later batches."""
    kept = [(images, labels) for images, labels in loader(coded_build, split="train", batch_size=8, seed=9)]
    copies = [(i.clone(), y.clone()) for i, y in loader(coded_build, split="train", batch_size=8, seed=9)]
    for (a, la), (b, lb) in zip(kept, copies, strict=True):
        assert torch.equal(a, b) and torch.equal(la, lb)


def test_resume_from_an_epoch_boundary_and_state_checks(coded_build, tmp_path):
    options = dict(split="train", batch_size=8, seed=6, lighting_std=0.1)
    straight = loader(coded_build, **options)
    epoch_labels(straight)
    state = straight.state_dict()
    assert (state["epoch"], state["batch"]) == (1, 0)
    torch.save(state, tmp_path / "loader.pt")
    resumed = loader(coded_build, **options)
    resumed.load_state_dict(torch.load(tmp_path / "loader.pt", weights_only=True))
    assert epoch_labels(resumed) == epoch_labels(straight)
    with pytest.raises(ValueError, match="batch_size"):
        loader(coded_build, **{**options, "batch_size": 4}).load_state_dict(state)
    with pytest.raises(ValueError, match="rank 1"):
        loader(coded_build, **options, rank=1, world_size=2).load_state_dict([state])
