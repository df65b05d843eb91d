"""Reranking routes: ``embedrt serve --reranker DIR``, beside the embedder or (no --model) alone.

* ``POST /rerank`` (text-embeddings-inference's shape): ``{"query", "texts", "raw_scores"?,
  "return_text"?, "truncate"?}`` -> ``[{"index", "score", "text"?}]``, best first.
* ``POST /v1/rerank`` (Cohere's and Jina's shape, which OpenAI-style clients use):
  ``{"model"?, "query", "documents", "top_n"?, "return_documents"?}`` -> ``{"model",
  "results": [{"index", "relevance_score", "document"?: {"text"}}], "usage": {"total_tokens"}}``.
  A document may be a string or ``{"text": str}``.

Order is ``CrossEncoder.rank``'s (ties in input order). The limits are the embedding routes'
(``max_inputs`` documents, ``max_chars`` characters each, ``max_body_bytes``), with the same
422 errors. Inference runs on one thread of its own: a request's pairs are scored in
length-sorted batches of up to ``max_batch_size``; concurrent requests queue for that thread
(up to ``max_queue`` pairs waiting, then 503) and are not merged into shared batches.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from embedrt.runtime.reranker import Reranker, ranked
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .config import ServerConfig
from .schema import RequestError, check_text, optional, texts_field

logger = logging.getLogger(__name__)

ReadJson = Callable[[Request], Awaitable[dict[str, Any]]]
Handler = Callable[[Any, Request], Awaitable[Response]]  # (the app's state, unused here; the request)
Wrap = Callable[[str, Handler], Callable[[Request], Awaitable[Response]]]


class RerankerHost:
    """The server's reranker: loaded in the background, run on one inference thread.

    ``pending`` counts pairs accepted and not yet scored (``max_queue`` bounds it).
    """

    def __init__(self, config: ServerConfig, directory: Path) -> None:
        self.config = config
        self.directory = directory
        self.reranker: Reranker | None = None
        self.load_error: str | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedrt-rerank")
        self._lock = threading.Lock()
        self.pending = 0

    def load(self) -> None:
        """Load the reranker (in the server's loading thread); on failure record why."""
        started = time.perf_counter()
        try:
            self.reranker = Reranker.load(
                self.directory, threads=self.config.threads, batch_size=self.config.max_batch_size, spin=False
            )
        except Exception as err:  # ArtefactError, or onnxruntime refusing the graph
            self.load_error = f"{type(err).__name__}: {err}"
            logger.error("cannot load the reranker %s: %s", self.directory, self.load_error)
            return
        if self.reranker.spec.num_labels != 1:
            self.load_error = (
                f"{self.directory} has {self.reranker.spec.num_labels} labels; the rerank routes need a "
                "one-label (relevance) model"
            )
            logger.error("%s", self.load_error)
            self.reranker = None
            return
        logger.info("reranker %s loaded in %.2f s", self.directory, time.perf_counter() - started)

    def close(self) -> None:
        """Finish the queued work and stop the inference thread."""
        self._executor.shutdown(wait=True)

    def ready(self) -> Reranker:
        """The loaded reranker.

        Raises:
            RequestError: 503 while it loads or when it failed to.
        """
        if self.load_error is not None:
            raise RequestError(503, f"the reranker failed to load: {self.load_error}")
        if self.reranker is None:
            raise RequestError(503, "the reranker is not loaded yet; retry shortly")
        return self.reranker

    async def rank(
        self, query: str, documents: list[str], *, truncate: bool, raw: bool
    ) -> tuple[list[tuple[int, float]], int]:
        """Indices and scores best first, and the tokens fed to the model.

        Raises:
            RequestError: 503 when ``max_queue`` pairs already wait.
            InputTooLongError: ``truncate`` is False and a pair is over the model's limit.
        """
        reranker = self.ready()
        with self._lock:
            if self.pending + len(documents) > self.config.max_queue:
                raise RequestError(
                    503,
                    f"the reranker's queue is full ({self.pending} pairs waiting, --max-queue "
                    f"{self.config.max_queue}); retry shortly",
                    limit=self.config.max_queue,
                )
            self.pending += len(documents)
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                self._executor, _score, reranker, query, documents, truncate, raw
            )
        finally:
            with self._lock:
                self.pending -= len(documents)


def _score(
    reranker: Reranker, query: str, documents: list[str], truncate: bool, raw: bool
) -> tuple[list[tuple[int, float]], int]:
    encodings = reranker.tokenize([(query, d) for d in documents], truncate)
    scores = reranker.score_encodings(encodings, activation=not raw)
    return [(r.index, r.score) for r in ranked(scores)], sum(len(e.ids) for e in encodings)


def rerank_routes(host: RerankerHost, read_json: ReadJson, wrap: Wrap) -> list[Route]:
    """``/rerank`` and ``/v1/rerank``, each wrapped by ``wrap(name, handler)`` (errors, metrics)."""

    async def tei(_: Any, request: Request) -> Response:
        payload = await read_json(request)
        query = _query(payload, host.config)
        texts, _ = texts_field(payload, "texts", host.config)
        raw = optional(payload, "raw_scores", bool, False)
        return_text = optional(payload, "return_text", bool, False)
        truncate = optional(payload, "truncate", bool, True)
        ranked, tokens = await host.rank(query, texts, truncate=truncate, raw=raw)
        body = [{"index": i, "score": s, **({"text": texts[i]} if return_text else {})} for i, s in ranked]
        return JSONResponse(body, headers={"x-embedrt-tokens": str(tokens)})

    async def cohere(_: Any, request: Request) -> Response:
        payload = await read_json(request)
        optional(payload, "model", str, None)
        query = _query(payload, host.config)
        documents = _documents(payload, host.config)
        top_n = optional(payload, "top_n", int, None)
        if top_n is not None and (isinstance(top_n, bool) or top_n < 1):
            raise RequestError(422, f"'top_n' must be a positive integer, got {top_n!r}", "top_n")
        return_documents = optional(payload, "return_documents", bool, False)
        ranked, tokens = await host.rank(query, documents, truncate=True, raw=False)
        results = [
            {
                "index": i,
                "relevance_score": s,
                **({"document": {"text": documents[i]}} if return_documents else {}),
            }
            for i, s in ranked[:top_n]
        ]
        reranker = host.ready()
        return JSONResponse(
            {
                "model": reranker.manifest.model_name,
                "results": results,
                "usage": {"total_tokens": tokens},
                "meta": {"billed_units": {"search_units": 1}},
            }
        )

    return [
        Route("/rerank", wrap("/rerank", tei), methods=["POST"]),
        Route("/v1/rerank", wrap("/v1/rerank", cohere), methods=["POST"]),
    ]


def _query(payload: dict[str, Any], limits: ServerConfig) -> str:
    if "query" not in payload:
        raise RequestError(422, "'query' is required: a string", "query")
    return check_text(payload["query"], "query", limits)


def _documents(payload: dict[str, Any], limits: ServerConfig) -> list[str]:
    """``documents``: strings or ``{"text": str}`` objects (Cohere and Jina accept both)."""
    value = payload.get("documents")
    if isinstance(value, list):
        value = [d.get("text") if isinstance(d, dict) else d for d in value]
    texts, _ = texts_field({"documents": value} if "documents" in payload else {}, "documents", limits)
    return texts
