"""A fault-injection hook for the restart tests (RELIABILITY.md T2/T4); does nothing unless the variable is set.

TRAINER_FAIL_ONCE="<marker path>:<rank>:<step>" makes that rank exit(1) right after optimizer step <step>
(after any checkpoint of that step), once: the marker file records that it happened, so the process that
torchrun restarts trains on.
"""

from __future__ import annotations

import logging
import os

__all__ = ["maybe_fail", "ENV_VAR"]

ENV_VAR = "TRAINER_FAIL_ONCE"
log = logging.getLogger(__name__)


def maybe_fail(rank: int, step: int) -> None:
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
