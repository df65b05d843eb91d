"""Prometheus metrics for the embedding server, in the text exposition format (0.0.4).

Written here rather than with prometheus_client: the server needs three metric kinds and
one registry per app, and prometheus_client's default global registry (a side effect at
import) is what a second app in the same process, as in tests, would collide with.
Every metric is safe to update from the event loop and the inference thread at once.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Sequence

LabelValues = tuple[str, ...]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STEP_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
BATCH_TOKEN_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: LabelValues, extra: str = "") -> str:
    pairs = [f'{name}="{_escape(value)}"' for name, value in zip(names, values, strict=True)]
    if extra:
        pairs.append(extra)
    return "{" + ",".join(pairs) + "}" if pairs else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        self.name = name
        self.help_text = help_text
        self.label_names = tuple(labels)
        self._lock = threading.Lock()

    def _check(self, values: LabelValues) -> None:
        if len(values) != len(self.label_names):
            raise ValueError(f"{self.name} takes labels {self.label_names}, got {values}")

    def header(self) -> list[str]:
        """The HELP and TYPE lines."""
        return [f"# HELP {self.name} {self.help_text}", f"# TYPE {self.name} {self.kind}"]

    def samples(self) -> list[str]:
        """The sample lines (implemented by each kind)."""
        raise NotImplementedError


class Counter(_Metric):
    """A monotonically increasing count, one series per label tuple."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, labels)
        self._values: dict[LabelValues, float] = {} if labels else {(): 0.0}

    def inc(self, amount: float = 1.0, labels: LabelValues = ()) -> None:
        """Add ``amount`` (>= 0). Raises ValueError on a wrong label count."""
        self._check(labels)
        with self._lock:
            self._values[labels] = self._values.get(labels, 0.0) + amount

    def samples(self) -> list[str]:
        """The sample lines."""
        with self._lock:
            items = sorted(self._values.items())
        return [f"{self.name}{_labels(self.label_names, k)} {_number(v)}" for k, v in items]


class Gauge(Counter):
    """A value that goes up and down."""

    kind = "gauge"

    def set(self, value: float, labels: LabelValues = ()) -> None:
        """Set the value. Raises ValueError on a wrong label count."""
        self._check(labels)
        with self._lock:
            self._values[labels] = value


class Histogram(_Metric):
    """Counts of observations in cumulative buckets, with their sum and count."""

    kind = "histogram"

    def __init__(
        self, name: str, help_text: str, buckets: Iterable[float], labels: Sequence[str] = ()
    ) -> None:
        super().__init__(name, help_text, labels)
        self.buckets = tuple(sorted(buckets)) + (math.inf,)
        self._series: dict[LabelValues, tuple[list[int], list[float]]] = {}
        if not labels:
            self._series[()] = ([0] * len(self.buckets), [0.0])

    def observe(self, value: float, labels: LabelValues = ()) -> None:
        """Record one observation. Raises ValueError on a wrong label count."""
        self._check(labels)
        with self._lock:
            counts, total = self._series.setdefault(labels, ([0] * len(self.buckets), [0.0]))
            for index, bound in enumerate(self.buckets):
                if value <= bound:
                    counts[index] += 1
                    break
            total[0] += value

    def samples(self) -> list[str]:
        """Cumulative bucket lines, then _sum and _count, per series."""
        lines: list[str] = []
        with self._lock:
            series = sorted((k, (list(c), t[0])) for k, (c, t) in self._series.items())
        for labels, (counts, total) in series:
            running = 0
            for bound, count in zip(self.buckets, counts, strict=True):
                running += count
                le = f'le="{_number(bound)}"'
                lines.append(f"{self.name}_bucket{_labels(self.label_names, labels, le)} {running}")
            lines.append(f"{self.name}_sum{_labels(self.label_names, labels)} {_number(total)}")
            lines.append(f"{self.name}_count{_labels(self.label_names, labels)} {running}")
        return lines


class ServerMetrics:
    """Every metric the server exposes at ``GET /metrics``."""

    def __init__(self) -> None:
        self.requests = Counter(
            "embedrt_requests_total", "HTTP requests by route and status code.", ("route", "status")
        )
        self.latency = Histogram(
            "embedrt_request_duration_seconds", "Time from request start to response, by route.",
            LATENCY_BUCKETS, ("route",),
        )
        self.queue_depth_gauge = Gauge(
            "embedrt_queue_depth", "Inputs accepted and not yet embedded (queued or in a batch)."
        )
        self.rejected_total = Counter(
            "embedrt_queue_rejected_total", "Requests answered 503 because the queue was full."
        )
        self.auth_rejected_total = Counter(
            "embedrt_auth_rejected_total",
            "Requests answered 401: API key missing, malformed, invalid or in the URL (reason).",
            ("reason",),
        )
        self.batch_size = Histogram(
            "embedrt_batch_size", "Inputs per inference call.", BATCH_SIZE_BUCKETS
        )
        self.batch_tokens = Histogram(
            "embedrt_batch_tokens", "Padded tokens (rows x width) per inference call.",
            BATCH_TOKEN_BUCKETS,
        )
        self.input_tokens = Counter("embedrt_input_tokens_total", "Tokens embedded (unpadded).")
        self.truncated = Counter("embedrt_truncated_inputs_total", "Inputs cut at max_seq_length.")
        self.tokenize_seconds = Histogram(
            "embedrt_tokenize_duration_seconds", "Tokenisation time per coalesced group of requests.",
            STEP_BUCKETS,
        )
        self.inference_seconds = Histogram(
            "embedrt_inference_duration_seconds",
            "Inference (onnxruntime or OpenVINO) + pooling time per batch.", STEP_BUCKETS,
        )

    # The batcher's observer (embedrt.serve.batcher.BatchObserver), by structure:
    # the batcher knows nothing of these metrics.

    def queue_depth(self, depth: int) -> None:
        """Inputs accepted and not yet embedded."""
        self.queue_depth_gauge.set(depth)

    def rejected(self) -> None:
        """A request was refused because the queue was full."""
        self.rejected_total.inc()

    def auth_rejected(self, reason: str) -> None:
        """A request was refused for its API key (the authentication middleware's callback)."""
        self.auth_rejected_total.inc(labels=(reason,))

    def tokenized(self, seconds: float, tokens: int, truncated: int) -> None:
        """A coalesced group of requests was tokenised."""
        self.tokenize_seconds.observe(seconds)
        self.input_tokens.inc(float(tokens))
        self.truncated.inc(truncated)

    def inferred(self, seconds: float, rows: int, padded_tokens: int) -> None:
        """One inference call ran."""
        self.inference_seconds.observe(seconds)
        self.batch_size.observe(rows)
        self.batch_tokens.observe(padded_tokens)

    def render(self) -> str:
        """The whole exposition, ending with a newline."""
        lines: list[str] = []
        for metric in self._all():
            lines.extend(metric.header())
            lines.extend(metric.samples())
        return "\n".join(lines) + "\n"

    def _all(self) -> list[_Metric]:
        return [value for value in vars(self).values() if isinstance(value, _Metric)]
