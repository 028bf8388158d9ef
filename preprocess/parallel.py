"""Runs chunk tasks on a process pool and yields their results in task order, with a progress bar."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Iterator

import fsspec
from tqdm import tqdm

from preprocess.worker import ChunkResult, ChunkTask, init_worker, process_chunk

__all__ = ["run_chunks"]


def run_chunks(tasks: list[ChunkTask], cfg) -> Iterator[ChunkResult]:
    """Yields one result per task, in order, however many workers run them.

    Workers are spawned, not forked: a forked copy of a parent that holds threads (fsspec's async loop
    for s3fs, tqdm's monitor) can deadlock.
    """
    fs, _ = fsspec.core.url_to_fs(cfg.src)
    total = sum(len(t.items) for t in tasks)
    bar = tqdm(total=total, unit="img", desc="build-shards", disable=not cfg.progress, smoothing=0.1)
    context = mp.get_context("spawn")
    with (
        bar,
        context.Pool(cfg.workers, initializer=init_worker, initargs=(fs, cfg.size, cfg.quality, cfg.max_pixels)) as pool,
    ):
        for result in pool.imap(process_chunk, tasks, chunksize=1):
            bar.update(len(result.task.items))
            yield result
