"""The build and loader benchmarks run on what the product accepts: a Kaggle tree without its val solution file
(a benchmark reads train alone), and a shards root with fewer train shards than the baseline's DataLoader workers."""

from __future__ import annotations

import os
import subprocess
import sys

from helpers import quick_build_config, tiny_sample_config
from preprocess.build import build_shards
from preprocess.layout import LayoutError, discover
from preprocess.sample import make_sample

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(script: str, *args: str) -> list[str]:
    cmd = [sys.executable, os.path.join(REPO, "bench", script), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.splitlines()


def test_preprocess_bench_runs_on_a_kaggle_tree_without_val_labels(tmp_path):
    src = tmp_path / "kaggle"
    make_sample(tiny_sample_config(src, layout="kaggle", classes=2, train_per_class=6, large_images=0))
    (src / "LOC_val_solution.csv").unlink()
    try:
        discover(str(src))
        raise AssertionError("a kaggle tree without its val solution must still fail to build")
    except LayoutError as e:
        assert "LOC_val_solution.csv" in str(e)
    assert len(discover(str(src), with_val=False).splits["train"]) == 12

    lines = _run("preprocess_bench.py", str(src), "--workers", "1", "--rounds", "1")
    assert lines[0].startswith(f"12 images from {src}")
    assert any(line.startswith("peer: OpenCV as img2dataset") for line in lines)
    psnr = next(line for line in lines if line.startswith("output PSNR against the baseline"))
    assert float(psnr.split("mean ")[1].split(" dB")[0]) >= 30


def test_loader_bench_runs_with_fewer_shards_than_workers(tmp_path):
    src, out = tmp_path / "src", tmp_path / "shards"
    make_sample(tiny_sample_config(src, classes=2, train_per_class=8, large_images=0))
    build_shards(quick_build_config(src, out, shard_size=100))  # one train shard, two workers below
    lines = _run("loader_bench.py", str(out), "--seconds", "2", "--rounds", "1", "--threads", "2",
                 "--batch-size", "4", "--crop", "96")  # fmt: skip
    rates = {line[:52].strip(): float(line[52:].split()[0]) for line in lines if line.startswith("(")}
    assert set(rates) == {
        "(c) limit: libjpeg-turbo decode only, full 256x256",
        "(b) baseline: webdataset + PIL + DataLoader",
        "(d) peer: DALI's ImageNet example graph, CPU",
        "(a) ours: ImageNetLoader, DALI CPU",
    }
    assert all(rate > 0 for rate in rates.values())
