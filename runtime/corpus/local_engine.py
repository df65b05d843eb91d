"""The in-process engine: a reader thread, the embedder on the calling thread, a writer thread.

Reading (file parsing) and writing (Parquet encoding, fsync) run beside inference, joined
by bounded queues, so they stay off the critical path while onnxruntime uses the job's
threads; memory is bounded by ``queue_chunks`` chunks per queue plus the unit being
assembled. Units are read, embedded and written in plan order, so ``run.json`` always
names a prefix of the pending units.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from .embedding import EmbeddedChunk
from .errors import CorpusError
from .job import Job

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
    """Read, embed and write ``job``'s pending units in this process.

    Raises:
        BadRowError: a bad row with ``on_bad_row="fail"``, after every unit before it is written.
        Whatever a part raises (an unreadable input, a full disk), after stopping the others.
    """
    step = job.step()
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

    reader = _thread(read, "embedrt-corpus-reader", chunks, failures, stop)
    writing = _thread(write, "embedrt-corpus-writer", None, failures, stop)
    try:
        while (item := chunks.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            embedded.put(step(item))
            job.advance(item.rows_read, len(item.ids), len(item.bad))
        embedded.put(_END)
        writing.join()
    except _Stopped:
        pass  # the writer failed: its error is in failures
    except CorpusError:
        # A bad row (or an input error) while reading: the units before it are embedded;
        # the writer finishes them, so a rerun (say, with on_bad_row=skip) starts there.
        try:
            embedded.put(_END)
            writing.join()
        except _Stopped:
            pass
        raise
    finally:
        stop.set()
        reader.join()
        writing.join()
    if failures:
        raise failures[0]


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
