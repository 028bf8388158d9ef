"""Trainer test helpers: in-process stand-in batches for loop unit tests and torchrun launch helpers.

The stand-in iterables are for unit tests of the loop only; the end-to-end (torchrun) tests use the real
`pipeline.ImageNetLoader` on tiny real shards.
"""

from __future__ import annotations

import os
import subprocess
import sys

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable
TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")
TINY = ["--device", "cpu", "--arch", "alexnet-bn", "--width", "0.0625", "--crop-size", "96", "--workers", "1"]


class StandInLoader:
    """A list of (images, labels) batches with the loader's iteration and state API (unit tests only)."""

    def __init__(self, batches):
        self.batches = batches
        self.consumed = 0

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        start, self.consumed = self.consumed % len(self.batches), 0
        for images, labels in self.batches[start:]:
            self.consumed += 1
            yield images, labels

    def state_dict(self):
        return {"batches": self.consumed}

    def load_state_dict(self, state):
        self.consumed = state["batches"]


def colour_batches(kind: str, *, classes=3, steps=40, batch=16, crop=67, seed=0):
    """kind: "learnable" (class = which channel is bright), "random-labels", or "constant" (all images equal)."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(steps):
        labels = torch.randint(0, classes, (batch,), generator=g)
        images = 0.3 * torch.randn(batch, 3, crop, crop, generator=g)
        if kind == "learnable":
            images[torch.arange(batch), labels % 3] += 2.0
        elif kind == "constant":
            images = torch.zeros(batch, 3, crop, crop)
        batches.append((images, labels))
    return batches


def run(cmd, *, env=None, timeout=240):
    """Runs a trainer command from the repo root; returns the CompletedProcess (output kept for messages)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)


def torchrun(args, *, nproc=2, extra=(), env=None):
    cmd = [TORCHRUN, "--standalone", f"--nproc_per_node={nproc}", *extra, "trainer/main.py", *args]
    return run(cmd, env=env)


def check(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-4000:]}\nSTDERR:\n{proc.stderr[-4000:]}"
    return proc
