"""The GPU path (nvJPEG "mixed" decode + GPU operators) against the CPU path; skipped without CUDA."""

from __future__ import annotations

import pytest
import torch
from loader_fixtures import coded_build_fixture  # noqa: F401 - a fixture

from pipeline import ImageNetLoader

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("options", [dict(), dict(ten_crop=True), dict(normalization="channel", dtype="float16")])
def test_gpu_val_matches_cpu_val(coded_build, options):
    outputs = {}
    for device in ("cpu", "gpu"):
        loader = ImageNetLoader(coded_build.root, split="val", batch_size=4, device=device, num_threads=2, **options)
        outputs[device] = [(x.float().cpu(), y.cpu()) for x, y in loader]
    for (a, la), (b, lb) in zip(outputs["cpu"], outputs["gpu"], strict=True):
        assert torch.equal(la, lb)
        assert (a - b).abs().mean() < 1.0  # nvJPEG and libjpeg-turbo differ by a level here and there


def test_gpu_train_batches_live_on_the_gpu_and_resume(coded_build):
    options = dict(split="train", batch_size=8, device="gpu", num_threads=2, seed=2)
    loader = ImageNetLoader(coded_build.root, **options)
    reference = [(x.clone(), y.clone()) for x, y in loader]
    assert reference[0][0].device.type == "cuda" and reference[0][0].shape == (8, 3, 224, 224)
    assert reference[0][1].device.type == "cuda" and reference[0][1].dtype == torch.int64
    again = ImageNetLoader(coded_build.root, **options)
    it = iter(again)
    next(it), next(it)
    state = again.state_dict()
    resumed = ImageNetLoader(coded_build.root, **options)
    resumed.load_state_dict(state)
    for (a, la), (b, lb) in zip(list(resumed), reference[2:], strict=True):
        assert torch.equal(la, lb) and torch.equal(a, b)
