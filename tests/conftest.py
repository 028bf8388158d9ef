"""Shared fixtures for the preprocess tests: a tiny synthetic ImageNet and one build of it."""

from __future__ import annotations

import pytest

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
