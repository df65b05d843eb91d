"""The ``embedrt serve`` command: the embedding server (needs the [serve] extra)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .errors import EmbedrtError, MissingExtraError

if TYPE_CHECKING:
    from .server import ServerConfig


def _option(env: str, help_text: str, **kwargs: Any) -> Any:
    return typer.Option(envvar=f"EMBEDRT_{env}", help=help_text, **kwargs)


def register(app: typer.Typer) -> None:
    """Add the ``serve`` command to ``app``."""
    app.command()(serve)


def serve(
    model: Annotated[Path | None, typer.Option(
        "--model", "-m", envvar="EMBEDRT_MODEL",
        help="Artefact directory. Default: models/all-MiniLM-L6-v2/int8 if exported, else .../fp32.")] = None,
    host: Annotated[str, _option("HOST", "Address to bind; 0.0.0.0 exposes it to the network.")]
    = "127.0.0.1",
    port: Annotated[int, _option("PORT", "TCP port.", min=0, max=65535)] = 8080,
    threads: Annotated[int | None, _option(
        "THREADS", "onnxruntime threads. Default: the CPUs this process may use.", min=1)] = None,
    max_inputs: Annotated[int, _option("MAX_INPUTS", "Texts per request.", min=1)] = 256,
    max_chars: Annotated[int, _option("MAX_CHARS", "Characters per text.", min=1)] = 10_000,
    max_body_bytes: Annotated[int, _option("MAX_BODY_BYTES", "Bytes per request body.", min=1)]
    = 2 * 1024 * 1024,
    max_batch_tokens: Annotated[int, _option(
        "MAX_BATCH_TOKENS", "Padded tokens (rows x width) per inference call.", min=1)]
    = 1024,  # embedder.DEFAULT_MAX_BATCH_TOKENS; not imported, so --help stays light
    max_batch_size: Annotated[int, _option("MAX_BATCH_SIZE", "Rows per inference call.", min=1)] = 128,
    max_wait_ms: Annotated[float, _option(
        "MAX_WAIT_MS", "How long a request waits for others to batch with.", min=0)] = 2.0,
    max_queue: Annotated[int, _option(
        "MAX_QUEUE", "Inputs queued or in flight; beyond it requests get 503.", min=2)] = 1024,
    pad_to_multiple_of: Annotated[int, _option(
        "PAD_TO_MULTIPLE_OF", "Round padded lengths up to this, bounding distinct shapes.", min=1)] = 16,
    graceful_timeout: Annotated[float, _option(
        "GRACEFUL_TIMEOUT", "Seconds to let in-flight requests finish on shutdown.", min=1)] = 30.0,
    log_level: Annotated[str, _option("LOG_LEVEL", "debug, info, warning or error.")] = "info",
) -> None:
    """Serve embeddings over HTTP: OpenAI-compatible /v1/embeddings, /embed, /similarity,
    /health, /info, /metrics and /openapi.json. Every option also reads an EMBEDRT_* variable.

    Example: embedrt serve --model models/all-MiniLM-L6-v2/fp32 --port 8080
    """
    from .cli import _fail, default_model_dir

    try:
        config, run_server = _configure(
            model or default_model_dir(), host, port, threads, pad_to_multiple_of, graceful_timeout,
            (max_inputs, max_chars, max_body_bytes),
            (max_batch_tokens, max_batch_size, max_wait_ms, max_queue),
        )
        logging.getLogger("embedrt").setLevel(log_level.upper())
        run_server(config, log_level=log_level.lower())
    except (EmbedrtError, ValueError) as err:  # MissingExtraError, ArtefactError, bad limits
        raise _fail(str(err)) from err


def _configure(
    model: Path, host: str, port: int, threads: int | None, pad_to_multiple_of: int,
    graceful_timeout: float, limits: tuple[int, int, int], batching: tuple[int, int, float, int],
) -> tuple[ServerConfig, Callable[..., None]]:
    """Import the [serve] extra and build the server's configuration.

    Raises:
        MissingExtraError: starlette or uvicorn is not installed.
        ValueError: the limits contradict each other.
    """
    try:
        import uvicorn  # noqa: F401  (fail here, before the model loads, if it is missing)

        from .batching import BatchingOptions
        from .server import ServerConfig, serve
        from .server_schema import Limits
    except ImportError as err:
        raise MissingExtraError("serve", "embedrt serve", err.name or "starlette") from err
    max_inputs, max_chars, max_body_bytes = limits
    max_batch_tokens, max_batch_size, max_wait_ms, max_queue = batching
    config = ServerConfig(
        model_dir=model, host=host, port=port, threads=threads,
        pad_to_multiple_of=pad_to_multiple_of, graceful_timeout=graceful_timeout,
        limits=Limits(max_inputs=max_inputs, max_chars=max_chars, max_body_bytes=max_body_bytes),
        batching=BatchingOptions(max_batch_tokens=max_batch_tokens, max_batch_size=max_batch_size,
                                 max_wait_ms=max_wait_ms, max_queue=max_queue),
    )
    return config, serve
