"""Two "nodes" on one machine: two torchrun launchers (2 ranks each, gloo) meeting at a c10d rendezvous.

What a multi-node job needs beyond one node: ranks are global (LOCAL_RANK != RANK), one writer for the run
directory, a resume every node agrees on, and a node that dies and comes back.
"""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest
import torch
from trainer_fixtures import TINY, Node, check, torchrun, two_nodes

from trainer.metrics import read_metrics

EPOCHS = 2  # tiny build: 24 train images -> 3 steps of 2 per rank and epoch on 4 ranks; 9 val images


def _args(shards, out, *extra):
    return ["--data", str(shards), "--out", str(out), *TINY, "--batch-size", "2", "--epochs", str(EPOCHS),
            "--log-interval", "1", "--checkpoint-every-steps", "2", *extra]


@pytest.fixture(scope="module")
def shards(tiny_build):
    return tiny_build[0]


@pytest.fixture(scope="module")
def one_node(shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("one-node")
    check(torchrun(_args(shards, out), nproc=4))  # one launcher of 4 ranks, loopback-only as the two nodes are
    return out


@pytest.fixture(scope="module")
def two(shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("two-nodes")
    logs = tmp_path_factory.mktemp("two-nodes-logs")
    nodes = two_nodes(_args(shards, out / "run"), str(logs))
    assert [n.proc.returncode for n in nodes] == [0, 0], nodes[0].output[-3000:] + nodes[1].output[-3000:]
    return out / "run", nodes


def _rows(out, kind):
    return [r for r in read_metrics(os.path.join(out, "metrics.jsonl")) if r["kind"] == kind]


def _final(out):
    return torch.load(os.path.join(out, "checkpoint-00000006.pth"), weights_only=True)


def _same_result(a, b):
    """Same steps, metrics and weights (to float tolerance: the all-reduce may sum in another order)."""
    for kind, keys in (("step", ("step", "loss", "top1")), ("epoch", ("epoch", "loss", "val_loss", "val_top1"))):
        ra, rb = _rows(a, kind), _rows(b, kind)
        assert len(ra) == len(rb) > 0
        for x, y in zip(ra, rb, strict=True):
            assert [x[k] for k in keys] == pytest.approx([y[k] for k in keys], rel=1e-5, abs=1e-6), kind
    sa, sb = _final(a), _final(b)
    assert (sa["epoch"], sa["step"]) == (sb["epoch"], sb["step"]) == (EPOCHS, 6)
    for k in sa["model"]:
        assert torch.allclose(sa["model"][k].float(), sb["model"][k].float(), rtol=1e-4, atol=1e-6), k


def test_two_nodes_train_like_one_node_of_four_ranks(two, one_node):
    out, nodes = two
    _same_result(out, one_node)
    assert [r["step"] for r in _rows(out, "step")] == [1, 2, 3, 4, 5, 6]
    assert [r["val_count"] for r in _rows(out, "epoch")] == [9, 9]  # val counted once over the four ranks
    final = _final(out)
    assert final["world_size"] == 4 and [s["rank"] for s in final["loader"]] == [0, 1, 2, 3]
    assert sorted(os.listdir(out)) == sorted(os.listdir(one_node))  # written once, nothing partial left
    logs = nodes[0].output + nodes[1].output
    ranks_logging = {line.split("[rank ")[1].split("]")[0] for line in logs.splitlines() if "[rank " in line}
    assert ranks_logging == {"0"} and logs.count("FINAL val (9 images)") == 1


def test_every_sample_is_read_by_exactly_one_rank_per_epoch(coded_build, tmp_path):
    """The trainer's loaders under two launchers: global ranks slice the data, local ranks never do."""
    nodes = two_nodes(["--data", coded_build.root, "--out", str(tmp_path), *TINY, "--batch-size", "2", "--epochs", "2"],
                      str(tmp_path), script="tests/rank_probe.py")
    assert [n.proc.returncode for n in nodes] == [0, 0], nodes[0].output[-3000:] + nodes[1].output[-3000:]
    seen = [json.load(open(tmp_path / f"rank-{r}.json")) for r in range(4)]
    assert sorted(s["local_rank"] for s in seen) == [0, 0, 1, 1] and {s["world_size"] for s in seen} == {4}
    for epoch in range(2):
        labels = [y for s in seen for y in s["train"][epoch]]
        assert sorted(labels) == sorted(coded_build.labels["train"])  # 40 samples, 10 per rank, none twice
    assert sorted(y for s in seen for y in s["val"]) == sorted(coded_build.labels["val"])


@pytest.mark.parametrize("hidden", ["run-dir", "checkpoint"])
def test_what_one_node_cannot_see_fails_at_once_on_every_rank(two, shards, tmp_path, hidden):
    """Node 1 runs in a private mount namespace where, over the shared run dir, it sees either an empty directory
    of its own (a node-local disk), or, for the checkpoint to resume from, other bytes (a stale network-FS cache)."""
    out, other = tmp_path / "run", tmp_path / "node1-view"
    shutil.copytree(two[0], out)
    if hidden == "run-dir":
        other.mkdir()
        target, expected = out, "ranks see different contents of the run directory"
    else:
        shutil.copy(out / "checkpoint-00000004.pth", other)
        target, expected = out / "checkpoint-00000006.pth", "ranks see different contents of the checkpoint"
    before = (out / "metrics.jsonl").read_bytes()
    wrap = ["unshare", "-m", "sh", "-c", 'mount --bind "$1" "$2" && shift 2 && exec "$@"', "sh", str(other), str(target)]
    start = time.monotonic()
    nodes = two_nodes(_args(shards, out, "--epochs", "3"), str(tmp_path), wrap1=wrap)
    assert time.monotonic() - start < 120
    assert [n.proc.returncode != 0 for n in nodes] == [True, True]
    for node in nodes:  # each of the four ranks raises the same error (none a FileNotFoundError or a peer's loss)
        assert node.output.count(f"RunDirNotShared: {expected}") == 2, node.output[-3000:]
        assert "must be on storage all nodes share" in node.output and "FileNotFoundError:" not in node.output
    assert (out / "metrics.jsonl").read_bytes() == before  # nothing resumed, nothing trained
    assert not list(out.glob(".shared-check-*"))


def test_a_node_killed_mid_epoch_and_started_again_resumes_on_every_rank(two, shards, tmp_path):
    """--max-restarts=1; node 1 (launcher and ranks) is killed after step 5 (mid-epoch 2; last checkpoint: step 4).

    Also the shared run directory's resume: every rank of both nodes checks and loads the same checkpoint.
    """
    out, hung = tmp_path / "run", tmp_path / "hung"
    hung.mkdir()
    args, extra, env = _args(shards, out), ["--max-restarts=1"], {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    node0, node1 = two_nodes(args, str(tmp_path), extra=extra, env=env, env1={"TRAINER_HANG_AT": f"{hung}:5"},
                             wait=False)
    try:
        deadline = time.monotonic() + 180
        while len(list(hung.iterdir())) < 2:  # both ranks of node 1 stopped after step 5, node 0 waits on them
            assert time.monotonic() < deadline and node0.proc.poll() is None, node0.output[-3000:]
            time.sleep(0.1)
        node1.kill()
        again = Node(args, port=node0.port, node_rank=1, log=str(tmp_path / "node1-again.log"), extra=extra, env=env,
                     wrap=node0.same_network)
        assert [again.wait(), node0.wait()] == [0, 0], node0.output[-3000:] + again.output[-3000:]
    finally:
        for node in (node0, node1):
            if node.proc.poll() is None:
                node.kill()
    resumed = [r for r in read_metrics(os.path.join(out, "metrics.jsonl")) if r.get("event") == "resumed"]
    assert len(resumed) == 1 and resumed[0]["checkpoint"].endswith("checkpoint-00000004.pth")
    assert [r["epoch"] for r in _rows(out, "epoch")] == [0, 1]  # the right epoch count, none repeated
    assert [r["step"] for r in _rows(out, "step")] == [1, 2, 3, 4, 5, 6]
    _same_result(out, two[0])  # every rank resumed from the same state: the result of the straight run


def test_ranks_agree_on_the_launch_even_with_an_older_launchs_keys_in_the_store():
    """A real TCPStore holding a previous launch's keys (as torchrun's shared store does after a restart)."""
    import threading
    from datetime import timedelta

    from torch.distributed import TCPStore

    from trainer.dist import agree_on_attempt

    store = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=30))

    def launch(results, rank, delay):
        time.sleep(delay)
        client = TCPStore("127.0.0.1", store.port, is_master=False, timeout=timedelta(seconds=30))
        results[rank] = agree_on_attempt(client, rank, 3, timeout_s=30)

    def run(delays):
        results = [None] * 3
        threads = [threading.Thread(target=launch, args=(results, r, d)) for r, d in enumerate(delays)]
        [t.start() for t in threads]
        [t.join(60) for t in threads]
        return results

    first = run([0, 0, 0])
    assert len(set(first)) == 1 and None not in first
    # the next launch: rank 0 first, so it finds the older launch's requests in the store before the new ones
    second = run([0, 0.3, 0.6])
    assert len(set(second)) == 1 and None not in second and second[0] != first[0]
