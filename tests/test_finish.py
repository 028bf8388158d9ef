"""The finishing step (uint8 crops -> normalised float) against a NumPy reference: the numba kernel that CPU
loaders run inside DALI, and the torch version that CUDA loaders run (here on CPU tensors, so it cannot rot
without a GPU). The loader-level tests in test_loader_augment.py check the kernel as DALI runs it."""

from __future__ import annotations

import gc
import tarfile

import numpy as np
import pytest
import torch
from host_sync import HostSyncRecorder

from helpers import decode_jpeg, quick_build_config
from pipeline import ImageNetLoader, kernels, streaming
from pipeline.config import LoaderConfig
from pipeline.finish import Normalization, TorchFinisher, load_normalization, mean_planes, plan_finish
from pipeline.graph import build_pipeline
from pipeline.kernels import finish_crop, kernel_params
from pipeline.lighting import lighting_basis
from pipeline.sharding import DistInfo
from pipeline.sources import find_shards
from preprocess.build import build_shards

SIZE = 256


def reference(crops, mean_chw, starts, mirrors, shifts, scale) -> np.ndarray:
    """float64: (crop - mean window + shift) * scale, CHW, then the whole thing flipped where mirrored."""
    out = []
    for crop, (y, x), mirror, shift in zip(crops, starts, mirrors, shifts, strict=True):
        h, w = crop.shape[:2]
        value = crop.transpose(2, 0, 1).astype(np.float64) - mean_chw[:, y : y + h, x : x + w] + shift[:, None, None]
        value = value * scale[:, None, None]
        out.append(value[:, :, ::-1] if mirror else value)
    return np.stack(out)


def random_case(rng, count: int, crop: int, channel: bool):
    """(bands: each crop's whole rows [count, crop, SIZE, 3], as the CPU graph decodes them, starts, mirrors, alphas,
    normalization)."""
    bands = rng.integers(0, 256, (count, crop, SIZE, 3), dtype=np.uint8)
    starts = rng.integers(0, SIZE - crop + 1, (count, 2)).astype(np.int32)
    starts[0] = (0, SIZE - crop)  # the windows' extremes
    starts[-1] = (SIZE - crop, 0)
    mirrors = (np.arange(count) % 2).astype(np.int32)
    alphas = rng.normal(0, 0.1, (count, 3)).astype(np.float32)
    eigval = np.array([0.2, 0.02, 0.005], np.float32)
    eigvec = np.linalg.qr(rng.normal(size=(3, 3)))[0].astype(np.float32)
    if channel:
        mean, std = np.array([120.0, 115.0, 100.0], np.float32), np.array([60.0, 58.0, 57.0], np.float32)
        norm = Normalization(None, mean, std, eigval, eigvec)
    else:
        mean_image = (rng.random((SIZE, SIZE, 3)) * 255).astype(np.float32)  # not symmetric: a wrong flip shows
        norm = Normalization(mean_image, np.zeros(3, np.float32), np.ones(3, np.float32), eigval, eigvec)
    return bands, starts, mirrors, alphas, norm


def crops_of(bands, starts) -> np.ndarray:
    """The crops (square windows) that the bands' rows hold at `starts`: what the GPU graph decodes."""
    crop = bands.shape[1]
    return np.stack([band[:, x : x + crop] for band, (_, x) in zip(bands, starts, strict=True)])


def run_kernel(bands, starts, mirrors, shifts, norm, channels_last: bool) -> np.ndarray:
    """The kernel over a batch, as DALI calls it per sample (channels-last output through its CHW view)."""
    params = kernel_params(mean_planes(norm, SIZE), 1.0 / norm.std)  # shifts given directly: no lighting basis
    count, h = bands.shape[:2]
    out = np.full((count, h, h, 3) if channels_last else (count, 3, h, h), np.nan, np.float32)
    for i in range(count):
        view = out[i].transpose(2, 0, 1) if channels_last else out[i]
        finish_crop(view, bands[i], starts[i, 0], starts[i, 1], mirrors[i], shifts[i].astype(np.float32), params)
    return out.transpose(0, 3, 1, 2) if channels_last else out


@pytest.mark.parametrize("crop", [224, 227, 256])
@pytest.mark.parametrize("channel", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_cpu_kernel_and_torch_version_match_the_reference(crop, channel, channels_last):
    rng = np.random.default_rng(crop + 2 * channel)
    bands, starts, mirrors, alphas, norm = random_case(rng, 6, crop, channel)
    crops = crops_of(bands, starts)
    shifts = alphas @ lighting_basis(norm.eigval, norm.eigvec)
    expected = reference(crops, mean_planes(norm, SIZE), starts, mirrors, shifts, 1.0 / norm.std.astype(np.float64))

    np.testing.assert_allclose(run_kernel(bands, starts, mirrors, shifts, norm, channels_last), expected, atol=1e-3)

    cfg = LoaderConfig(device="cpu", crop_size=crop, channels_last=channels_last)
    finisher = TorchFinisher(norm, cfg, torch.device("cpu"), SIZE)
    inputs = [torch.from_numpy(a) for a in (crops, starts, mirrors, alphas)]
    by_torch = finisher(*inputs)
    assert by_torch.shape == (6, 3, crop, crop) and by_torch.dtype == torch.float32
    assert by_torch.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    np.testing.assert_allclose(by_torch.numpy(), expected, atol=1e-3)


def test_torch_val_defaults_are_the_unflipped_unlit_center_window():
    rng = np.random.default_rng(5)
    bands, starts, _, _, norm = random_case(rng, 3, 224, channel=False)
    crops = crops_of(bands, starts)
    finisher = TorchFinisher(norm, LoaderConfig(device="cpu", split="val"), torch.device("cpu"), SIZE)
    mid = (SIZE - 224) // 2
    expected = reference(crops, mean_planes(norm, SIZE), [(mid, mid)] * 3, [0] * 3, np.zeros((3, 3)), np.ones(3))
    np.testing.assert_allclose(finisher(torch.from_numpy(crops)).numpy(), expected, atol=1e-3)


@pytest.mark.parametrize("split", ["train", "val"])
def test_torch_finisher_never_waits_for_its_device(split):
    """The CUDA loader's per-batch step, on the "meta" device as CUDA's stand-in: every input arrives on the device in
    the graph's shapes (mirror [B, 1], alphas [B, 1, 3]), and nothing is copied between host and device or read
    back (each would be a host sync per batch on CUDA)."""
    rng = np.random.default_rng(7)
    bands, starts, mirrors, alphas, norm = random_case(rng, 4, 224, channel=False)
    crops = crops_of(bands, starts)
    meta = torch.device("meta")
    finisher = TorchFinisher(norm, LoaderConfig(device="cpu", split=split), meta, SIZE)

    params = [torch.from_numpy(starts), torch.from_numpy(mirrors[:, None]), torch.from_numpy(alphas[:, None, :])]
    inputs = [torch.from_numpy(crops).to(meta)] + ([p.to(meta) for p in params] if split == "train" else [])
    with HostSyncRecorder() as recorder:
        out = finisher(*inputs)
    assert out.device == meta and out.shape == (4, 3, 224, 224) and out.dtype == torch.float32
    assert recorder.calls == []
    if split == "train":  # the graph's shapes give what flat ones give
        on_cpu = TorchFinisher(norm, LoaderConfig(device="cpu"), torch.device("cpu"), SIZE)
        flat = [torch.from_numpy(a) for a in (starts, mirrors, alphas)]
        assert torch.equal(on_cpu(torch.from_numpy(crops), *params), on_cpu(torch.from_numpy(crops), *flat))


def test_batches_a_training_loop_keeps_stay_intact(coded_build):
    """Batches reach torch without a copy: those kept by the caller must not change under later ones."""
    loader = ImageNetLoader(coded_build.root, split="train", device="cpu", batch_size=4, num_threads=2,
                            shuffle_buffer=8, seed=3)  # fmt: skip
    kept, copies = [], []
    for _ in range(3):
        for images, _ in loader:
            kept.append(images)
            copies.append(images.clone())
    assert len(kept) >= 6
    for images, copy in zip(kept, copies, strict=True):
        assert torch.equal(images, copy)


def test_builds_with_another_image_size_load_with_their_own_windows(tiny_source, tmp_path):
    """`build-shards --size 160`: windows, the mean image and the center crop follow the manifest's image size."""
    out = tmp_path / "shards160"
    build_shards(quick_build_config(tiny_source, out, size=160))
    mean = np.load(out / "mean_image.npy").astype(np.float64) * 255  # [160, 160, 3]
    val = ImageNetLoader(str(out), split="val", device="cpu", batch_size=4, num_threads=1, crop_size=128)
    images, labels = next(iter(val))
    assert images.shape == (4, 3, 128, 128)
    shard = sorted((out / "val").glob("*.tar"))[0]
    with tarfile.open(shard) as tar:
        jpegs = [tar.extractfile(m).read() for m in tar.getmembers() if m.name.endswith(".jpg")][:4]
    mid = (160 - 128) // 2
    for image, jpeg in zip(images.numpy(), jpegs, strict=True):
        expected = (decode_jpeg(jpeg).astype(np.float64) - mean)[mid : mid + 128, mid : mid + 128].transpose(2, 0, 1)
        np.testing.assert_allclose(image, expected, atol=3.0)
    train = ImageNetLoader(str(out), split="train", device="cpu", batch_size=4, num_threads=1, crop_size=128)
    assert next(iter(train))[0].shape == (4, 3, 128, 128)
    with pytest.raises(ValueError, match="crop_size 192 is larger than the shards' 160x160 images"):
        ImageNetLoader(str(out), split="train", device="cpu", crop_size=192)


def float32_at(shape, misalign: int) -> np.ndarray:
    """A float32 array whose data starts `misalign` bytes past a 64-byte boundary."""
    count = int(np.prod(shape))
    raw = np.empty(count * 4 + 128, np.uint8)
    start = -raw.ctypes.data % 64 + misalign
    return raw[start : start + count * 4].view(np.float32).reshape(shape)


def output_at(crop: int, channels_last: bool, misalign: int) -> tuple[np.ndarray, np.ndarray]:
    """(the array, the [3, h, w] view the kernel is given), starting `misalign` bytes past a 64-byte boundary."""
    if channels_last:
        out = float32_at((crop, crop, 3), misalign)
        return out, out.transpose(2, 0, 1)
    out = float32_at((3, crop, crop), misalign)
    return out, out


@pytest.mark.parametrize("crop", [128, 224, 256])
@pytest.mark.parametrize("channel", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_streaming_stores_give_the_plain_loops_bits(crop, channel, channels_last):
    """64-byte aligned outputs whose width 16 divides take the streaming path; any other output the plain loops.
    Both compute the same operations in the same order, so their results must agree to the bit."""
    rng = np.random.default_rng(crop + channel)
    bands, starts, mirrors, alphas, norm = random_case(rng, 6, crop, channel)
    shifts = (alphas @ lighting_basis(norm.eigval, norm.eigvec)).astype(np.float32)
    params = kernel_params(mean_planes(norm, SIZE), 1.0 / norm.std)
    layout = streaming.HWC if channels_last else streaming.CHW
    for i in range(len(bands)):
        (streamed, streamed_view), (plain, plain_view) = (output_at(crop, channels_last, m) for m in (0, 4))
        assert streaming.stream_layout(streamed_view) == layout
        assert streaming.stream_layout(plain_view) == streaming.NOT_STREAMED
        for view in (streamed_view, plain_view):
            finish_crop(view, bands[i], starts[i, 0], starts[i, 1], mirrors[i], shifts[i], params)
        np.testing.assert_array_equal(streamed, plain)
    last = slice(len(bands) - 1, None)
    expected = reference(crops_of(bands[last], starts[last]), mean_planes(norm, SIZE), starts[last], mirrors[last],
                         shifts[last], 1.0 / norm.std)  # fmt: skip
    np.testing.assert_allclose(streamed_view, expected[0], atol=1e-3)


def test_kernel_refuses_a_band_that_is_not_the_whole_rows_of_the_crop():
    """A crop-sized input (not whole rows) would be read at the wrong columns: it is refused."""
    rng = np.random.default_rng(9)
    bands, starts, _, _, norm = random_case(rng, 1, 224, channel=False)
    params = kernel_params(mean_planes(norm, SIZE), 1.0 / norm.std)
    out, shift = np.empty((3, 224, 224), np.float32), np.zeros(3, np.float32)
    for wrong in (crops_of(bands, starts)[0], bands[0, :200]):
        with pytest.raises(ValueError, match="whole width"):
            finish_crop(out, np.ascontiguousarray(wrong), starts[0, 0], starts[0, 1], 0, shift, params)


def test_streaming_needs_a_width_that_16_divides_and_a_dense_layout():
    assert streaming.stream_layout(float32_at((3, 227, 227), 0)) == streaming.NOT_STREAMED
    assert streaming.stream_layout(float32_at((227, 227, 3), 0).transpose(2, 0, 1)) == streaming.NOT_STREAMED
    assert streaming.stream_layout(float32_at((3, 224, 256), 0)[:, :, :224]) == streaming.NOT_STREAMED  # row gaps


# (options, (flip, mean, lighting, scale, cast, graph dtype)): who does each step, per mode and device
PLANS = [
    (dict(device="cpu"), ("kernel", "kernel", "kernel", "kernel", "kernel", "float32")),
    (dict(device="cpu", lighting_std=0.0, dtype="bfloat16"), ("kernel", "kernel", None, "kernel", "torch", "float32")),
    (dict(device="gpu"), ("torch", "torch", "torch", "torch", "torch", "uint8")),
    (dict(device="cpu", split="val"), (None, "kernel", None, "kernel", "kernel", "float32")),
    (dict(device="gpu", split="val", dtype="float16"), (None, "torch", None, "torch", "torch", "uint8")),
    (dict(device="gpu", crop="random_resized", dtype="float16"), ("dali", "dali", "dali", "dali", "dali", "float16")),
    (dict(device="cpu", crop="random_resized", dtype="bfloat16"), ("dali", "dali", "dali", "dali", "torch", "float32")),
    (dict(device="cpu", split="val", ten_crop=True, dtype="float16"), ("dali", "torch", None, "dali", "torch", "float32")),
    (dict(device="gpu", split="val", ten_crop=True, normalization="channel", dtype="float16"),
     ("dali", "dali", None, "dali", "dali", "float16")),
]  # fmt: skip


@pytest.mark.parametrize("options, stages", PLANS, ids=[",".join(f"{k}={v}" for k, v in o.items()) for o, _ in PLANS])
def test_one_plan_says_which_stage_finishes_each_mode(options, stages):
    plan = plan_finish(LoaderConfig(**options))
    assert (plan.flip, plan.mean, plan.lighting, plan.scale, plan.cast, plan.graph_dtype) == stages
    assert plan.device == options["device"] and plan.finisher == stages[3]



def test_the_kernel_parameters_live_exactly_as_long_as_their_pipeline(coded_build):
    """The CPU kernel reads its parameters by address: they must outlive the pipeline's threads, and no longer."""
    cfg = LoaderConfig(device="cpu", split="val", batch_size=4, num_threads=1)
    norm = load_normalization(coded_build.root, cfg, True)
    pipe = build_pipeline(find_shards(coded_build.root, "val"), cfg, norm, DistInfo())
    key = id(pipe)
    assert kernels._IN_USE[key].mean_planes.shape == (2, 3, SIZE, SIZE)
    pipe.build()
    images, _ = pipe.run()
    assert len(images) == 4 and not hasattr(pipe, "finishing_block")
    del pipe, images
    gc.collect()
    assert key not in kernels._IN_USE
