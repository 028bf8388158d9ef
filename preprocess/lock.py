"""One builder per destination: an exclusively created `.lock` file that names its holder.

A lock left by a builder that was killed (same host, process gone) is stale and is taken over with a
warning, so `build-shards --resume` after a SIGKILL needs no manual cleanup. A live holder makes a second
builder fail at once, naming the holder.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time

from preprocess.output import OutputDir

__all__ = ["BuildLock", "BuildLocked"]

log = logging.getLogger(__name__)
LOCK_NAME = ".lock"


class BuildLocked(RuntimeError):
    """Another builder is writing to the same destination."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class BuildLock:
    def __init__(self, out: OutputDir):
        self.out = out
        self.path = out.path(LOCK_NAME)
        self._held = False

    def _create(self, payload: bytes) -> bool:
        """Creates the lock file only if it does not exist; False if it does."""
        if self.out.is_local:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(payload)
            return True
        try:  # conditional create where the store supports it (s3fs: If-None-Match)
            with self.out.fs.open(self.path, "xb") as f:
                f.write(payload)
            return True
        except FileExistsError:
            return False
        except (ValueError, NotImplementedError):
            if self.out.fs.exists(self.path):
                return False
            self.out.fs.pipe_file(self.path, payload)
            return True

    def acquire(self) -> None:
        me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
        payload = json.dumps(me).encode()
        if self._create(payload):
            self._held = True
            return
        try:
            holder = json.loads(self.out.fs.cat_file(self.path))
        except (OSError, ValueError):
            holder = {}
        if holder.get("host") == me["host"] and isinstance(holder.get("pid"), int) and not _alive(holder["pid"]):
            log.warning("taking over the stale lock %s of process %d, which is gone", self.path, holder["pid"])
            self.out.fs.rm(self.path)
            if self._create(payload):
                self._held = True
                return
        raise BuildLocked(
            f"another build-shards is writing to {self.out.url} (lock {self.path}: {holder or 'unreadable'}); "
            "if no builder runs, remove the lock file"
        )

    def release(self) -> None:
        if self._held:
            self.out.fs.rm(self.path)
            self._held = False

    def __enter__(self) -> BuildLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
