"""bench/gpu_bench.py cannot measure anything here, but it must not rot: a CPU smoke run of the same script."""

from __future__ import annotations

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_bench_runs_end_to_end_on_the_cpu(tiny_build):
    out, _ = tiny_build
    train = json.loads((out / "manifest.json").read_text())["splits"]["train"]["samples"]
    batch = 5 if train % 5 else 7  # a batch size that leaves a partial batch, which the output must mention
    cmd = [sys.executable, os.path.join(REPO, "bench", "gpu_bench.py"), str(out), "--device", "cpu", "--steps", "2",
           "--batch-size", str(batch), "--crop-size", "96", "--threads", "1"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert any(line.startswith("AlexNet bf16 steps fed by the loader") for line in lines)
    assert "data-wait fraction of step time" in lines[-2]
    assert lines[-1].startswith(f"note: {train % batch} of {train} train images per epoch fall in a partial batch")


def test_the_default_gpu_bench_sample_is_a_whole_number_of_batches():
    sys.path.insert(0, os.path.join(REPO, "bench"))
    from gpu_bench import sample_per_class

    for batch in (256, 128, 200, 96, 7):
        per_class = sample_per_class(batch)
        assert 10 * per_class >= 1000 and 10 * per_class % batch == 0
    assert sample_per_class(256) == 128  # 1280 images: 5 batches


def test_gpu_check_says_so_and_exits_0_without_cuda(tmp_path):
    work = tmp_path / "work"
    cmd = [sys.executable, os.path.join(REPO, "bench", "gpu_check.py"), "--work", str(work)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    said = "gpu_check: no CUDA device on this machine, so nothing was run (it needs one NVIDIA GPU)"
    assert done.stdout.splitlines() == [said]
    assert not work.exists()
