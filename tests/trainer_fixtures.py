"""Trainer test helpers: in-process stand-in batches for loop unit tests and torchrun launch helpers.

The stand-in iterables are for unit tests of the loop only; the end-to-end (torchrun) tests use the real
`pipeline.ImageNetLoader` on tiny real shards.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

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


# A network namespace of its own with only a loopback interface: torch's stores listen on every interface, and
# nothing a test starts may be reachable from outside the machine.
LOOPBACK_ONLY = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]


def torchrun(args, *, nproc=2, extra=(), env=None):
    cmd = [*LOOPBACK_ONLY, TORCHRUN, "--standalone", f"--nproc_per_node={nproc}", *extra, "trainer/main.py", *args]
    return run(cmd, env=env)


def check(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-4000:]}\nSTDERR:\n{proc.stderr[-4000:]}"
    return proc


# Two "nodes" on this machine: two torchrun launchers meeting at a c10d rendezvous on 127.0.0.1 ----------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    """One torchrun launcher (a "node" of `nproc` ranks), its output in a file."""

    def __init__(self, args, *, port, node_rank, log, nproc=2, extra=(), env=None, wrap=(), script="trainer/main.py"):
        cmd = [*wrap, TORCHRUN, "--nnodes=2", f"--nproc_per_node={nproc}", f"--node_rank={node_rank}",
               "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", *extra, script, *args]
        self.log = log
        with open(log, "w") as out:
            self.proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
                                         stdout=out, stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def wait(self, timeout=240) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        """The launcher and its ranks (torchrun starts each rank in a session of its own)."""
        for pid in [self.proc.pid, *_children(self.proc.pid)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()

    @property
    def same_network(self) -> list[str]:
        """A command prefix that runs in this node's network namespace."""
        return ["nsenter", f"--net=/proc/{self.proc.pid}/ns/net"]

    @property
    def output(self) -> str:
        return open(self.log).read()


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def wait_listening(port: int, node: Node, timeout=60) -> None:
    """Until node 0 hosts the rendezvous store, so that it (not node 1) keeps it when node 1 is killed.

    Read from node 0's own view of its network namespace (the test process is outside it).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert node.proc.poll() is None, node.output[-3000:]
        for table in ("tcp", "tcp6"):
            rows = [line.split() for line in open(f"/proc/{node.proc.pid}/net/{table}").read().splitlines()[1:]]
            if any(int(row[1].rsplit(":", 1)[1], 16) == port and row[3] == "0A" for row in rows):  # 0A: LISTEN
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def two_nodes(args, logs, *, extra=(), env=None, env1=None, wrap1=(), script="trainer/main.py", wait=True):
    """Node 0, then node 1 (with `env1` and command prefix `wrap1`); returns both nodes, finished when `wait`.

    Both run in one loopback-only network namespace (LOOPBACK_ONLY), which node 1 joins.
    """
    port = free_port()
    node0 = Node(args, port=port, node_rank=0, log=os.path.join(logs, "node0.log"), extra=extra, env=env,
                 script=script, wrap=LOOPBACK_ONLY)
    wait_listening(port, node0)
    node1 = Node(args, port=port, node_rank=1, log=os.path.join(logs, "node1.log"), extra=extra,
                 env={**(env or {}), **(env1 or {})}, wrap=[*node0.same_network, *wrap1], script=script)
    node0.port = node1.port = port
    if wait:
        for node in (node0, node1):
            node.wait()
    return node0, node1
