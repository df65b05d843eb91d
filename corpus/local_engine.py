"""The local engine: a reader thread, the embedder on the calling thread, a writer thread.

With ``processes > 1`` the calling thread hands chunks to that many worker processes
(``threads / processes`` onnxruntime threads each) and takes the results back in order;
the output is the same chunks, batched the same way.

Reading (file parsing) and writing (Parquet encoding, fsync) run beside inference, joined
by bounded queues, so they stay off the critical path while onnxruntime uses the job's
threads; memory is bounded by ``queue_chunks`` chunks per queue plus the unit being
assembled. Units are read, embedded and written in plan order, so ``run.json`` always
names a prefix of the pending units.
"""

from __future__ import annotations

import multiprocessing
import queue
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from embedrt.runtime.precision import Int8Calibration

from .embedding import EmbeddedChunk, EmbeddingStep
from .errors import CorpusError
from .job import Job
from .reader import Chunk

_POLL_SECONDS = 0.2
_END = object()


class _Stopped(Exception):
    """Raised inside a waiting thread when the job is stopping."""


class _Pipe:
    """A bounded queue whose ``put`` and ``get`` give up when the job stops."""

    def __init__(self, size: int, stop: threading.Event) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(size)
        self._stop = stop

    def put(self, item: Any) -> None:  # chunks, an error or the end marker
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_SECONDS)
                return
            except queue.Full:
                continue
        raise _Stopped

    def get(self) -> Any:  # see put
        while True:
            try:
                return self._queue.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                if self._stop.is_set():
                    raise _Stopped from None


def run(job: Job) -> None:
    """Read, embed and write ``job``'s pending units.

    Embedding runs in this process, or in ``job.options.processes`` worker processes with
    ``threads / processes`` threads each.

    Raises:
        BadRowError: a bad row with ``on_bad_row="fail"``, after every unit before it is written.
        Whatever a part raises (an unreadable input, a full disk), after stopping the others.
    """
    writer = job.writer()
    stop = threading.Event()
    chunks, embedded = _Pipe(job.options.queue_chunks, stop), _Pipe(job.options.queue_chunks, stop)
    failures: list[BaseException] = []

    def read() -> None:
        for unit in job.pending:
            for chunk in job.task(unit).chunks():
                chunks.put(chunk)
        chunks.put(_END)

    def write() -> None:
        parts: list[EmbeddedChunk] = []
        while (item := embedded.get()) is not _END:
            parts.append(item)
            if item.last:
                job.finish(writer.write(item.unit, parts))
                parts = []

    def forward(done: list[EmbeddedChunk]) -> None:
        for result in done:
            embedded.put(result)
            job.advance(result.rows_read, len(result.ids), len(result.bad))

    embedding = _InOrder(job)
    reader = _thread(read, "embedrt-corpus-reader", chunks, failures, stop)
    writing = _thread(write, "embedrt-corpus-writer", None, failures, stop)
    try:
        while (item := chunks.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            forward(embedding.submit(item))
        forward(embedding.drain())
        embedded.put(_END)
        writing.join()
    except _Stopped:
        pass  # the writer failed: its error is in failures
    except CorpusError:
        # A bad row (or an input error) while reading: the units before it are embedded;
        # the writer finishes them, so a rerun (say, with on_bad_row=skip) starts there.
        try:
            forward(embedding.drain())
            embedded.put(_END)
            writing.join()
        except _Stopped:
            pass
        raise
    finally:
        stop.set()
        embedding.close()
        reader.join()
        writing.join()
    if failures:
        raise failures[0]


class _InOrder:
    """Embeds chunks here, or in worker processes; hands results back in submission order."""

    def __init__(self, job: Job) -> None:
        processes = job.options.processes
        self._pending: deque[tuple[Chunk, Future[_Codes]]] = deque()
        self._pool: ProcessPoolExecutor | None = None
        if processes == 1:
            self._step = job.step()
            return
        # spawn, not fork: a forked copy of a process running onnxruntime's threads can hang
        self._pool = ProcessPoolExecutor(
            processes, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
            initargs=(job.model, job.options.precision, job.calibration, job.options.batch_size,
                      max(1, job.threads // processes)),
        )
        self._depth = 2 * processes  # chunks in flight: every worker busy, one more queued each

    def submit(self, chunk: Chunk) -> list[EmbeddedChunk]:
        """Start embedding ``chunk``; returns the chunks finished since, in order."""
        if self._pool is None:
            return [self._step(chunk)]
        self._pending.append((chunk, self._pool.submit(_embed_texts, chunk.texts)))
        done = []
        while len(self._pending) > self._depth or (self._pending and self._pending[0][1].done()):
            done.append(self._result())
        return done

    def drain(self) -> list[EmbeddedChunk]:
        """Wait for every chunk submitted; returns them in order."""
        return [self._result() for _ in range(len(self._pending))]

    def close(self) -> None:
        """Stop the worker processes (if any), dropping work not started."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def _result(self) -> EmbeddedChunk:
        chunk, future = self._pending.popleft()
        codes, tokens, truncated = future.result()
        return EmbeddedChunk(chunk.unit, chunk.ids, codes, tokens, truncated, chunk.bad, chunk.rows_read,
                             chunk.last)


# A worker process's embedding step: set once by the pool's initializer (one per process).
_WORKER_STEP: EmbeddingStep | None = None
_Codes = tuple[npt.NDArray[Any], npt.NDArray[np.int32], npt.NDArray[np.bool_]]


def _start_worker(model: Path, precision: str, calibration: Int8Calibration | None, batch_size: int,
                  threads: int) -> None:
    global _WORKER_STEP
    _WORKER_STEP = EmbeddingStep.load(model, precision, calibration, batch_size, threads, verify=False)


def _embed_texts(texts: list[str]) -> _Codes:
    if _WORKER_STEP is None:  # the initializer always runs first; this guards a misuse
        raise RuntimeError("_embed_texts runs only in a worker started by _start_worker")
    return _WORKER_STEP.embed(texts)


def _thread(
    target: Callable[[], None], name: str, pipe: _Pipe | None, failures: list[BaseException],
    stop: threading.Event,
) -> threading.Thread:
    """Run ``target`` in a daemon thread.

    Its error goes down ``pipe`` (in order after the chunks before it) or, without one, into
    ``failures``, stopping the job.
    """

    def body() -> None:
        try:
            target()
        except _Stopped:
            pass
        except BaseException as err:  # handed to the calling thread, which raises it
            if pipe is not None:
                try:
                    pipe.put(err)
                    return
                except _Stopped:
                    pass
            failures.append(err)
            stop.set()

    thread = threading.Thread(target=body, name=name, daemon=True)
    thread.start()
    return thread
