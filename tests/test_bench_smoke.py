"""bench/gpu_bench.py cannot measure anything here, but it must not rot: a CPU smoke run of the same script."""

from __future__ import annotations

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_bench_runs_end_to_end_on_the_cpu(tiny_build):
    out, _ = tiny_build
    cmd = [sys.executable, os.path.join(REPO, "bench", "gpu_bench.py"), str(out), "--device", "cpu", "--steps", "2",
           "--batch-size", "4", "--crop-size", "96", "--threads", "1"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert any(line.startswith("AlexNet bf16 steps fed by the loader") for line in lines)
    assert "data-wait fraction of step time" in lines[-1]
