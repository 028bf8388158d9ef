"""Fixtures shared by the test modules: a tiny synthetic ImageNet and one build of it (preprocess), and shard roots
of position-coded images written directly (loader, trainer)."""

from __future__ import annotations

import pytest
from coded_shards import CodedBuild, write_coded_build

from helpers import quick_build_config, tiny_sample_config
from preprocess.build import build_shards
from preprocess.sample import make_sample


@pytest.fixture(scope="session")
def tiny_source(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_source")
    make_sample(tiny_sample_config(root))
    return root


@pytest.fixture(scope="session")
def tiny_build(tiny_source, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_build")
    report = build_shards(quick_build_config(tiny_source, out))
    return out, report


@pytest.fixture(scope="session")
def coded_build(tmp_path_factory) -> CodedBuild:
    """40 train samples in 6 shards, 13 val samples in 2 shards (an odd count, uneven shards)."""
    return write_coded_build(tmp_path_factory.mktemp("coded_build"))


@pytest.fixture(scope="session")
def coded_build_420(tmp_path_factory) -> CodedBuild:
    """The same samples, 4:2:0 JPEGs."""
    return write_coded_build(tmp_path_factory.mktemp("coded_build_420"), subsampling=2)
