"""Dynamic batching: coalesce concurrent requests into length-sorted, token-budgeted batches.

One dedicated thread owns tokenisation and inference, so the two never fight over cores
and the server's event loop never blocks on them. Requests hand their texts to the thread
through a queue and wait on a future; the thread gathers what has arrived (what queued while
the previous batch ran, and what arrives within ``max_wait_ms`` of the first request, 0 by
default), tokenises each request, sorts every input by length, cuts batches whose padded size
(rows x width) stays under ``max_batch_tokens``, and scatters the rows back so each request
gets exactly its own vectors, in its order.

Pooling is mask-aware, so a text's fp32 vector does not depend on its batch neighbours:
the result equals :meth:`Embedder.encode` on the request's texts alone.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt
from embedrt.runtime.embedder import Embedder, Embeddings
from embedrt.runtime.errors import EmbedrtError
from embedrt.runtime.pooling import FloatArray
from tokenizers import Encoding

from .config import ServerConfig

logger = logging.getLogger(__name__)


class BatchObserver(Protocol):
    """What the batcher reports as it works (the server's metrics implement this).

    Every method is called from the inference thread, except :meth:`queue_depth` and
    :meth:`rejected`, which submitters call too.
    """

    def queue_depth(self, depth: int) -> None:
        """Inputs accepted and not yet embedded, after each change."""

    def rejected(self) -> None:
        """A submission was refused because the queue was full."""

    def tokenized(self, seconds: float, tokens: int, truncated: int) -> None:
        """A coalesced group of requests was tokenised."""

    def inferred(self, seconds: float, rows: int, padded_tokens: int) -> None:
        """One inference call ran."""


class _Unobserved:
    """The observer used when none is given: reports go nowhere."""

    def queue_depth(self, depth: int) -> None:
        """Ignore it."""

    def rejected(self) -> None:
        """Ignore it."""

    def tokenized(self, seconds: float, tokens: int, truncated: int) -> None:
        """Ignore it."""

    def inferred(self, seconds: float, rows: int, padded_tokens: int) -> None:
        """Ignore it."""


class QueueFullError(EmbedrtError, RuntimeError):
    """The batcher holds ``max_queue`` inputs already; retry later."""

    def __init__(self, requested: int, depth: int, limit: int) -> None:
        super().__init__(
            f"the server is busy: {depth} inputs are queued and this request adds {requested}; "
            f"the queue holds at most {limit}. Retry after a short wait."
        )
        self.limit = limit


class BatcherClosedError(EmbedrtError, RuntimeError):
    """The batcher is shutting down and accepts no new work."""


@dataclass(eq=False)
class _Job:
    texts: Sequence[str]
    truncate: bool
    future: Future[Embeddings] = field(default_factory=Future)
    vectors: FloatArray | None = None
    token_counts: npt.NDArray[np.int64] | None = None
    truncated: tuple[int, ...] = ()
    remaining: int = 0


_Row = tuple[_Job, int, Encoding]
_STOP = None
_WAKE = "wake"  # put by drain(): stop waiting for company and run what is queued


class Batcher:
    """Owns the inference thread. Build it, :meth:`start` it, :meth:`close` it.

    Raises nothing at construction; see :meth:`submit` for what submitting raises.
    """

    def __init__(
        self, embedder: Embedder, config: ServerConfig, observer: BatchObserver | None = None
    ) -> None:
        self.embedder = embedder
        self.config = config
        self.observer: BatchObserver = observer or _Unobserved()
        self._queue: queue.SimpleQueue[_Job | str | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._depth = 0
        self._closed = False
        self._draining = threading.Event()
        self._thread = threading.Thread(target=self._run, name="embedrt-inference", daemon=True)

    @property
    def depth(self) -> int:
        """Inputs accepted and not yet embedded."""
        return self._depth

    def start(self) -> None:
        """Start the inference thread."""
        self._thread.start()

    def submit(self, texts: Sequence[str], truncate: bool = True) -> Future[Embeddings]:
        """Queue ``texts`` for embedding; the future resolves to their :class:`Embeddings`.

        The future fails with :class:`InputTooLongError` when ``truncate`` is False and an
        input is too long, or with the error inference raised.

        Raises:
            QueueFullError: accepting the texts would exceed ``max_queue``.
            BatcherClosedError: :meth:`close` was called.
        """
        job = _Job(list(texts), truncate)
        with self._lock:
            if self._closed:
                raise BatcherClosedError("the server is shutting down and accepts no new requests")
            if self._depth + len(job.texts) > self.config.max_queue:
                self.observer.rejected()
                raise QueueFullError(len(job.texts), self._depth, self.config.max_queue)
            self._depth += len(job.texts)
            self.observer.queue_depth(self._depth)
        self._queue.put(job)
        return job.future

    async def embed(self, texts: Sequence[str], truncate: bool = True) -> Embeddings:
        """Await :meth:`submit`'s result from the event loop.

        Raises:
            QueueFullError, BatcherClosedError: as :meth:`submit`.
            InputTooLongError: ``truncate`` is False and an input is too long.
        """
        return await asyncio.wrap_future(self.submit(texts, truncate))

    def drain(self) -> None:
        """Stop waiting for requests to batch with: what is queued now runs at once.

        Called when the server starts to shut down, so accepted requests are answered
        without waiting out ``max_wait_ms``; new work is still accepted until :meth:`close`.
        """
        self._draining.set()
        self._queue.put(_WAKE)

    def close(self, timeout: float | None = None) -> None:
        """Refuse new work, let the thread finish what it holds, and join it."""
        with self._lock:
            self._closed = True
        self.drain()
        self._queue.put(_STOP)
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning("inference thread still busy after %.1f s; leaving it", timeout or 0.0)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            jobs, stopping = self._collect()
            try:
                self._process(jobs)
            except Exception as err:  # a bug must fail its requests, never kill the thread
                logger.exception("inference failed")
                for job in jobs:
                    if not job.future.done():
                        self._settle(job, error=err)

    def _collect(self) -> tuple[list[_Job], bool]:
        """Block for one job, then gather more until the wait or the token budget runs out."""
        first = self._queue.get()
        if first is _STOP:
            return [], True
        if not isinstance(first, _Job):  # a wake-up with nothing queued
            return [], False
        jobs, estimate = [first], self._estimate(first)
        deadline = time.monotonic() + self.config.max_wait_ms / 1000
        while estimate < self.config.max_batch_tokens:
            remaining = 0.0 if self._draining.is_set() else deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is _STOP:
                return jobs, True
            if not isinstance(job, _Job):  # drain(): run what is gathered now
                break
            jobs.append(job)
            estimate += self._estimate(job)
        return jobs, False

    def _estimate(self, job: _Job) -> int:
        """Rough tokens before tokenising (about 4 characters a token)."""
        limit = self.embedder.max_seq_length
        return sum(min(limit, len(text) // 4 + 2) for text in job.texts)

    def _process(self, jobs: list[_Job]) -> None:
        started = time.perf_counter()
        rows: list[_Row] = []
        for job in jobs:
            if job.future.set_running_or_notify_cancel():
                rows.extend(self._tokenize(job))
            else:  # the client went away before we started
                self._release(len(job.texts))
        if jobs:
            tokens = sum(len(row[2].ids) for row in rows)
            truncated = sum(len(job.truncated) for job in jobs)
            self.observer.tokenized(time.perf_counter() - started, tokens, truncated)
        rows.sort(key=lambda row: len(row[2].ids))
        for batch in self._batches(rows):
            self._infer(batch)

    def _tokenize(self, job: _Job) -> list[_Row]:
        try:
            encodings = self.embedder.tokenize(job.texts, job.truncate)
        except Exception as err:  # InputTooLongError, or the tokenizer rejecting a text
            self._settle(job, error=err)
            return []
        job.token_counts = np.fromiter((len(e.ids) for e in encodings), np.int64, len(encodings))
        job.truncated = tuple(i for i, e in enumerate(encodings) if e.overflowing)
        job.vectors = np.empty((len(encodings), self.embedder.dim), dtype=np.float32)
        job.remaining = len(encodings)
        if not encodings:
            self._settle(job)
        return [(job, index, encoding) for index, encoding in enumerate(encodings)]

    def _batches(self, rows: list[_Row]) -> Iterator[list[_Row]]:
        """Cut length-sorted rows into batches under the token and row caps."""
        batch: list[_Row] = []
        for row in rows:
            width = self.embedder.padded_width(len(row[2].ids))  # rows are sorted: this is the longest
            too_many = (len(batch) + 1) * width > self.config.max_batch_tokens
            if batch and (too_many or len(batch) >= self.config.max_batch_size):
                yield batch
                batch = []
            batch.append(row)
        if batch:
            yield batch

    def _infer(self, batch: list[_Row]) -> None:
        live = [row for row in batch if not row[0].future.done()]
        if not live:
            return
        started = time.perf_counter()
        try:
            vectors = self.embedder.embed_encodings([encoding for _, _, encoding in live])
        except Exception as err:  # onnxruntime's untyped errors: fail these requests, keep serving
            logger.exception("inference failed for a batch of %d inputs", len(live))
            for job in {row[0] for row in live}:
                self._settle(job, error=err)
            return
        width = self.embedder.padded_width(len(live[-1][2].ids))
        self.observer.inferred(time.perf_counter() - started, len(live), len(live) * width)
        for (job, index, _), vector in zip(live, vectors, strict=True):
            if job.vectors is None or job.future.done():
                continue
            job.vectors[index] = vector
            job.remaining -= 1
            if job.remaining == 0:
                self._settle(job)

    def _settle(self, job: _Job, error: BaseException | None = None) -> None:
        if error is not None:
            job.future.set_exception(error)
        else:
            counts = job.token_counts if job.token_counts is not None else np.zeros(0, np.int64)
            vectors = job.vectors if job.vectors is not None else np.zeros((0, self.embedder.dim), np.float32)
            job.future.set_result(Embeddings(vectors, counts, job.truncated))
        self._release(len(job.texts))

    def _release(self, count: int) -> None:
        with self._lock:
            self._depth -= count
            self.observer.queue_depth(self._depth)
