"""The embedding server: a Starlette app over one :class:`Batcher` (the [serve] extra).

Routes: ``POST /v1/embeddings`` (OpenAI-compatible), ``POST /embed`` (text-embeddings-
inference-style), ``POST /similarity``, ``POST /tokenize`` (text-embeddings-inference-style),
``GET /health``, ``GET /info``, ``GET /metrics`` and ``GET /openapi.json``. With API keys
configured, every route but ``/health`` requires one (:mod:`embedrt.serve.auth`). The
model loads in a background thread after the socket opens; :class:`Readiness` says where
it is, and ``/health`` answers 503 until it is ready. Inference runs in the batcher's thread;
the event loop only parses, validates and serialises.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
from embedrt.runtime.dimensions import check_truncate_dim, truncate_dims
from embedrt.runtime.embedder import Embedder, Embeddings
from embedrt.runtime.errors import EmbedrtError
from embedrt.runtime.home import default_model_dir
from embedrt.runtime.manifest import Manifest
from embedrt.runtime.pooling import FloatArray, cosine_similarity, l2_normalize
from embedrt.runtime.prompts import apply_prompt, resolve_prompt
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from tokenizers import Encoding

from .auth import ApiKeyMiddleware
from .batcher import Batcher, BatcherClosedError, QueueFullError
from .config import ServerConfig
from .metrics import ServerMetrics
from .rerank import RerankerHost, rerank_routes
from .schema import (
    RequestError,
    check_text,
    field_spelling,
    json_field,
    openapi_document,
    optional,
    parse_json,
    texts_field,
)

logger = logging.getLogger(__name__)

Handler = Callable[["ServerState", Request], Awaitable[Response]]
RETRY_AFTER_SECONDS = 1


class Readiness(enum.Enum):
    """Where the server's model is; the value is what ``GET /health`` reports as ``status``."""

    LOADING = "loading"
    READY = "ok"
    FAILED = "failed"


class ServerState:
    """The app's model, batcher, metrics and readiness; the model loads in :meth:`load`.

    Attributes:
        readiness: :attr:`Readiness.LOADING` until :meth:`load` ends, then ``READY`` (the
            batcher runs) or ``FAILED`` (``load_error`` says why). Set by the loading thread
            only, after the batcher it announces exists.
    """

    def __init__(
        self, config: ServerConfig, model_dir: Path | None, manifest: Manifest | None,
        reranker: RerankerHost | None = None, reranker_manifest: Manifest | None = None,
    ) -> None:
        self.config = config
        self.model_dir = model_dir  # None: a reranker-only server (no embedding model)
        self._manifest = manifest
        self.reranker = reranker
        self.reranker_manifest = reranker_manifest
        self.metrics = ServerMetrics()
        reranker_name = None if reranker_manifest is None else reranker_manifest.model_name
        self.openapi = (
            openapi_document(None, 0, config, reranker_name=reranker_name) if manifest is None else
            openapi_document(manifest.model_name, manifest.dim, config, tuple(manifest.prompts),
                             reranker_name=reranker_name)
        )
        self.load_error: str | None = None
        self.readiness = Readiness.LOADING
        self.on_load_failure: Callable[[], None] = lambda: None
        self._batcher: Batcher | None = None

    @property
    def manifest(self) -> Manifest:
        """The embedding model's manifest.

        Raises:
            RequestError: 404, this server runs no embedding model (reranker only).
        """
        if self._manifest is None:
            raise _no_embedder()
        return self._manifest

    def load(self) -> None:
        """Load the model(s), start the batcher; on failure record why and call back.

        The reranker, if any, loads first; a reranker-only server fails when it does.
        """
        if self.reranker is not None:
            self.reranker.load()
            if self.model_dir is None and self.reranker.load_error is not None:
                self._failed(self.reranker.load_error)
                return
        if self.model_dir is None:
            self.readiness = Readiness.READY
            return
        started = time.perf_counter()
        try:
            embedder = Embedder.load(
                self.model_dir, threads=self.config.threads,
                pad_to_multiple_of=self.config.pad_to_multiple_of,
                spin=False,  # the event loop and tokenisation share these CPUs
            )
        except Exception as err:  # ArtefactError, or onnxruntime refusing the graph
            self._failed(f"{type(err).__name__}: {err}")
            return
        batcher = Batcher(embedder, self.config, self.metrics)
        batcher.start()
        self._batcher = batcher
        self.readiness = Readiness.READY
        logger.info("model %s (%s) loaded in %.2f s on %s with %d threads; ready",
                    self.manifest.model_name, self.manifest.variant,
                    time.perf_counter() - started, embedder.engine, embedder.threads)

    def _failed(self, error: str) -> None:
        self.load_error = error
        self.readiness = Readiness.FAILED
        logger.error("cannot load the model: %s", error)
        self.on_load_failure()

    def batcher(self) -> Batcher:
        """The running batcher.

        Raises:
            RequestError: 404 without an embedding model; 503 while the model is loading or
                after it failed to load.
        """
        if self._manifest is None:
            raise _no_embedder()
        if self.readiness is Readiness.FAILED:
            raise RequestError(503, "the model failed to load; GET /health says why")
        if self._batcher is None:
            raise RequestError(503, "the model is not loaded yet; retry shortly (GET /health says when)")
        return self._batcher

    def drain(self) -> None:
        """Shutdown has begun: queued requests run now instead of waiting for company."""
        if self._batcher is not None:
            self._batcher.drain()

    def close(self) -> None:
        """Stop the batcher after the work it holds (called once requests have drained)."""
        if self._batcher is not None:
            self._batcher.close(self.config.graceful_timeout)
        if self.reranker is not None:
            self.reranker.close()


def _no_embedder() -> RequestError:
    return RequestError(404, "this server runs no embedding model, only a reranker (/rerank, "
                        "/v1/rerank); start embedrt serve with --model DIR to serve embeddings too")


def create_app(config: ServerConfig) -> tuple[Starlette, ServerState]:
    """Build the app; the model itself loads when the app starts serving.

    With ``config.reranker_dir`` and no ``config.model_dir`` the server runs the reranker
    only: the embedding routes answer 404 naming ``--model``.

    Raises:
        NoModelError: neither ``config.model_dir`` nor ``config.reranker_dir`` is set and no
            default model is exported.
        ArtefactNotFoundError, ArtefactError: an artefact's manifest is missing or invalid.
    """
    rerank = None if config.reranker_dir is None else RerankerHost(config, config.reranker_dir)
    model_dir = config.model_dir or (default_model_dir() if rerank is None else None)
    state = ServerState(
        config, model_dir, None if model_dir is None else Manifest.load(model_dir), rerank,
        None if config.reranker_dir is None else Manifest.load(config.reranker_dir),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        loader = threading.Thread(target=state.load, name="embedrt-load", daemon=True)
        loader.start()
        try:
            yield
        finally:
            await asyncio.to_thread(loader.join)
            await asyncio.to_thread(state.close)

    def embedding(handler: Handler) -> Handler:  # reranker only: 404 before reading the body
        return handler if model_dir is not None else _no_embedding_route

    routes = [
        Route("/v1/embeddings", _endpoint(state, "/v1/embeddings", embedding(_openai_embeddings)),
              methods=["POST"]),
        Route("/embed", _endpoint(state, "/embed", embedding(_tei_embed)), methods=["POST"]),
        Route("/similarity", _endpoint(state, "/similarity", embedding(_similarity)), methods=["POST"]),
        Route("/tokenize", _endpoint(state, "/tokenize", embedding(_tokenize)), methods=["POST"]),
        Route("/health", _endpoint(state, "/health", _health), methods=["GET"]),
        Route("/info", _endpoint(state, "/info", _info), methods=["GET"]),
        Route("/metrics", _endpoint(state, "/metrics", _metrics), methods=["GET"]),
        Route("/openapi.json", _endpoint(state, "/openapi.json", _openapi), methods=["GET"]),
    ]
    if rerank is not None:  # /rerank and /v1/rerank: serve/rerank.py
        routes += rerank_routes(rerank, lambda request: _read_json(state, request),
                                lambda name, handler: _endpoint(state, name, handler))
    middleware = [] if config.api_keys is None else [
        Middleware(ApiKeyMiddleware, keys=config.api_keys, on_reject=state.metrics.auth_rejected)]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: _http_error},
                    middleware=middleware)
    return app, state


def _endpoint(state: ServerState, name: str, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Wrap a handler: map errors to JSON 4xx/5xx, count and time every request."""

    async def endpoint(request: Request) -> Response:
        started = time.perf_counter()
        try:
            response = await handler(state, request)
        except RequestError as err:
            response = _error(err)
        except QueueFullError as err:
            response = _error(RequestError(503, str(err), limit=err.limit))
        except BatcherClosedError as err:
            response = _error(RequestError(503, str(err)))
        except EmbedrtError as err:  # the library refusing a setting of the request
            response = _error(_request_error(err)) if err.param is not None else _server_error(name)
        except Exception:  # a bug: answer 500, log the traceback, keep serving
            response = _server_error(name)
        state.metrics.requests.inc(labels=(name, str(response.status_code)))
        state.metrics.latency.observe(time.perf_counter() - started, (name,))
        return response

    return endpoint


def _request_error(err: EmbedrtError) -> RequestError:
    """The one mapping of a library error about a setting to HTTP: a 422.

    The message is the library's, with each setting spelled as the request's JSON field
    (``"dimensions"`` for ``truncate_dim``); ``param`` names the main one and ``limit`` is
    the bound the value broke, when the error has one.
    """
    field = json_field(err.param) if err.param is not None else None
    return RequestError(422, err.render(field_spelling), field, err.limit)


def _server_error(name: str) -> JSONResponse:
    """A 500 for a bug (called inside the ``except`` block: the log gets the traceback)."""
    logger.exception("unhandled error on %s", name)
    return _error(RequestError(500, "internal error; the server log has the details"))


def _error(err: RequestError) -> JSONResponse:
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if err.status == 503 else None
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
    return _error(RequestError(status, f"{request.method} {request.url.path}: {detail}"))


async def _no_embedding_route(state: ServerState, request: Request) -> Response:
    raise _no_embedder()


async def _read_json(state: ServerState, request: Request) -> dict[str, Any]:
    """The body as a JSON object, read in chunks so an oversized body is refused early.

    Raises:
        RequestError: 413 over max_body_bytes; 400/422 as :func:`parse_json`.
    """
    limit = state.config.max_body_bytes
    too_big = RequestError(
        413, f"the request body is larger than {limit} bytes (--max-body-bytes, "
        "EMBEDRT_MAX_BODY_BYTES)", limit=limit,
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return parse_json(b"".join(chunks))


class _VectorResponse(Response):
    """JSON whose float vectors are float64 numpy rows, serialised by orjson.

    The numbers are the same doubles ``json.dumps(row.tolist())`` wrote (shortest repr of
    each float64), at about a seventeenth of the cost: for a 384-float row 10 us instead
    of 180 us, which was a third of the event loop's time under single-sentence load.

    Raises:
        ValueError: a vector holds NaN or infinity (not JSON), as ``json.dumps`` did.
    """

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def _json_vectors(vectors: FloatArray) -> npt.NDArray[np.float64]:
    """``vectors`` as float64 (what ``tolist`` gave), refusing what JSON cannot hold."""
    if not np.isfinite(vectors).all():
        raise ValueError("Out of range float values are not JSON compliant")
    return vectors.astype(np.float64)


async def _openai_embeddings(state: ServerState, request: Request) -> Response:
    payload = await _read_json(state, request)
    texts, _ = texts_field(payload, "input", state.config)
    optional(payload, "model", str, None)
    optional(payload, "user", str, None)
    encoding = optional(payload, "encoding_format", str, "float")
    if encoding not in ("float", "base64"):
        raise RequestError(422, f"'encoding_format' must be 'float' or 'base64', got {encoding!r}",
                           "encoding_format")
    dimensions = _dimensions(state, payload)
    texts = _prompted(state, payload, texts)
    result = await state.batcher().embed(texts, True)
    vectors = truncate_dims(result.vectors, dimensions, state.manifest.normalize)
    rows: Any = (
        [base64.b64encode(row.astype("<f4").tobytes()).decode("ascii") for row in vectors]
        if encoding == "base64" else _json_vectors(vectors)
    )
    data = [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)]
    tokens = int(result.token_counts.sum())
    body = {"object": "list", "data": data, "model": state.manifest.model_name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
    return _VectorResponse(body, headers=_report_headers(result))


def _prompted(state: ServerState, payload: dict[str, Any], texts: list[str]) -> list[str]:
    """``texts`` with the prompt the request names (``prompt_name``) or the model's default.

    As sentence-transformers and text-embeddings-inference: with no ``prompt_name`` the
    model's default prompt (if any) applies; token counts and truncation include it.

    Raises:
        ConfigurationError: ``prompt_name`` is not one of the model's prompts (a 422).
    """
    name = optional(payload, "prompt_name", str, None)
    manifest = state.manifest
    prompt = resolve_prompt(manifest.prompts, manifest.default_prompt_name, name)
    return list(apply_prompt(texts, prompt))


def _dimensions(state: ServerState, payload: dict[str, Any]) -> int | None:
    """The request's ``dimensions`` (the runtime's ``truncate_dim``), or None for all of them.

    The runtime checks the value as it came (JSON ``true`` or ``"8"`` included).

    Raises:
        ConfigurationError: it is not an integer from 1 to the model's dimension (a 422).
    """
    dimensions: int | None = payload.get("dimensions")
    check_truncate_dim(dimensions, state.manifest.dim)
    return dimensions


async def _tei_embed(state: ServerState, request: Request) -> Response:
    payload = await _read_json(state, request)
    texts, _ = texts_field(payload, "inputs", state.config)
    normalize = optional(payload, "normalize", bool, True)
    truncate = optional(payload, "truncate", bool, True)
    dimensions = _dimensions(state, payload)
    texts = _prompted(state, payload, texts)
    result = await state.batcher().embed(texts, truncate)
    vectors = truncate_dims(result.vectors, dimensions, state.manifest.normalize)
    if normalize and not state.manifest.normalize:
        vectors = l2_normalize(vectors)
    return _VectorResponse(_json_vectors(vectors), headers=_report_headers(result))


async def _similarity(state: ServerState, request: Request) -> Response:
    payload = await _read_json(state, request)
    inputs = optional(payload, "inputs", dict, None)
    if inputs is None:
        raise RequestError(422, "'inputs' is required: {\"source_sentence\": str, \"sentences\": [str]}",
                           "inputs")
    limits = state.config
    if inputs.get("source_sentence") is None:
        raise RequestError(422, "'inputs.source_sentence' is required: a string", "inputs.source_sentence")
    source = check_text(inputs["source_sentence"], "inputs.source_sentence", limits)
    if not isinstance(inputs.get("sentences"), list):
        raise RequestError(422, f"'inputs.sentences' must be a list of strings, got "
                           f"{type(inputs.get('sentences')).__name__}", "inputs.sentences")
    sentences, _ = texts_field(inputs, "sentences", limits, label="inputs.sentences")
    truncate = optional(payload, "truncate", bool, True)
    result = await state.batcher().embed([source, *sentences], truncate)
    try:
        scores = cosine_similarity(result.vectors[0], result.vectors[1:])
    except ValueError as err:  # an all-zero vector: its cosine is undefined
        raise RequestError(422, f"cannot compute a cosine: {err}", "inputs") from err
    return JSONResponse([float(s) for s in scores], headers=_report_headers(result))


async def _tokenize(state: ServerState, request: Request) -> Response:
    """text-embeddings-inference's ``/tokenize``: each input's tokens as the model is fed them.

    Truncation (at ``max_seq_length``, or 422 with ``"truncate": false``) and the prompt are
    the embedding routes', so the ids are the ones ``/embed`` embeds, and ``x-embedrt-tokens``
    counts the tokens listed (``usage.prompt_tokens`` of ``/v1/embeddings`` by default).
    ``"add_special_tokens": false`` leaves the special tokens out of the lists.
    """
    payload = await _read_json(state, request)
    texts, _ = texts_field(payload, "inputs", state.config)
    add_special = optional(payload, "add_special_tokens", bool, True)
    truncate = optional(payload, "truncate", bool, True)
    texts = _prompted(state, payload, texts)
    encodings = await asyncio.to_thread(state.batcher().embedder.tokenize, texts, truncate)
    tokens = [_token_list(text, encoding, add_special)
              for text, encoding in zip(texts, encodings, strict=True)]
    truncated = tuple(i for i, encoding in enumerate(encodings) if encoding.overflowing)
    return JSONResponse(tokens, headers=_count_headers(sum(map(len, tokens)), truncated))


def _token_list(text: str, encoding: Encoding, add_special: bool) -> list[dict[str, Any]]:
    """One input's tokens, as text-embeddings-inference lists them.

    A special token has its token text and null offsets; another has the characters
    ``text[start:stop]`` it covers (offsets in code points, not bytes).
    """
    tokens: list[dict[str, Any]] = []
    for token_id, token, special, (start, stop) in zip(
        encoding.ids, encoding.tokens, encoding.special_tokens_mask, encoding.offsets, strict=True
    ):
        if not special:
            tokens.append({"id": token_id, "text": text[start:stop], "special": False,
                           "start": start, "stop": stop})
        elif add_special:
            tokens.append({"id": token_id, "text": token, "special": True, "start": None, "stop": None})
    return tokens


def _report_headers(result: Embeddings) -> dict[str, str]:
    """Tokens and truncation, reported on every embedding response."""
    return _count_headers(int(result.token_counts.sum()), result.truncated)


def _count_headers(tokens: int, truncated: tuple[int, ...]) -> dict[str, str]:
    headers = {"x-embedrt-tokens": str(tokens), "x-embedrt-truncated": str(len(truncated))}
    if truncated:
        headers["x-embedrt-truncated-indices"] = ",".join(map(str, truncated))
    return headers


async def _health(state: ServerState, request: Request) -> Response:
    readiness = state.readiness
    if readiness is Readiness.READY:
        return JSONResponse({"status": readiness.value, **_loaded(state)})
    if readiness is Readiness.FAILED:
        return JSONResponse({"status": readiness.value, "error": state.load_error}, status_code=503)
    return JSONResponse({"status": readiness.value}, status_code=503,
                        headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


_LIMITS = ("max_inputs", "max_chars", "max_body_bytes")
_BATCHING = ("max_batch_tokens", "max_batch_size", "max_wait_ms", "max_queue")


def _loaded(state: ServerState) -> dict[str, Any]:
    """With a reranker, the names of what this server runs (None: no embedding model)."""
    if state.reranker_manifest is None:
        return {}
    embedding = None if state.model_dir is None else state.manifest.model_name
    return {"embedding_model": embedding, "reranker": state.reranker_manifest.model_name}


async def _info(state: ServerState, request: Request) -> Response:
    config = state.config
    manifest = None if state.model_dir is None else state.manifest
    reranker = state.reranker_manifest
    return JSONResponse({
        "manifest": None if manifest is None else manifest.to_dict(),
        "reranker": None if reranker is None else reranker.to_dict(),
        "limits": {**{name: getattr(config, name) for name in _LIMITS},
                   "max_seq_length": (manifest or reranker or state.manifest).max_seq_length},
        "batching": {name: getattr(config, name) for name in _BATCHING},
        "pad_to_multiple_of": config.pad_to_multiple_of,
        "ready": state.readiness is Readiness.READY,
    })


async def _metrics(state: ServerState, request: Request) -> Response:
    return PlainTextResponse(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


async def _openapi(state: ServerState, request: Request) -> Response:
    return JSONResponse(state.openapi)


def serve(config: ServerConfig) -> None:
    """Run the server until SIGINT/SIGTERM; in-flight requests finish before it exits.

    Raises:
        NoModelError: no model is configured and no default model is exported.
        ArtefactError: the artefact is invalid (before the socket opens).
        ModelLoadError: the model failed to load after the socket opened (the server stops).
    """
    import uvicorn

    app, state = create_app(config)

    class _Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:  # frame: a FrameType or None
            state.drain()  # answer what is queued now, not after max_wait_ms
            super().handle_exit(sig, frame)

    server = _Server(uvicorn.Config(
        app, host=config.host, port=config.port, log_level=config.log_level, access_log=False,
        timeout_graceful_shutdown=int(config.graceful_timeout), server_header=False,
    ))

    def stop() -> None:
        server.should_exit = True

    state.on_load_failure = stop
    logger.info("serving %s on http://%s:%d", " and ".join(
        str(d) for d in (state.model_dir, config.reranker_dir) if d is not None), config.host, config.port)
    if config.api_keys is not None:
        logger.info("authentication on: %d API key(s); every route but /health requires "
                    "'Authorization: Bearer <key>'", len(config.api_keys))
    elif config.host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("no API key configured: anyone who reaches %s:%d can use this server "
                       "(--api-key-file or EMBEDRT_API_KEYS)", config.host, config.port)
    server.run()
    if state.readiness is Readiness.FAILED:
        raise ModelLoadError(f"{state.model_dir or config.reranker_dir}: {state.load_error}")


class ModelLoadError(EmbedrtError, RuntimeError):
    """The server's model failed to load after the socket opened."""
