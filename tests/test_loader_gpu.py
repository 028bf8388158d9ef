"""The GPU path (nvJPEG "mixed" decode, GPU operators, `TorchFinisher`) against the CPU path, on 4:2:0 JPEGs as the
shards hold. The CUDA tests skip without a GPU (`make gpu-check` runs them with none skipped); the first test runs
everywhere and pins what the GPU decode is compared with."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from coded_shards import coded_jpeg, identity_norm
from host_sync import HostSyncRecorder

from helpers import decode_jpeg
from pipeline import ImageNetLoader

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CROP = 224


def test_cpu_decode_of_420_jpegs_is_libjpeg_turbos(coded_build_420):
    """The reference for the GPU: DALI's CPU decoder gives libjpeg-turbo's pixels (fancy chroma upsampling) exactly."""
    loader = ImageNetLoader(coded_build_420.root, split="val", batch_size=5, device="cpu", num_threads=1,
                            **identity_norm())  # fmt: skip
    images, labels = next(iter(loader))
    mid = (256 - CROP) // 2
    for image, label in zip(images.numpy(), labels.tolist(), strict=True):
        pixels = decode_jpeg(coded_jpeg(label % 16, subsampling=2))
        np.testing.assert_array_equal(image, pixels[mid : mid + CROP, mid : mid + CROP].transpose(2, 0, 1))


@pytest.mark.parametrize("options", [dict(split="train", dtype="bfloat16"), dict(split="val", ten_crop=True,
                                                                               channels_last=True)])  # fmt: skip
def test_the_loaders_own_per_batch_code_makes_no_syncing_call(coded_build_420, options):
    """The torch side of a batch (labels, trimming, ten-crop mean image, layout, cast), recorded on the CPU path:
    nothing in it may read a value back or build a tensor from host data. The GPU-only step is held to the same rule
    in test_finish.py; CUDA runs count real syncs below."""
    it = iter(ImageNetLoader(coded_build_420.root, device="cpu", batch_size=4, num_threads=1, **options))
    next(it)
    with HostSyncRecorder() as recorder:
        images, labels = next(it)
    assert recorder.calls == [] and len(labels) == 4 and images.shape[0] == 4


@needs_gpu
@pytest.mark.parametrize("options", [dict(), dict(ten_crop=True), dict(normalization="channel", dtype="float16")])
def test_gpu_val_matches_cpu_val(coded_build_420, options):
    outputs = {}
    for device in ("cpu", "gpu"):
        loader = ImageNetLoader(coded_build_420.root, split="val", batch_size=4, device=device, num_threads=2, **options)
        outputs[device] = [(x.float().cpu(), y.cpu()) for x, y in loader]
    for (a, la), (b, lb) in zip(outputs["cpu"], outputs["gpu"], strict=True):
        assert torch.equal(la, lb)
        assert (a - b).abs().mean() < 1.0  # nvJPEG's IDCT and libjpeg-turbo's differ by a level here and there


@needs_gpu
def test_gpu_train_batches_live_on_the_gpu_and_resume(coded_build_420):
    options = dict(split="train", batch_size=8, device="gpu", num_threads=2, seed=2)
    loader = ImageNetLoader(coded_build_420.root, **options)
    reference = [(x.clone(), y.clone()) for x, y in loader]
    assert reference[0][0].device.type == "cuda" and reference[0][0].shape == (8, 3, 224, 224)
    assert reference[0][1].device.type == "cuda" and reference[0][1].dtype == torch.int64
    again = ImageNetLoader(coded_build_420.root, **options)
    it = iter(again)
    next(it), next(it)
    state = again.state_dict()
    resumed = ImageNetLoader(coded_build_420.root, **options)
    resumed.load_state_dict(state)
    for (a, la), (b, lb) in zip(list(resumed), reference[2:], strict=True):
        assert torch.equal(la, lb) and torch.equal(a, b)


@needs_gpu
@pytest.mark.parametrize("split", ["train", "val"])
def test_gpu_batches_a_training_loop_keeps_stay_intact(coded_build_420, split):
    """Batches are DALI's buffers, handed over without a copy: DALI must not reuse one that torch still holds."""
    loader = ImageNetLoader(coded_build_420.root, split=split, device="gpu", batch_size=4, num_threads=2, seed=3)
    kept, copies = [], []
    for _ in range(3):
        for images, labels in loader:
            kept.append((images, labels))
            copies.append((images.clone(), labels.clone()))
    torch.cuda.synchronize()
    for (images, labels), (image_copy, label_copy) in zip(kept, copies, strict=True):
        assert torch.equal(images, image_copy) and torch.equal(labels, label_copy)


@needs_gpu
@pytest.mark.parametrize("options", [dict(split="train"), dict(split="train", crop="random_resized"),
                                     dict(split="val"), dict(split="val", ten_crop=True)])  # fmt: skip
def test_gpu_batches_come_without_a_host_sync(coded_build_420, options):
    """After the first batch (which sets things up), torch reports no synchronising call while batches are made."""
    loader = ImageNetLoader(coded_build_420.root, device="gpu", batch_size=4, num_threads=2, **options)
    it = iter(loader)
    next(it)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            batches = [next(it) for _ in range(2)]
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message)]
    assert syncs == [] and all(x.is_cuda and y.is_cuda for x, y in batches)
