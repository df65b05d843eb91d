"""The server's configuration: one frozen dataclass, the single home of every default.

The ``serve`` command takes its option defaults from :data:`DEFAULTS`, the app and the
batcher read the values they are given. Light: imports nothing from the [serve] extra.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from embedrt.runtime.embedder import DEFAULT_MAX_BATCH_TOKENS
from embedrt.runtime.errors import ConfigurationError, Param

from .auth import ApiKeys

LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class ServerConfig:
    """Everything ``embedrt serve`` is configured with.

    Attributes:
        model_dir: artefact directory; None serves the default model (see
            :func:`embedrt.runtime.home.default_model_dir`), or no embedding model at all
            when ``reranker_dir`` is set (a reranker-only server).
        host: address to bind; ``0.0.0.0`` exposes the server to the network.
        port: TCP port.
        threads: inference threads (onnxruntime's; OpenVINO's for a bf16 artefact); None uses the
            CPUs this process may use.
        max_inputs: texts in one request.
        max_chars: characters in one text.
        max_body_bytes: bytes in one request body.
        max_batch_tokens: cap on rows x padded width of one inference call (a single input
            longer than this still runs, alone).
        max_batch_size: cap on rows of one inference call.
        max_wait_ms: how long the inference thread waits after a request for others to join.
            0 (the default): none; a batch is what queued while the previous one ran, which
            under open-loop load halved p50 and p99 at 5 % and 50 % of capacity against 2 ms
            (bench/results/serve/max-wait.md).
        max_queue: inputs accepted and not yet embedded; beyond it requests get 503.
        pad_to_multiple_of: round padded lengths up to this, bounding distinct shapes.
        graceful_timeout: seconds in-flight requests get to finish on shutdown.
        log_level: one of :data:`LOG_LEVELS`.
        api_keys: the keys every route but ``/health`` requires (``Authorization: Bearer``);
            None serves without authentication. Held as digests: a repr shows only their count.
        reranker_dir: a reranker artefact (cross-encoder) served on ``/rerank`` and
            ``/v1/rerank``, beside the model given as ``model_dir`` or, without one, instead of
            any embedding model (the embedding routes then answer 404); None: no rerank routes.

    Raises:
        ConfigurationError: a number is out of range, the queue cannot hold one maximal
            request, or the log level is unknown.
    """

    model_dir: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    threads: int | None = None
    max_inputs: int = 256
    max_chars: int = 10_000
    max_body_bytes: int = 2 * 1024 * 1024
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS
    max_batch_size: int = 128
    max_wait_ms: float = 0.0
    max_queue: int = 1024
    pad_to_multiple_of: int = 16
    graceful_timeout: float = 30.0
    log_level: str = "info"
    api_keys: ApiKeys | None = None
    reranker_dir: Path | None = None

    def __post_init__(self) -> None:
        positive = ("max_inputs", "max_chars", "max_body_bytes", "max_batch_tokens",
                    "max_batch_size", "max_queue", "pad_to_multiple_of")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                _refuse(name, f"must be a positive integer, got {value!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads <= 0):
            _refuse("threads", f"must be a positive integer, got {self.threads!r}")
        if not 0 <= self.port <= 65535:
            _refuse("port", f"must be between 0 and 65535, got {self.port}")
        if self.max_wait_ms < 0:
            _refuse("max_wait_ms", f"must be >= 0, got {self.max_wait_ms!r}")
        if self.graceful_timeout <= 0:
            _refuse("graceful_timeout", f"must be positive, got {self.graceful_timeout!r}")
        if self.log_level not in LOG_LEVELS:
            _refuse("log_level", f"{self.log_level!r} is not one of {', '.join(LOG_LEVELS)}")
        # /similarity embeds its sentences plus the source sentence in one submission
        if self.max_queue < self.max_inputs + 1:
            raise ConfigurationError(
                f"{{max_queue}} ({self.max_queue}) must be at least {{max_inputs}} + 1 "
                f"({self.max_inputs + 1}), or a maximal request could never be accepted",
                params=(Param("max_queue"), Param("max_inputs")),
            )


def _refuse(name: str, problem: str) -> None:
    """Raise :class:`ConfigurationError` naming setting ``name`` the caller's way."""
    raise ConfigurationError("{" + name + "} " + problem, params=(Param(name),))


DEFAULTS = ServerConfig()
