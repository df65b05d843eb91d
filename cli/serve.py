"""``embedrt serve``: the embedding server (needs the [serve] extra).

Every option's default comes from :data:`embedrt.serve.config.DEFAULTS`; the server
itself (Starlette, uvicorn) is imported only when the command runs.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from embedrt.runtime.errors import MissingExtraError
from embedrt.serve.auth import ENV_KEYS, load_api_keys
from embedrt.serve.config import DEFAULTS, LOG_LEVELS, ServerConfig

from ._common import MODEL_HELP


# Any: typer.Option's keyword arguments and return type are typer's own (it returns Any).
def _option(env: str, help_text: str, **kwargs: Any) -> Any:
    return typer.Option(envvar=f"EMBEDRT_{env}", help=help_text, **kwargs)


def command(
    model: Annotated[Path | None, typer.Option("--model", "-m", help=MODEL_HELP)] = DEFAULTS.model_dir,
    host: Annotated[str, _option("HOST", "Address to bind; 0.0.0.0 exposes it to the network.")]
    = DEFAULTS.host,
    port: Annotated[int, _option("PORT", "TCP port.", min=0, max=65535)] = DEFAULTS.port,
    threads: Annotated[int | None, _option(
        "THREADS", "Inference threads (onnxruntime's; OpenVINO's for a bf16 artefact). "
        "Default: the CPUs this process may use.", min=1)] = DEFAULTS.threads,
    max_inputs: Annotated[int, _option("MAX_INPUTS", "Texts per request.", min=1)] = DEFAULTS.max_inputs,
    max_chars: Annotated[int, _option("MAX_CHARS", "Characters per text.", min=1)] = DEFAULTS.max_chars,
    max_body_bytes: Annotated[int, _option("MAX_BODY_BYTES", "Bytes per request body.", min=1)]
    = DEFAULTS.max_body_bytes,
    max_batch_tokens: Annotated[int, _option(
        "MAX_BATCH_TOKENS", "Padded tokens (rows x width) per inference call.", min=1)]
    = DEFAULTS.max_batch_tokens,
    max_batch_size: Annotated[int, _option("MAX_BATCH_SIZE", "Rows per inference call.", min=1)]
    = DEFAULTS.max_batch_size,
    max_wait_ms: Annotated[float, _option(
        "MAX_WAIT_MS",
        "How long a request waits for others to batch with (0: none; requests that arrive while "
        "a batch runs form the next).", min=0)] = DEFAULTS.max_wait_ms,
    max_queue: Annotated[int, _option(
        "MAX_QUEUE", "Inputs queued or in flight; beyond it requests get 503.", min=2)] = DEFAULTS.max_queue,
    pad_to_multiple_of: Annotated[int, _option(
        "PAD_TO_MULTIPLE_OF", "Round padded lengths up to this, bounding distinct shapes.", min=1)]
    = DEFAULTS.pad_to_multiple_of,
    graceful_timeout: Annotated[float, _option(
        "GRACEFUL_TIMEOUT", "Seconds to let in-flight requests finish on shutdown.", min=1)]
    = DEFAULTS.graceful_timeout,
    log_level: Annotated[str, _option("LOG_LEVEL", f"{', '.join(LOG_LEVELS)}.")] = DEFAULTS.log_level,
    api_key_file: Annotated[Path | None, _option(
        "API_KEY_FILE", "File of API keys, one a line (blank and # lines skipped); every route but "
        f"/health then requires 'Authorization: Bearer <key>'. {ENV_KEYS} (keys separated by commas) "
        "adds keys; both sources are accepted together.")] = None,
    reranker: Annotated[Path | None, _option(
        "RERANKER", "A reranker artefact (a cross-encoder export) to serve on /rerank and "
        "/v1/rerank: beside the --model, or alone without --model (the embedding routes then "
        "answer 404).")] = None,
) -> None:
    """Serve embeddings over HTTP (OpenAI-compatible /v1/embeddings, /embed, /similarity, ...).

    Routes: /v1/embeddings, /embed, /similarity, /tokenize, /health, /info, /metrics and
    /openapi.json. Every option also reads an EMBEDRT_* variable.

    Example: embedrt serve --port 8080   (the default model: auto, else int8, else fp32, as exported)

    Reranking only: embedrt serve --reranker DIR   (no embedding model is loaded)
    """
    config = ServerConfig(
        model_dir=model, host=host, port=port, threads=threads, max_inputs=max_inputs,
        max_chars=max_chars, max_body_bytes=max_body_bytes, max_batch_tokens=max_batch_tokens,
        max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, max_queue=max_queue,
        pad_to_multiple_of=pad_to_multiple_of, graceful_timeout=graceful_timeout,
        log_level=log_level.lower(), api_keys=load_api_keys(api_key_file, os.environ),
        reranker_dir=reranker,
    )
    try:  # fail here, before the model loads, if the extra is missing
        import uvicorn  # noqa: F401
        from embedrt.serve.app import serve
    except ImportError as err:
        raise MissingExtraError("serve", "embedrt serve", err.name or "starlette") from err
    logging.getLogger("embedrt").setLevel(config.log_level.upper())
    serve(config)
