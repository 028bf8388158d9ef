"""The build's destination: a local directory or any fsspec URL, where files appear only when complete.

Every file is first written to a local staging path. On a local destination the staging file sits in the
destination directory (`.tmp-<name>`), is fsynced and renamed: an atomic step on one filesystem. On a
remote destination it is uploaded with one `put_file`; object stores make an object visible only once its
upload is complete, so a reader never sees half a shard either way.
"""

from __future__ import annotations

import logging
import os
import posixpath
import secrets
import shutil
import tempfile
import time

import fsspec
from fsspec.implementations.local import LocalFileSystem

from pipeline.contract import MANIFEST_NAME, SPLITS

__all__ = ["OutputDir", "OutputExistsError"]

log = logging.getLogger(__name__)


STAGING_PREFIX = ".tmp-"  # files being written; a build that publishes removes any it finds
RETRIES = 4  # attempts after the first, with exponential backoff
BACKOFF_SECONDS = 0.5


def _with_retries(upload, what: str) -> None:
    """Retries an upload that failed with a (possibly transient) OSError; an upload is all-or-nothing."""
    for attempt in range(RETRIES + 1):
        try:
            return upload()
        except OSError as e:
            if attempt == RETRIES:
                raise OSError(f"uploading {what} failed {RETRIES + 1} times; last error: {e}") from e
            delay = BACKOFF_SECONDS * 2**attempt
            log.warning("uploading %s failed (%s); retrying in %.1f s", what, e, delay)
            time.sleep(delay)


class OutputExistsError(FileExistsError):
    """The destination already holds (part of) a build and --overwrite was not given."""


class OutputDir:
    def __init__(self, url: str):
        self.url = url
        self.fs, self.root = fsspec.core.url_to_fs(url)
        self.is_local = isinstance(self.fs, LocalFileSystem)
        self._staging_root = None if self.is_local else tempfile.mkdtemp(prefix="build-shards-")
        # Each OutputDir stages under names of its own, so two writers of one file (two attempts of one shard
        # on different nodes) never share a temporary file; the ones still open are removed by close().
        self._token = secrets.token_hex(6)
        self._staged: set[str] = set()

    def __repr__(self) -> str:
        return f"OutputDir({self.url!r})"

    def path(self, relpath: str) -> str:
        return posixpath.join(self.root, relpath)

    def existing_build_files(self) -> list[str]:
        """Files of an earlier build (finished or not) that a new build would replace."""
        found = []
        if self.fs.exists(self.path(MANIFEST_NAME)):
            found.append(MANIFEST_NAME)
        for split in (*SPLITS, ".parts"):
            if self.fs.isdir(self.path(split)):
                found += [posixpath.join(split, posixpath.basename(p)) for p in self.fs.ls(self.path(split), detail=False)]
        return found

    def clear(self) -> None:
        """Removes an earlier build: the manifest first, so a crash here leaves no build that looks finished."""
        if self.fs.exists(self.path(MANIFEST_NAME)):
            self.fs.rm(self.path(MANIFEST_NAME))
        for name in (*SPLITS, ".parts"):
            if self.fs.isdir(self.path(name)):
                self.fs.rm(self.path(name), recursive=True)

    def staging_path(self, relpath: str) -> str:
        """A local path to write `relpath` to before `publish`."""
        if self.is_local:
            directory, name = posixpath.split(self.path(relpath))
            os.makedirs(directory, exist_ok=True)
            path = posixpath.join(directory, f"{STAGING_PREFIX}{self._token}-{name}")
        else:
            path = os.path.join(self._staging_root, relpath)
            os.makedirs(os.path.dirname(path), exist_ok=True)
        self._staged.add(path)
        return path

    def publish(self, staging: str, relpath: str) -> None:
        """Makes the complete file at `staging` appear as `relpath`, in one step."""
        final = self.path(relpath)
        if self.is_local:
            with open(staging, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(staging, final)
        else:
            self.fs.makedirs(posixpath.dirname(final), exist_ok=True)
            _with_retries(lambda: self.fs.put_file(staging, final), final)
            os.remove(staging)
        self._staged.discard(staging)

    def write_bytes(self, relpath: str, data: bytes) -> None:
        staging = self.staging_path(relpath)
        with open(staging, "wb") as f:
            f.write(data)
        self.publish(staging, relpath)

    def discard_staged(self) -> None:
        """Removes what this writer staged and did not publish (after an error or a stop)."""
        for path in self._staged:
            if os.path.exists(path):
                os.remove(path)
        self._staged.clear()

    def close(self) -> None:
        self.discard_staged()
        if self._staging_root is not None:
            shutil.rmtree(self._staging_root, ignore_errors=True)
