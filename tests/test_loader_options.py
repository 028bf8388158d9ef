"""The loader's options as its signature, its config and its repr show them (no DALI run needed for most)."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch
from coded_shards import EIGVAL, EIGVEC, epoch_labels

from pipeline import DistInfo, ImageNetLoader, LoaderConfig
from pipeline.finish import plan_finish


def test_the_signature_lists_every_option_keyword_only_with_the_configs_default():
    parameters = inspect.signature(ImageNetLoader).parameters
    for field in dataclasses.fields(LoaderConfig):
        parameter = parameters[field.name]
        assert parameter.kind is inspect.Parameter.KEYWORD_ONLY, field.name
        assert parameter.default == field.default, field.name
    assert parameters["device"].default == LoaderConfig().device == "auto"
    assert {"rank", "world_size", "local_rank", "dist"} <= set(parameters)


def test_auto_resolves_to_the_gpu_only_where_cuda_is(coded_build):
    assert LoaderConfig().resolved().device == ("gpu" if torch.cuda.is_available() else "cpu")
    assert LoaderConfig(device="cpu").resolved().device == "cpu"
    with pytest.raises(ValueError, match="device 'cpu' or 'gpu', got 'auto'"):
        plan_finish(LoaderConfig(device="auto"))


def test_repr_shows_the_options_given_with_the_eigen_data(coded_build):
    loader = ImageNetLoader(coded_build.root, device="cpu", num_threads=1, crop_size=64, batch_size=4,
                            eigval=EIGVAL, eigvec=EIGVEC)  # fmt: skip
    text = repr(loader)
    assert "device='cpu'" in text and "batch_size=4" in text and "crop_size=64" in text
    assert f"eigval={tuple(float(v) for v in EIGVAL)!r}" in text and "eigvec=((-0.5675, 0.7192, 0.4009)," in text
    assert "split=" not in text  # a default


def test_eigen_data_must_come_whole():
    with pytest.raises(ValueError, match="eigval and eigvec go together"):
        LoaderConfig(eigval=EIGVAL)
    with pytest.raises(ValueError, match=r"eigvec must have shape \(3, 3\)"):
        LoaderConfig(eigval=EIGVAL, eigvec=(1.0, 0.0))


def test_a_dist_info_places_the_loader_as_rank_and_world_size_do(coded_build):
    options = dict(device="cpu", num_threads=1, crop_size=64, lighting_std=0.0, split="val", batch_size=4)
    by_dist = ImageNetLoader(coded_build.root, dist=DistInfo(rank=1, world_size=2), **options)
    by_numbers = ImageNetLoader(coded_build.root, rank=1, world_size=2, **options)
    assert by_dist.dist == by_numbers.dist and epoch_labels(by_dist) == epoch_labels(by_numbers)
    with pytest.raises(ValueError, match="either dist or rank"):
        ImageNetLoader(coded_build.root, dist=DistInfo(), rank=0, **options)


def test_dist_info_has_what_a_trainer_needs():
    info = DistInfo(1, 2, 1, 2, "cuda:1")  # the trainer's positional order
    assert (info.rank, info.local_world_size, info.device) == (1, 2, "cuda:1")
    assert info.distributed and not info.is_main and DistInfo().is_main and not DistInfo().distributed
    with pytest.raises(ValueError, match="rank 2 is outside world size 2"):
        DistInfo(rank=2, world_size=2)
