"""The worker processes of a build: run the per-video pipeline in parallel, the main process writes.

Workers are separate processes (started from a fork server, one torch thread each, each loading the
dlib models once); their log records are sent back with the results and logged by the main process.
While a video is processed its worker sends chunks of finished frame groups and frame progress over
``data.channel``; the result (the rest of the record and its meta) comes back through the pool. A
worker that dies (segfault, out of memory) breaks only its own videos: the videos that were in flight
are retried one at a time and the one that kills its worker again is recorded as failed.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing as mp
import os
import select
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Protocol

from data import channel, store

log = logging.getLogger(__name__)

# Workers start from a fork server that imported data.build before any thread pool existed:
# forking the main process itself is unsafe once OpenCV or torch have started their thread pools
# (a child inherits their locks without their threads and can hang, e.g. in cv2.setNumThreads).
START_METHOD = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
POLL_SECONDS = 0.05  # how often the main process looks at finished jobs while it reads chunks
LOST_CHUNKS_SECONDS = 300.0  # a finished job whose chunks do not all arrive by then is an error

_CLIENT: channel.ChannelClient | None = None  # in a worker: its connection to the main process


class Sink(Protocol):
    """What the main process does with what workers send (see data.build.build)."""

    def chunk(self, job, items: list[tuple[bytes, bytes]]) -> None: ...
    def progress(self, job, done: int, expected: int) -> None: ...
    def abandon(self, job) -> None: ...
    def commit(self, rec: store.VideoRecord) -> None: ...
    def failed(self, job, reason: str) -> store.VideoRecord: ...


class _LogCapture(logging.Handler):
    """Collects a worker's log records so the main process can emit them (its handlers are there)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[tuple[int, str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.levelno, record.name, record.getMessage()))


def _exit_with(pid: int) -> None:
    """End this worker as soon as process ``pid`` (the main process) is gone, even after a SIGKILL:
    workers started by a fork server are not its children, and would otherwise wait forever."""

    def watch() -> None:
        try:
            fd = os.pidfd_open(pid)  # Linux: readable once the process has ended
            select.select([fd], [], [])
        except (AttributeError, OSError):
            while True:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                except PermissionError:
                    pass
                time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-main", daemon=True).start()


def _init_worker(level: int, main_pid: int, address: str, authkey: bytes) -> None:
    """Worker process setup: one torch thread (the processes are the parallelism), log records go
    back with the results, a channel to the main process, and the worker ends with the main process
    (no orphans after a kill)."""
    import torch

    global _CLIENT
    torch.set_num_threads(1)
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(logging.NullHandler())
    root.setLevel(level)
    _CLIENT = channel.ChannelClient(address, authkey)
    _exit_with(main_pid)


def _work(process: Callable, job, opts, token: str) -> store.VideoRecord:
    """``process(job, opts, send=..., progress=...)`` in a worker, chunks and progress going to the
    main process, with the log records it produced attached to the record."""
    capture = _LogCapture()
    root = logging.getLogger()
    root.addHandler(capture)
    client = _CLIENT
    try:
        rec = process(job, opts, send=lambda items: client.send_chunk(token, items),
                      progress=lambda done, expected: client.send_progress(token, done, expected))
    finally:
        root.removeHandler(capture)
    rec.log = capture.records
    return rec


def _executor(workers: int, server: channel.ChannelServer) -> ProcessPoolExecutor:
    ctx = mp.get_context(START_METHOD)
    if START_METHOD == "forkserver":
        ctx.set_forkserver_preload(["data.build"])
    return ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                               initargs=(logging.getLogger().getEffectiveLevel(), os.getpid(), server.address,
                                         server.authkey))


def _stop(ex: ProcessPoolExecutor) -> None:
    """End the workers now (on an error in the main process: do not wait for their videos)."""
    for p in list((getattr(ex, "_processes", None) or {}).values()):
        p.terminate()
    ex.shutdown(wait=False, cancel_futures=True)


class _Pass:
    """One pool of workers over a list of jobs; see ``pool_pass``."""

    def __init__(self, process: Callable, opts, workers: int, sink: Sink):
        self.process, self.opts, self.workers, self.sink = process, opts, workers, sink
        self.server = channel.ChannelServer()
        self.ex = _executor(workers, self.server)
        self.tokens = (str(i) for i in itertools.count())
        self.jobs: dict[str, object] = {}  # token → job of the attempts in flight
        self.received: dict[str, int] = defaultdict(int)  # token → chunks written

    def handle(self, kind: bytes, token: str, payload) -> None:
        job = self.jobs.get(token)
        if job is None:  # an abandoned attempt's late message
            return
        if kind == channel.CHUNK:
            self.sink.chunk(job, payload)
            self.received[token] += 1
        else:
            self.sink.progress(job, *payload)

    def wait_for_chunks(self, token: str, count: int) -> None:
        """Read messages until the ``count`` chunks a finished job sent have all been written."""
        deadline = time.monotonic() + LOST_CHUNKS_SECONDS
        while self.received[token] < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.jobs[token].name}: {count - self.received[token]} chunks from its worker "
                                   "never arrived")
            self.server.poll(self.handle, POLL_SECONDS)

    def finish(self, token: str, fut: Future) -> None:
        job = self.jobs[token]
        e = fut.exception()
        if e is not None:  # e.g. a result that could not be sent back
            rec = self.sink.failed(job, f"worker error: {type(e).__name__}: {e}")
        else:
            rec = fut.result()
            self.wait_for_chunks(token, rec.chunks)
            for level, name, msg in rec.log:
                logging.getLogger(name).log(level, "%s", msg)
        del self.jobs[token]
        self.sink.commit(rec)

    def run(self, jobs: list) -> tuple[list, list]:
        queue = list(reversed(jobs))
        running: dict[Future, str] = {}
        while queue or running:
            while queue and len(running) < 2 * self.workers:
                token = next(self.tokens)
                try:
                    fut = self.ex.submit(_work, self.process, queue[-1], self.opts, token)
                except BrokenProcessPool:  # a worker died since the last results came in
                    return self.abandon(running), list(reversed(queue))
                self.jobs[token] = queue.pop()
                running[fut] = token
            self.server.poll(self.handle, POLL_SECONDS)
            broken = False
            for fut in [f for f in running if f.done()]:
                if isinstance(fut.exception(), BrokenProcessPool):
                    broken = True
                    continue
                self.finish(running.pop(fut), fut)
            if broken:
                return self.abandon(running), list(reversed(queue))
        return [], []

    def abandon(self, running: dict[Future, str]) -> list:
        """The jobs in flight when a worker died: forgotten by the writer, to be retried."""
        jobs = [self.jobs.pop(token) for token in running.values()]
        for job in jobs:
            self.sink.abandon(job)
        return jobs

    def close(self, error: bool) -> None:
        if error:
            _stop(self.ex)
        else:
            self.ex.shutdown(wait=True, cancel_futures=True)
        self.server.close()


def pool_pass(process: Callable, jobs: list, opts, workers: int, sink: Sink) -> tuple[list, list]:
    """Run ``process`` over jobs in a pool of worker processes, writing through ``sink`` as results come.

    Returns ([], []) when all finished, else (jobs in flight when a worker died, jobs not started).
    """
    p = _Pass(process, opts, workers, sink)
    error = True
    try:
        out = p.run(jobs)
        error = False
        return out
    finally:
        p.close(error)


def run_parallel(process: Callable, jobs: list, opts, workers: int, sink: Sink) -> None:
    """Every job through the pool; the jobs of a dying worker are retried one at a time."""
    pending = list(jobs)
    while pending:
        suspects, pending = pool_pass(process, pending, opts, workers, sink)
        if suspects:
            log.warning("a worker process died; retrying %s one at a time", ", ".join(j.name for j in suspects))
        for job in suspects:
            again, _ = pool_pass(process, [job], opts, 1, sink)
            if again:
                log.warning("%s: its worker process died (crash or out of memory)", job.path)
                sink.commit(sink.failed(job, "worker process died (crash or out of memory)"))
