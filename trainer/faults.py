"""Fault-injection hooks for the restart tests; they do nothing unless their variable is set.

TRAINER_FAIL_ONCE="<marker path>:<rank>:<step>" makes that rank exit(1) right after optimizer step <step>
(after any checkpoint of that step), once: the marker file records that it happened, so the process that
torchrun restarts trains on.

TRAINER_HANG_AT="<dir>:<step>" makes every rank that has it stop right after step <step> and wait forever, after
writing `<dir>/hung-rank-<rank>` (its pid): set on one node's launcher, it holds that node still mid-epoch, so a
test can kill the whole node (launcher and ranks) at a known step while the other node waits in a collective.
"""

from __future__ import annotations

import logging
import os
import time

__all__ = ["maybe_fail", "ENV_VAR", "HANG_VAR"]

ENV_VAR = "TRAINER_FAIL_ONCE"
HANG_VAR = "TRAINER_HANG_AT"
log = logging.getLogger(__name__)


def maybe_fail(rank: int, step: int) -> None:
    _maybe_hang(rank, step)
    spec = os.environ.get(ENV_VAR)
    if not spec:
        return
    marker, fail_rank, fail_step = spec.rsplit(":", 2)
    if rank != int(fail_rank) or step != int(fail_step) or os.path.exists(marker):
        return
    with open(marker, "w") as f:
        f.write(f"rank {rank} failed at step {step}\n")
    log.error("%s: rank %d exits(1) after step %d (injected fault)", ENV_VAR, rank, step)
    os._exit(1)


def _maybe_hang(rank: int, step: int) -> None:
    spec = os.environ.get(HANG_VAR)
    if not spec:
        return
    where, hang_step = spec.rsplit(":", 1)
    if step != int(hang_step):
        return
    with open(os.path.join(where, f"hung-rank-{rank}"), "w") as f:
        f.write(str(os.getpid()))
    log.error("%s: rank %d stops after step %d and waits to be killed (injected fault)", HANG_VAR, rank, step)
    while True:
        time.sleep(60)
