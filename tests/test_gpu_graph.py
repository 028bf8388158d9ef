"""The GPU graph, checked without a GPU: DALI defines a pipeline without CUDA (only building it needs a device), so
every mode's GPU graph is walked here against DALI's operator registry and its placement rules. A change made and
tested only on the CPU path cannot break the GPU graph unseen.

The walk reads the defined graph through DALI's pipeline internals (`_build_graph`, `_ops`, an operator's `_spec`
and `_init_args`); the first assertions fail loudly if a DALI release renames them, rather than passing vacuously.
"""

from __future__ import annotations

import pytest

from pipeline.config import LoaderConfig
from pipeline.finish import load_normalization
from pipeline.graph import build_pipeline
from pipeline.sharding import DistInfo
from pipeline.sources import find_shards

# (options, outputs): translate crops leave the graph as uint8 windows + labels + start, mirror[, alphas] for torch.
MODES = [
    (dict(split="train"), 5),
    (dict(split="train", lighting_std=0.0), 4),
    (dict(split="train", crop_size=256), 5),  # one window position: a constant start
    (dict(split="train", crop="random_resized", dtype="float16"), 2),
    (dict(split="train", normalization="channel", channels_last=True), 5),
    (dict(split="val"), 2),
    (dict(split="val", ten_crop=True), 2),
    (dict(split="val", ten_crop=True, normalization="channel", channels_last=True), 2),
]
OPTIONS = [options for options, _ in MODES]
NAMES = [",".join(f"{k}={v}" for k, v in options.items()) for options in OPTIONS]


def defined_graph(root: str, options: dict, device: str = "gpu"):
    """-> (the pipeline, its operators as dicts), defined but not built."""
    from nvidia.dali import backend

    cfg = LoaderConfig(device=device, **options)
    pipe = build_pipeline(find_shards(root, cfg.split), cfg, load_normalization(root, cfg, True), DistInfo())
    pipe._build_graph()
    ops = []
    for op in pipe._ops:
        spec, schema = op._spec, backend.GetSchema(op._op.schema.Name())
        inputs = [(spec.InputDevice(i), i >= spec.NumRegularInput()) for i in range(spec.NumInput())]
        ops.append(dict(name=schema.Name(), device=op._op.device, inputs=inputs, args=op._op._init_args,
                        backends=set(schema.GetSupportedBackends())))  # fmt: skip
    assert ops and all(op["name"] for op in ops), "DALI's graph internals changed: update this walk"
    return pipe, ops


@pytest.mark.parametrize("options", OPTIONS, ids=NAMES)
def test_every_gpu_operator_exists_on_the_gpu_and_takes_arguments_from_the_cpu(coded_build, options):
    from nvidia.dali import backend

    pipe, ops = defined_graph(coded_build.root, options)
    registered = {"gpu": set(backend.RegisteredGPUOps()), "mixed": set(backend.RegisteredMixedOps())}
    for op in ops:
        where = f"{op['name']} on {op['device']}"
        if op["device"] in ("gpu", "mixed"):
            assert op["device"] in op["backends"] and op["name"] in registered[op["device"]], f"{where}: not in DALI"
        for device, is_argument in op["inputs"]:
            assert not (is_argument and device != "cpu"), f"{where}: an argument input on the {device}"
            assert not (op["device"] == "cpu" and device == "gpu"), f"{where}: GPU data back to the CPU"
    assert pipe.device_id == 0 and pipe.exec_dynamic  # the dynamic executor: outputs handed over on torch's stream


@pytest.mark.parametrize("options, outputs", MODES, ids=NAMES)
def test_the_gpu_graph_decodes_on_the_gpu_like_the_cpu_and_returns_only_gpu_data(coded_build, options, outputs):
    """Fixes that only a GPU run would otherwise show: the mixed decoder with libjpeg-turbo's chroma upsampling, and
    no CPU output (a CPU output would cost the loader a blocking copy per batch)."""
    pipe, ops = defined_graph(coded_build.root, options)
    decoders = [op for op in ops if op["name"].startswith("decoders__")]
    assert len(decoders) == 1 and decoders[0]["device"] == "mixed"
    assert decoders[0]["args"].get("jpeg_fancy_upsampling") is True
    assert [node.device for node in pipe._graph_outputs] == ["gpu"] * outputs


@pytest.mark.parametrize("options", [dict(split="train"), dict(split="val", ten_crop=True)], ids=["window", "whole"])
def test_the_cpu_graph_decodes_with_the_same_upsampling(coded_build, options):
    _, ops = defined_graph(coded_build.root, options, device="cpu")
    decoders = [op for op in ops if op["name"].startswith("decoders__")]
    assert [op["device"] for op in decoders] == ["cpu"] and decoders[0]["args"].get("jpeg_fancy_upsampling") is True
