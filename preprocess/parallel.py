"""Runs chunk tasks on worker processes and yields their results in task order.

A pool of our own rather than multiprocessing.Pool: each worker has a private pipe, so a worker stopped in
the middle of sending a result takes no shared lock with it. (Pool's workers share one result queue lock;
terminating one while it holds that lock deadlocks `Pool.terminate`, which is how a Ctrl-C used to hang.)
Tasks are drawn from an iterator only as workers free up, so the parent holds a bounded window of them.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Iterable, Iterator
from multiprocessing.connection import wait

from preprocess.worker import ChunkResult, ChunkTask, init_worker, load_kernels, process_chunk

__all__ = ["run_chunks"]

DEPTH = 2  # tasks queued per worker, so a worker never waits for the parent between two tasks


class WorkerFailed(RuntimeError):
    """A worker process raised (a bug, MemoryError) or died; carries the worker's traceback text."""


def _serve(conn, settings: tuple) -> None:
    init_worker(*settings)
    while True:
        try:
            task = conn.recv()
        except EOFError:  # the parent is gone (killed): nothing left to do, and nothing to print
            return
        if task is None:
            return
        try:
            result = process_chunk(task)
        except Exception as e:  # noqa: BLE001 (sent to the parent, which raises it)
            import traceback

            result = WorkerFailed(f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
        conn.send(result)


def run_chunks(tasks: Iterable[ChunkTask], cfg, progress) -> Iterator[ChunkResult]:
    """Yields one result per task, in order, however many workers run them.

    Workers are forked where the platform can (as torch's DataLoader does): they start at once, with the
    parent's imports already done, and fsspec resets its async lock after a fork. With one
    worker everything runs in this process: no start-up cost, and easy to debug.
    """
    settings = (cfg.src, cfg.size, cfg.quality, cfg.max_pixels, cfg.follow_links)
    load_kernels()
    if cfg.workers == 1:
        init_worker(*settings, own_process=False)
        results = map(process_chunk, tasks)
    else:
        results = _pooled(iter(tasks), settings, cfg.workers)
    for result in results:
        progress(len(result.task.items))
        yield result


def _pooled(tasks: Iterator[ChunkTask], settings: tuple, workers: int) -> Iterator[ChunkResult]:
    context = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    procs, conns = [], []
    try:
        for _ in range(workers):
            ours, theirs = context.Pipe()
            proc = context.Process(target=_serve, args=(theirs, settings), daemon=True)
            proc.start()
            theirs.close()
            procs.append(proc)
            conns.append(ours)
        yield from _in_order(tasks, conns, {c: p for c, p in zip(conns, procs, strict=True)})
        for conn in conns:
            conn.send(None)
        for proc in procs:
            proc.join()
    finally:  # an error, Ctrl-C or SIGTERM: stop every worker before the caller releases anything
        for proc in procs:
            if proc.is_alive():
                proc.kill()
            proc.join()
        for conn in conns:
            conn.close()


def _died(proc) -> WorkerFailed:
    proc.join(5)
    why = ", killed: out of memory?" if proc.exitcode == -9 else ""
    return WorkerFailed(f"a worker process died (exit code {proc.exitcode}{why}); finished shards are kept: "
                        "run the same command with --resume to finish")  # fmt: skip


def _in_order(tasks: Iterator[ChunkTask], conns: list, procs: dict) -> Iterator[ChunkResult]:
    queued: dict = {c: [] for c in conns}  # conn -> task numbers sent and not yet answered, oldest first
    done: dict[int, ChunkResult] = {}
    sent = next_out = 0
    exhausted = False
    while True:
        for conn in conns:  # top up every worker, keeping at most DEPTH tasks per worker in flight
            while not exhausted and len(queued[conn]) < DEPTH and sent - next_out < DEPTH * len(conns) * 2:
                task = next(tasks, None)
                if task is None:
                    exhausted = True
                    break
                try:
                    conn.send(task)
                except OSError:
                    raise _died(procs[conn]) from None
                queued[conn].append(sent)
                sent += 1
        if next_out == sent:
            return
        busy = [c for c in conns if queued[c]]
        ready = wait(busy + [procs[c].sentinel for c in busy])
        for conn in busy:
            if conn in ready or procs[conn].sentinel in ready:
                try:
                    result = conn.recv()
                except (EOFError, OSError):  # died without answering (killed, out of memory)
                    raise _died(procs[conn]) from None
                if isinstance(result, WorkerFailed):
                    raise result
                done[queued[conn].pop(0)] = result
        while next_out in done:
            yield done.pop(next_out)
            next_out += 1
