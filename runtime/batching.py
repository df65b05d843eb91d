"""Dynamic batching: coalesce concurrent requests into length-sorted, token-budgeted batches.

One dedicated thread owns tokenisation and inference, so the two never fight over cores
and the server's event loop never blocks on them. Requests hand their texts to the thread
through a queue and wait on a future; the thread gathers what has arrived (waiting at most
``max_wait_ms`` after the first request), tokenises each request, sorts every input by
length, cuts batches whose padded size (rows x width) stays under ``max_batch_tokens``, and
scatters the rows back so each request gets exactly its own vectors, in its order.

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

import numpy as np
from tokenizers import Encoding

from .embedder import DEFAULT_MAX_BATCH_TOKENS, Embedder, Embeddings
from .errors import EmbedrtError
from .pooling import FloatArray
from .server_metrics import ServerMetrics

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchingOptions:
    """How requests are coalesced.

    Attributes:
        max_batch_tokens: cap on rows x padded width of one inference call (a single input
            longer than this still runs, alone).
        max_batch_size: cap on rows of one inference call.
        max_wait_ms: how long the worker waits after a request for others to join it.
        max_queue: inputs accepted and not yet embedded; beyond it submissions are refused.
    """

    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS
    max_batch_size: int = 128
    max_wait_ms: float = 2.0
    max_queue: int = 1024

    def __post_init__(self) -> None:
        for name in ("max_batch_tokens", "max_batch_size", "max_queue"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms!r}")


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
    token_counts: np.ndarray | None = None
    truncated: tuple[int, ...] = ()
    remaining: int = 0


_Row = tuple[_Job, int, Encoding]
_STOP = None


class Batcher:
    """Owns the inference thread. Build it, :meth:`start` it, :meth:`close` it.

    Raises nothing at construction; see :meth:`submit` for what submitting raises.
    """

    def __init__(self, embedder: Embedder, options: BatchingOptions, metrics: ServerMetrics) -> None:
        self.embedder = embedder
        self.options = options
        self.metrics = metrics
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._depth = 0
        self._closed = False
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
            if self._depth + len(job.texts) > self.options.max_queue:
                self.metrics.rejected.inc()
                raise QueueFullError(len(job.texts), self._depth, self.options.max_queue)
            self._depth += len(job.texts)
            self.metrics.queue_depth.set(self._depth)
        self._queue.put(job)
        return job.future

    async def embed(self, texts: Sequence[str], truncate: bool = True) -> Embeddings:
        """Await :meth:`submit`'s result from the event loop.

        Raises:
            QueueFullError, BatcherClosedError: as :meth:`submit`.
            InputTooLongError: ``truncate`` is False and an input is too long.
        """
        return await asyncio.wrap_future(self.submit(texts, truncate))

    def close(self, timeout: float | None = None) -> None:
        """Refuse new work, let the thread finish what it holds, and join it."""
        with self._lock:
            self._closed = True
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
        jobs, estimate = [first], self._estimate(first)
        deadline = time.monotonic() + self.options.max_wait_ms / 1000
        while estimate < self.options.max_batch_tokens:
            remaining = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is _STOP:
                return jobs, True
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
            self.metrics.tokenize_seconds.observe(time.perf_counter() - started)
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
        self.metrics.input_tokens.inc(float(job.token_counts.sum()))
        self.metrics.truncated.inc(len(job.truncated))
        if not encodings:
            self._settle(job)
        return [(job, index, encoding) for index, encoding in enumerate(encodings)]

    def _batches(self, rows: list[_Row]) -> Iterator[list[_Row]]:
        """Cut length-sorted rows into batches under the token and row caps."""
        batch: list[_Row] = []
        for row in rows:
            width = self.embedder.padded_width(len(row[2].ids))  # rows are sorted: this is the longest
            too_many = (len(batch) + 1) * width > self.options.max_batch_tokens
            if batch and (too_many or len(batch) >= self.options.max_batch_size):
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
        self.metrics.inference_seconds.observe(time.perf_counter() - started)
        self.metrics.batch_size.observe(len(live))
        width = self.embedder.padded_width(len(live[-1][2].ids))
        self.metrics.batch_tokens.observe(len(live) * width)
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
            self.metrics.queue_depth.set(self._depth)
