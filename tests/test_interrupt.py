"""SIGTERM and Ctrl-C stop a build cleanly: workers gone, lock released, one line on how to resume, 143 / 130."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest
from test_resume import snapshot

from helpers import quick_build_config
from pipeline.contract import MANIFEST_NAME
from preprocess.build import build_shards


def children(pid: int) -> set[int]:
    """Every descendant of `pid`, from /proc."""
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        for task in os.listdir(f"/proc/{parent}/task"):
            with open(f"/proc/{parent}/task/{task}/children") as f:
                kids = {int(k) for k in f.read().split()}
            todo += kids - found
            found |= kids
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def _default_ctrl_c() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextlib.contextmanager
def started(cmd: list[str], **kwargs):
    """A command in a process group of its own; whatever of it is left when the test ends is killed.

    Ctrl-C is restored to its default in the command, as a terminal has it: a shell starts background jobs (a CI
    script run with `&`, say) with SIGINT ignored, and Python then never turns it into KeyboardInterrupt.
    """
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=_default_ctrl_c, **kwargs)  # fmt: skip
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


def build_command(src, out, *extra) -> list[str]:
    return [os.path.join(os.path.dirname(sys.executable), "preprocess"), "build-shards", "--src", str(src),
            "--out", str(out), "--shard-size", "3", "--no-progress", *extra]  # fmt: skip


def wait_for_parts(proc: subprocess.Popen, out, count: int) -> None:
    deadline = time.time() + 120
    while not (out / ".parts").is_dir() or len(os.listdir(out / ".parts")) < count:
        assert proc.poll() is None and time.time() < deadline, "the build ended before it could be stopped"
        time.sleep(0.02)


@pytest.mark.parametrize(("sig", "code", "name"), [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "Ctrl-C")])
def test_a_signal_stops_the_local_engine_cleanly_and_resume_finishes(tiny_source, tmp_path, sig, code, name):
    out = tmp_path / "out"
    with started(build_command(tiny_source, out, "--workers", "2")) as proc:
        wait_for_parts(proc, out, 2)
        workers = children(proc.pid)
        assert len(workers) >= 2, "the pool's workers should be running"
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
        assert not [p for p in workers if alive(p)], "a worker outlived the build"  # before the cleanup kills any
    assert proc.returncode == code, stderr
    lines = [line for line in stderr.splitlines() if not line.startswith("INFO ")]
    assert lines == [f"build-shards stopped by {name}; finished shards are kept: "
                     "run the same command with --resume to finish the build"], stderr  # fmt: skip
    assert not (out / ".lock").exists() and not (out / MANIFEST_NAME).exists()
    assert not [f for split in ("train", "val") if (out / split).is_dir() for f in os.listdir(out / split) if ".tmp" in f]

    build_shards(quick_build_config(tiny_source, out, shard_size=3, resume=True))
    clean = tmp_path / "clean"
    build_shards(quick_build_config(tiny_source, clean, shard_size=3))
    assert snapshot(out) == snapshot(clean)


def test_a_worker_killed_mid_build_fails_it_cleanly_instead_of_hanging(tiny_source, tmp_path):
    """What the kernel's out-of-memory killer does to one worker: exit 1 with a clear line, lock released."""
    out = tmp_path / "out"
    with started(build_command(tiny_source, out, "--workers", "2")) as proc:
        wait_for_parts(proc, out, 1)
        os.kill(min(children(proc.pid)), signal.SIGKILL)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1, stderr
    assert "Error: a worker process died (exit code -9, killed: out of memory?)" in stderr and "Traceback" not in stderr
    assert not (out / ".lock").exists() and not (out / MANIFEST_NAME).exists()
