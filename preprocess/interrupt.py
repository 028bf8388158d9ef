"""Stopping a build by SIGTERM unwinds exactly like Ctrl-C, so either one leaves finished shards and no lock.

Schedulers stop jobs with SIGTERM (`ray job stop`, Kubernetes, Slurm), and Python's default for it ends the
process on the spot: no `finally` runs, the destination lock stays, and pool workers find their pipe gone. We
turn SIGTERM into `Stopped`, a KeyboardInterrupt, so the one unwinding path (cancel the workers, discard the
open shard, release the lock) serves both signals, and the command exits 143 or 130 as shells expect.
"""

from __future__ import annotations

import signal
import threading

__all__ = ["Stopped", "raise_on_sigterm", "exit_code", "RESUME_HINT"]

RESUME_HINT = "finished shards are kept: run the same command with --resume to finish the build"


class Stopped(KeyboardInterrupt):
    """The process received SIGTERM."""


_received: list[int] = []  # SIGTERM, once received: libraries (Ray's wait) may re-raise ours as a plain KeyboardInterrupt


def _on_sigterm(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not interrupt the cleanup
    _received.append(signum)
    raise Stopped()


def raise_on_sigterm() -> None:
    """From now on SIGTERM raises `Stopped` in the main thread (call again after a library that sets its own)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


def exit_code(stop: KeyboardInterrupt) -> int:
    """128 + the signal number, what a shell reports for a process ended by that signal."""
    return 128 + (signal.SIGTERM if isinstance(stop, Stopped) or _received else signal.SIGINT)
