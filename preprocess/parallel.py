"""Runs chunk tasks on a process pool and yields their results in task order, with a progress bar."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Iterator

from tqdm import tqdm

from preprocess.worker import ChunkResult, ChunkTask, init_worker, process_chunk

__all__ = ["run_chunks"]


def run_chunks(tasks: list[ChunkTask], cfg) -> Iterator[ChunkResult]:
    """Yields one result per task, in order, however many workers run them.

    Workers are forked where the platform can (as torch's DataLoader does): they start at once with the
    parent's imports (torch takes seconds to import), and fsspec resets its async lock after a fork. The
    parent runs no torch operation before forking, so no OpenMP pool is copied mid-use. With one worker
    everything runs in this process: no start-up cost, and easy to debug.
    """
    total = sum(len(t.items) for t in tasks)
    settings = (cfg.src, cfg.size, cfg.quality, cfg.max_pixels, cfg.follow_links)
    with tqdm(total=total, unit="img", desc="build-shards", disable=not cfg.progress, smoothing=0.1) as bar:
        if cfg.workers == 1:
            init_worker(*settings, own_process=False)
            results = map(process_chunk, tasks)
            for result in results:
                bar.update(len(result.task.items))
                yield result
            return
        context = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with context.Pool(cfg.workers, initializer=init_worker, initargs=settings) as pool:
            for result in pool.imap(process_chunk, tasks, chunksize=1):
                bar.update(len(result.task.items))
                yield result
