"""The first run on a GPU, as one command: every check of the GPU path, then one table of verdicts and figures.

    make gpu-check            # or: python bench/gpu_check.py [--work DIR]

On a machine with a CUDA GPU (one is enough), in a few minutes it:
 1. runs the GPU tests (tests/test_loader_gpu.py, test_trainer_gpu.py, test_gpu_graph.py) with none skipped;
 2. builds the generated sample (4:2:0 JPEGs, as `preprocess build-shards` writes them) and checks its chroma;
 3. counts the host syncs torch reports per loader batch in four modes (must be 0), and checks that the loader hands
    out batches while torch's stream is busy;
 4. compares CPU and GPU val batches (mean |difference| in 0..255 units);
 5. runs bench/gpu_bench.py at two DALI thread counts;
 6. trains a few steps with --amp bf16 --compile --channels-last, checkpointing mid-epoch, then resumes; then a few
    steps with --amp fp16; then evaluates the checkpoint with --eval-only --ten-crop;
 7. with two or more GPUs, a two-rank NCCL run, which must not warn that the barrier had to guess its device.
On a machine without CUDA it says so and exits 0 without running anything else. Exit status 1 if a check fails.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable
GPU_TESTS = ["tests/test_loader_gpu.py", "tests/test_trainer_gpu.py", "tests/test_gpu_graph.py"]
TRAIN = ["--arch", "alexnet", "--batch-size", "64", "--epochs", "1", "--workers", "4", "--log-interval", "2",
         "--channels-last"]  # fmt: skip


def run(cmd: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def failed(proc: subprocess.CompletedProcess) -> str:
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
    return f"exit {proc.returncode}: " + " | ".join(tail)


def gpu_tests(work: str, _root: str) -> tuple[bool, str]:
    report = os.path.join(work, "gpu-tests.xml")
    proc = run([PYTHON, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", f"--junitxml={report}", *GPU_TESTS])
    if not os.path.exists(report):
        return False, failed(proc)
    suite = ET.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    tests, failures, errors, skipped = (int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
    detail = f"{tests - failures - errors - skipped} passed, {failures + errors} failed, {skipped} skipped"
    return proc.returncode == 0 and skipped == 0 and failures + errors == 0, detail


def gpu_bench(threads: int):
    def check(_work: str, root: str) -> tuple[bool, str]:
        proc = run([PYTHON, "bench/gpu_bench.py", root, "--threads", str(threads)])
        if proc.returncode != 0:
            return False, failed(proc)
        loader = re.search(r"^loader alone .*?\s(\d+)\s*$", proc.stdout, re.M)
        ratio = re.search(r"fed / resident: ([\d.]+)\s+data-wait fraction of step time: ([\d.]+%)", proc.stdout)
        note = " (a partial batch was dropped)" if "note:" in proc.stdout else ""
        if not (loader and ratio):
            return False, "figures not found in: " + proc.stdout[-300:]
        return True, f"loader {loader.group(1)} img/s, fed/resident {ratio.group(1)}, data wait {ratio.group(2)}{note}"

    return check


def _metrics(out: str) -> list[dict]:
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def train_resume(work: str, root: str) -> tuple[bool, str]:
    """bf16 + compile + channels-last: 6 steps with a checkpoint at step 3, then a resume that runs to step 10."""
    out = os.path.join(work, "bf16")
    args = [PYTHON, "trainer/main.py", "--data", root, "--out", out, *TRAIN, "--amp", "bf16", "--compile"]
    first = run([*args, "--max-steps", "6", "--checkpoint-every-steps", "3"], timeout=420)
    if first.returncode != 0:
        return False, "first run " + failed(first)
    second = run([*args, "--max-steps", "10", "--checkpoint-every-steps", "3"], timeout=420)
    if second.returncode != 0:
        return False, "resume " + failed(second)
    rows = _metrics(out)
    resumed = [r for r in rows if r.get("event") == "resumed"]
    steps = [r["step"] for r in rows if r["kind"] == "step"]
    at = [r["step"] for r in resumed]
    ok = "resumed from" in second.stdout and at == [6] and steps == [2, 4, 6, 8, 10]
    return ok, f"resumed at step {at} (expected [6]), step rows {steps}"


def train_fp16(work: str, root: str) -> tuple[bool, str]:
    """fp16 (GradScaler) + channels-last, without compile (the bf16 run covers it)."""
    out = os.path.join(work, "fp16")
    proc = run([PYTHON, "trainer/main.py", "--data", root, "--out", out, *TRAIN, "--amp", "fp16", "--max-steps", "6"])
    if proc.returncode != 0:
        return False, failed(proc)
    loss = [r["loss"] for r in _metrics(out) if r["kind"] == "step"]  # a non-finite loss is logged as null or "inf"
    finite = len(loss) == 3 and all(isinstance(v, float) and v < 1e4 for v in loss)
    return finite, "step losses " + ", ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in loss)


def ten_crop_eval(work: str, root: str) -> tuple[bool, str]:
    checkpoints = sorted(glob.glob(os.path.join(work, "bf16", "*.pth")))
    if not checkpoints:
        return False, "no checkpoint from the bf16 run"
    proc = run([PYTHON, "trainer/main.py", "--data", root, "--out", os.path.join(work, "eval"), *TRAIN, "--amp", "bf16",
                "--eval-only", "--checkpoint", checkpoints[-1], "--ten-crop"])  # fmt: skip
    final = re.search(r"FINAL val .*", proc.stdout)
    return proc.returncode == 0 and final is not None and "ten-crop top-1" in final.group(0), (
        final.group(0) if final else failed(proc)
    )


def nccl(work: str, root: str) -> tuple[bool | None, str]:
    import torch

    if torch.cuda.device_count() < 2:
        return None, "not run: needs two GPUs (NCCL refuses two ranks on one)"
    torchrun = os.path.join(os.path.dirname(PYTHON), "torchrun")
    proc = run([torchrun, "--standalone", "--nproc_per_node=2", "trainer/main.py", "--data", root, "--out",
                os.path.join(work, "nccl"), *TRAIN, "--amp", "bf16", "--max-steps", "4"], timeout=420)  # fmt: skip
    guessed = "You can specify `device_id`" in proc.stdout + proc.stderr  # torch: a barrier had to guess the GPU
    detail = failed(proc) if proc.returncode else f"2 ranks, lazy-init warning: {guessed}"
    return proc.returncode == 0 and not guessed, detail


def probe(name: str):
    def check(_work: str, root: str):
        import gpu_probes

        return getattr(gpu_probes, name)(root)

    return check


CHECKS = [
    ("GPU tests, none skipped", gpu_tests),
    ("sample is 4:2:0", probe("is_420")),
    ("host syncs per loader batch", probe("syncs_per_batch")),
    ("loader runs ahead of the GPU", probe("runs_ahead")),
    ("val batches: CPU vs GPU", probe("cpu_vs_gpu_val")),
    ("gpu_bench, 4 DALI threads", gpu_bench(4)),
    ("gpu_bench, 8 DALI threads", gpu_bench(8)),
    ("train bf16 compile, resume", train_resume),
    ("train fp16", train_fp16),
    ("eval-only ten-crop", ten_crop_eval),
    ("NCCL start-up", nccl),
]


def table(rows: list[tuple[str, str, str, float]]) -> str:
    width = max(len(name) for name, *_ in rows)
    lines = [f"{'check':{width}s}  verdict  {'seconds':>7s}  figures"]
    lines += [f"{name:{width}s}  {verdict:7s}  {seconds:7.0f}  {detail}" for name, verdict, detail, seconds in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", help="where the run dirs go (default: a new temporary directory)")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device on this machine, so nothing was run (it needs one NVIDIA GPU)")
        return 0
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from gpu_bench import sample_per_class
    from samples import sample_build

    work = args.work or tempfile.mkdtemp(prefix="gpu_check-")
    print(f"gpu_check on {torch.cuda.get_device_name()}, torch {torch.__version__}, work dir {work}", flush=True)
    root = sample_build(sample_per_class(256), val_per_class=20, shard_size=128)  # the gpu_bench default sample
    rows = []
    for number, (name, check) in enumerate(CHECKS, 1):
        print(f"[{number}/{len(CHECKS)}] {name} ...", flush=True)
        start = time.perf_counter()
        try:
            ok, detail = check(work, root)
        except Exception as e:  # one broken check must not hide the others' results
            ok, detail = False, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        verdict = "n/a" if ok is None else "PASS" if ok else "FAIL"
        rows.append((name, verdict, detail, time.perf_counter() - start))
        print(f"    {verdict}: {detail}", flush=True)
    print()
    print(table(rows))
    return 1 if any(verdict == "FAIL" for _, verdict, *_ in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
