"""The embedding server, tested as users meet it: a real `embedrt serve` process on loopback.

Each server is started with `python -m embedrt.cli serve` on a free port, waited
for on /health, and stopped with SIGTERM by its fixture.
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("starlette", reason="the server needs the [serve] extra (starlette)")
pytest.importorskip("uvicorn", reason="the server needs the [serve] extra (uvicorn)")
httpx = pytest.importorskip("httpx", reason="the server tests need httpx (the [dev] extra)")

from embedrt.runtime import Embedder  # noqa: E402
from embedrt.runtime.pooling import l2_normalize, row_cosines  # noqa: E402

STARTUP_SECONDS = 60
SMALL_LIMITS = ["--max-inputs", "8", "--max-chars", "300", "--max-body-bytes", "4096", "--max-queue", "256"]


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM, then wait; returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"server did not stop on SIGTERM:\n{self.log()}") from None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _command(model: Path | None, port: int, *args: str) -> list[str]:
    """The serve command line; ``model`` None passes no --model (e.g. a reranker-only server)."""
    return [sys.executable, "-m", "embedrt.cli", "serve", *(["--model", str(model)] if model else []),
            "--port", str(port), "--log-level", "warning", *args]


@contextlib.contextmanager
def running_server(model: Path | None, log_dir: Path, *args: str) -> Iterator[Server]:
    port = _free_port()
    log_path = log_dir / f"server-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(_command(model, port, *args), stdout=log, stderr=subprocess.STDOUT)
    server = Server(process, f"http://127.0.0.1:{port}", log_path)
    try:
        _wait_ready(server)
        yield server
    finally:
        server.stop()


def _wait_ready(server: Server) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(f"server exited with {server.process.returncode}:\n{server.log()}")
        with contextlib.suppress(httpx.TransportError):
            response = httpx.get(f"{server.url}/health", timeout=2)
            if response.status_code == 200:
                return
            assert response.status_code == 503 and response.json()["status"] == "loading"
        time.sleep(0.05)
    raise AssertionError(f"server not ready after {STARTUP_SECONDS} s:\n{server.log()}")


@pytest.fixture(scope="module")
def server(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(tiny_bert, tmp_path_factory.mktemp("server"), *SMALL_LIMITS) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield http


@pytest.fixture(scope="module")
def offline(tiny_bert: Path) -> Embedder:
    return Embedder.load(tiny_bert)


@pytest.fixture(scope="module")
def words(tiny_model_words: list[str]) -> list[str]:
    return [w for w in tiny_model_words if w.isalpha()]


def _sentences(words: list[str], count: int, offset: int = 0) -> list[str]:
    """Sentences of varied length (1 to 30 words: some over the tiny model's 24 tokens)."""
    return [" ".join(words[(offset + i + j) % len(words)] for j in range(1 + (7 * i + offset) % 30))
            for i in range(count)]


# --- routes ---------------------------------------------------------------------------------


def test_health_info_and_openapi(client: httpx.Client, offline: Embedder) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/info").json()
    assert info["manifest"]["dim"] == offline.dim and info["ready"] is True
    assert info["limits"] == {"max_inputs": 8, "max_chars": 300, "max_body_bytes": 4096,
                              "max_seq_length": offline.max_seq_length}
    assert info["batching"]["max_queue"] == 256
    schema = client.get("/openapi.json").json()
    assert set(schema["paths"]) == {"/v1/embeddings", "/embed", "/similarity", "/tokenize", "/health",
                                    "/info", "/metrics"}
    inputs = schema["paths"]["/embed"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert inputs["properties"]["inputs"]["oneOf"][1]["maxItems"] == 8


def test_openai_route_matches_offline_runtime(
    client: httpx.Client, offline: Embedder, words: list[str]
) -> None:
    texts = _sentences(words, 7)
    response = client.post("/v1/embeddings", json={"input": texts, "model": "anything"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list" and body["model"] == offline.manifest.model_name
    assert [item["index"] for item in body["data"]] == list(range(7))
    expected = offline.encode(texts)
    vectors = np.array([item["embedding"] for item in body["data"]], np.float32)
    assert row_cosines(vectors, expected.vectors).min() >= 0.99999
    tokens = int(expected.token_counts.sum())
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    assert response.headers["x-embedrt-truncated"] == str(len(expected.truncated)) != "0"
    assert response.headers["x-embedrt-truncated-indices"] == ",".join(map(str, expected.truncated))


def test_openai_route_single_string_base64_and_dimensions(
    client: httpx.Client, offline: Embedder, words: list[str]
) -> None:
    text = " ".join(words[:5])
    body = client.post("/v1/embeddings", json={
        "input": text, "encoding_format": "base64", "dimensions": offline.dim}).json()
    assert len(body["data"]) == 1
    vector = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    assert vector.shape == (offline.dim,)
    assert row_cosines(vector[None], offline.embed([text]))[0] >= 0.99999


def test_embed_route_normalize_and_truncation(
    client: httpx.Client, offline: Embedder, words: list[str]
) -> None:
    texts = [" ".join(words[:3]), " ".join((words * 3)[:40])]
    response = client.post("/embed", json={"inputs": texts})
    assert response.status_code == 200
    vectors = np.array(response.json(), np.float32)
    assert vectors.shape == (2, offline.dim)
    assert row_cosines(vectors, offline.embed(texts)).min() >= 0.99999
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert response.headers["x-embedrt-truncated-indices"] == "1"
    # This model normalises in its own pipeline: "normalize": false gives the same unit vectors.
    single = client.post("/embed", json={"inputs": texts[0], "normalize": False, "truncate": False})
    np.testing.assert_allclose(np.array(single.json(), np.float32), offline.embed(texts[:1]), atol=1e-6)


def test_embed_route_normalize_on_a_model_that_does_not(tiny_distilbert: Path, tmp_path: Path,
                                                        words: list[str]) -> None:
    """The tiny DistilBERT (CLS pooling) does not normalise: ``normalize`` decides, and false
    gives exactly the offline Embedder's vectors, norms and all."""
    texts = _sentences(words, 5)
    offline = Embedder.load(tiny_distilbert)
    raw = offline.embed(texts)
    norms = np.linalg.norm(raw, axis=1)
    assert not offline.manifest.normalize and np.abs(norms - 1).min() > 1e-3  # not unit vectors
    with running_server(tiny_distilbert, tmp_path) as running, httpx.Client(
        base_url=running.url, timeout=60
    ) as http:
        unnormalised = http.post("/embed", json={"inputs": texts, "normalize": False})
        normalised = http.post("/embed", json={"inputs": texts})
    assert unnormalised.status_code == normalised.status_code == 200
    np.testing.assert_allclose(np.array(unnormalised.json(), np.float32), raw, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.array(normalised.json(), np.float32), l2_normalize(raw), atol=1e-6)


def test_similarity_route(client: httpx.Client, offline: Embedder, words: list[str]) -> None:
    source, *others = _sentences(words, 4, offset=3)
    response = client.post("/similarity", json={"inputs": {"source_sentence": source, "sentences": others}})
    assert response.status_code == 200
    vectors = offline.embed([source, *others])
    expected = row_cosines(np.repeat(vectors[:1], 3, axis=0), vectors[1:])
    assert np.allclose(response.json(), expected, atol=1e-5)


def test_concurrent_requests_each_get_their_own_rows(
    client: httpx.Client, offline: Embedder, words: list[str]
) -> None:
    requests = [_sentences(words, 1 + i % 8, offset=i) for i in range(48)]

    def call(texts: list[str]) -> np.ndarray:
        response = client.post("/embed", json={"inputs": texts})
        assert response.status_code == 200, response.text
        return np.array(response.json(), np.float32)

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(call, requests))
    for texts, vectors in zip(requests, results, strict=True):
        assert row_cosines(vectors, offline.embed(texts)).min() >= 0.99999
    metrics = client.get("/metrics").text
    assert "# TYPE embedrt_batch_size histogram" in metrics
    assert _sample(metrics, "embedrt_batch_size_count") > 0
    assert _sample(metrics, 'embedrt_requests_total{route="/embed",status="200"}') >= 48
    assert _sample(metrics, "embedrt_queue_depth") == 0
    assert _sample(metrics, "embedrt_inference_duration_seconds_count") > 0
    assert _sample(metrics, "embedrt_tokenize_duration_seconds_count") > 0


def _sample(metrics: str, name: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics:\n{metrics}")


# --- errors ---------------------------------------------------------------------------------

ERROR_CASES: list[tuple[str, str, Any, int, str, int | None]] = [
    ("/embed", "raw", b"{not json", 400, "not valid JSON", None),
    ("/embed", "raw", b"\xff\xfe\x00", 400, "not valid JSON", None),
    ("/embed", "raw", b"[" * 100_000, 413, "larger than 4096 bytes", 4096),
    ("/embed", "raw", b"[" * 4000, 400, "not valid JSON", None),
    ("/embed", "json", ["a"], 422, "must be a JSON object", None),
    ("/embed", "json", {}, 422, "'inputs' is required", None),
    ("/embed", "json", {"inputs": 3}, 422, "must be a string or a list of strings", None),
    ("/embed", "json", {"inputs": []}, 422, "empty list", None),
    ("/embed", "json", {"inputs": ["a", None]}, 422, "'inputs[1]' must be a string", None),
    ("/embed", "json", {"inputs": ["a"] * 9}, 422, "at most 8 are accepted", 8),
    ("/embed", "json", {"inputs": "x" * 301}, 422, "at most 300 are accepted", 300),
    ("/embed", "json", {"inputs": "a", "normalize": "yes"}, 422, "'normalize' must be a boolean", None),
    ("/embed", "raw", b'{"inputs": "\\ud800"}', 422, "not valid Unicode", None),
    ("/v1/embeddings", "json", {"input": [[1, 2, 3]]}, 422, "token arrays are not supported", None),
    # the runtime's own checks (check_truncate_dim, resolve_prompt), as test_error_mapping.py shows
    ("/v1/embeddings", "json", {"input": "a", "dimensions": 33}, 422, '"dimensions" must be an integer', 32),
    ("/v1/embeddings", "json", {"input": "a", "dimensions": 0}, 422, "an integer from 1 to 32", 32),
    ("/embed", "json", {"inputs": "a", "dimensions": 33}, 422, "an integer from 1 to 32", 32),
    ("/embed", "json", {"inputs": "a", "prompt_name": "nope"}, 422, "not one of this model's prompts", None),
    ("/v1/embeddings", "json", {"input": "a", "dimensions": True}, 422, "an integer from 1 to 32", 32),
    ("/v1/embeddings", "json", {"input": "a", "encoding_format": "int8"}, 422, "'float' or 'base64'", None),
    ("/similarity", "json", {"inputs": {"sentences": ["a"]}}, 422, "source_sentence' is required", None),
    ("/similarity", "json", {"inputs": {"source_sentence": "a", "sentences": "b"}}, 422,
     "'inputs.sentences' must be a list", None),
    ("/similarity", "json", {"inputs": {"source_sentence": "a", "sentences": []}}, 422, "empty list", None),
]


@pytest.mark.parametrize(("route", "kind", "body", "status", "message", "limit"), ERROR_CASES)
def test_errors_are_4xx_with_json_that_names_the_problem(
    client: httpx.Client, route: str, kind: str, body: Any, status: int, message: str, limit: int | None
) -> None:
    if kind == "raw":
        response = client.post(route, content=body, headers={"content-type": "application/json"})
    else:
        response = client.post(route, json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error["message"]
    assert error.get("limit") == limit
    assert client.get("/health").status_code == 200  # and the server is still up


def test_truncate_false_rejects_long_inputs(
    client: httpx.Client, offline: Embedder, words: list[str]
) -> None:
    long_text = " ".join((words * 3)[:40])
    response = client.post("/embed", json={"inputs": ["short", long_text], "truncate": False})
    assert response.status_code == 422
    error = response.json()["error"]
    assert f"the model accepts at most {offline.max_seq_length}" in error["message"]
    assert "input 1 has" in error["message"] and error["limit"] == offline.max_seq_length
    # HTTP names its JSON field, not the Python keyword or the CLI flag
    assert error["param"] == "truncate" and 'Pass "truncate": true' in error["message"]


def test_unknown_route_and_method_are_json(client: httpx.Client) -> None:
    missing = client.get("/nope")
    assert missing.status_code == 404 and "Not Found" in missing.json()["error"]["message"]
    wrong = client.get("/embed")
    assert wrong.status_code == 405 and "Method Not Allowed" in wrong.json()["error"]["message"]


# --- load, shutdown, start-up -----------------------------------------------------------------


def test_overfilled_queue_answers_503_with_retry_after(
    tiny_bert: Path, tmp_path: Path, words: list[str]
) -> None:
    # A queue of 2 inputs, and an inference thread that waits (for ten minutes) for company:
    # two requests are held, so a third is refused whatever the timing; SIGTERM then makes
    # the thread run what it holds, and both held requests are answered.
    args = ["--max-inputs", "1", "--max-queue", "2", "--max-wait-ms", "600000"]
    with running_server(tiny_bert, tmp_path, *args) as running, httpx.Client(
        base_url=running.url, timeout=60
    ) as http, ThreadPoolExecutor(2) as pool:
        held = [pool.submit(http.post, "/embed", json={"inputs": [words[i]]}) for i in range(2)]
        _wait_for_queue_depth(http, 2)
        refused = http.post("/embed", json={"inputs": [words[2]]})
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert "the queue holds at most 2" in refused.json()["error"]["message"]
        assert refused.json()["error"]["limit"] == 2
        assert _sample(http.get("/metrics").text, "embedrt_queue_rejected_total") == 1
        running.process.send_signal(signal.SIGTERM)
        assert [future.result().status_code for future in held] == [200, 200]


def test_sigterm_finishes_every_accepted_request(
    tiny_bert: Path, tmp_path: Path, offline: Embedder, words: list[str]
) -> None:
    # The inference thread waits ten minutes for company, so all six requests are still
    # queued when SIGTERM comes (no timing window): shutdown must answer every one of them.
    requests = [_sentences(words, 2, offset=i) for i in range(6)]
    with running_server(tiny_bert, tmp_path, "--max-wait-ms", "600000") as running, httpx.Client(
        base_url=running.url, timeout=60
    ) as http, ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(http.post, "/embed", json={"inputs": texts}) for texts in requests]
        _wait_for_queue_depth(http, 12)  # all six accepted, none answered yet
        running.process.send_signal(signal.SIGTERM)
        responses = [future.result() for future in futures]
        # uvicorn re-raises the signal once its graceful shutdown is done
        assert running.process.wait(timeout=60) in (0, -signal.SIGTERM), running.log()
        assert "Traceback" not in running.log()
    for texts, response in zip(requests, responses, strict=True):
        assert response.status_code == 200, response.text
        assert row_cosines(np.array(response.json()), offline.embed(texts)).min() >= 0.99999


def _wait_for_queue_depth(http: httpx.Client, depth: int) -> None:
    """Poll /metrics until the queue holds ``depth`` inputs (a state, not a time window)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if _sample(http.get("/metrics").text, "embedrt_queue_depth") == depth:
            return
        time.sleep(0.01)
    raise AssertionError(f"queue depth never reached {depth}")


def test_missing_artefact_is_one_line_error_before_listening(tmp_path: Path) -> None:
    result = subprocess.run(_command(tmp_path / "absent", _free_port()), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith("embedrt: error: ") and "no such artefact directory" in result.stderr
    assert "Traceback" not in result.stderr


def test_corrupt_model_fails_health_and_exits(tiny_bert: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("manifest.json", "tokenizer.json"):
        (broken / name).write_bytes((tiny_bert / name).read_bytes())
    (broken / "model.onnx").write_bytes(b"not an onnx graph")
    result = subprocess.run(_command(broken, _free_port()), capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "embedrt: error: " in result.stderr and "sha256 does not match" in result.stderr


def test_missing_serve_extra_names_it(tiny_bert: Path) -> None:
    code = ("import sys; sys.modules['starlette'] = None; sys.modules['uvicorn'] = None\n"
            "from embedrt.cli import main\n"
            f"sys.argv = ['embedrt', 'serve', '--model', {str(tiny_bert)!r}]\nmain()")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert "embedrt serve needs the [serve] extra" in result.stderr
    assert "pip install -e '.[serve]'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_missing_orjson_names_the_serve_extra(tiny_bert: Path) -> None:
    code = ("import sys; sys.modules['orjson'] = None\n"
            "from embedrt.cli import main\n"
            f"sys.argv = ['embedrt', 'serve', '--model', {str(tiny_bert)!r}]\nmain()")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert "embedrt serve needs the [serve] extra" in result.stderr and "orjson" in result.stderr


def test_vector_json_is_the_same_doubles_as_json_dumps() -> None:
    import json

    from embedrt.serve.app import _json_vectors, _VectorResponse

    rows = np.random.default_rng(0).standard_normal((3, 384)).astype(np.float32)
    rows[0, :4] = [1e-8, -3.4e38, 0.0, 1.0]
    body = {"data": [{"embedding": row} for row in _json_vectors(rows)], "model": "é"}
    rendered = _VectorResponse(body).body
    expected = json.dumps({"data": [{"embedding": row} for row in rows.tolist()], "model": "é"},
                          ensure_ascii=False)
    assert json.loads(rendered) == json.loads(expected)
    rows[1, 5] = np.nan
    with pytest.raises(ValueError, match="not JSON compliant"):
        _json_vectors(rows)


def test_serve_help_has_an_example() -> None:
    result = subprocess.run([sys.executable, "-m", "embedrt.cli", "serve", "--help"],
                            capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0
    assert "Example: embedrt serve --port 8080" in result.stdout and "EMBEDRT_MAX_QUEUE" in result.stdout
    assert "int8 if exported" in result.stdout


def test_server_modules_import_no_torch_stack() -> None:
    blocked = ["torch", "transformers", "optimum", "onnx", "sentence_transformers"]
    code = (f"import sys\nfor name in {blocked!r}: sys.modules[name] = None\n"
            "import embedrt.serve.app, embedrt.serve.batcher, embedrt.cli.serve")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


# --- the real model -------------------------------------------------------------------------


def test_real_model_parity_under_concurrency(minilm_fp32: Path, tmp_path: Path) -> None:
    base = ["A man is playing a guitar.", "The bank approved the loan quickly.", "Cats sleep a lot.",
            "An embedding maps a sentence to a vector of numbers that captures its meaning."]
    long_text = " ".join(base * 30)  # well over 256 tokens: truncated, and reported
    requests = [[base[i % 4], base[(i + 1) % 4] * (1 + i % 5)] + ([long_text] if i % 3 == 0 else [])
                for i in range(24)]
    offline = Embedder.load(minilm_fp32)
    with running_server(minilm_fp32, tmp_path, "--pad-to-multiple-of", "32") as running, httpx.Client(
        base_url=running.url, timeout=60
    ) as http, ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda texts: http.post("/v1/embeddings", json={"input": texts}), requests))
    for texts, response in zip(requests, responses, strict=True):
        assert response.status_code == 200, response.text
        expected = offline.encode(texts)
        vectors = np.array([item["embedding"] for item in response.json()["data"]], np.float32)
        assert row_cosines(vectors, expected.vectors).min() >= 0.99999
        assert response.json()["usage"]["prompt_tokens"] == int(expected.token_counts.sum())
        assert response.headers["x-embedrt-truncated"] == str(len(expected.truncated))


# --- fuzzing --------------------------------------------------------------------------------


def test_schema_fuzz_finds_no_server_error(server: Server) -> None:
    schemathesis = pytest.importorskip("schemathesis", reason="the fuzz pass needs schemathesis ([dev])")
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.generation import GenerationMode
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [not_a_server_error, status_code_conformance, content_type_conformance,
              response_schema_conformance]
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 7
    for operation in operations:
        # a GET without parameters has no invalid form to generate
        modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if operation.method == "post" else [])
        for mode in modes:
            @settings(max_examples=25, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def fuzz(case: Any) -> None:
                case.call_and_validate(base_url=server.url, checks=checks)

            fuzz()


# --- batching without a wait ----------------------------------------------------------------


class _GatedCalls:
    """A batch observer that records the rows of every inference call and holds the inference
    thread inside the first call until the test opens the gate."""

    def __init__(self) -> None:
        self.rows: list[int] = []
        self.first_call = threading.Event()
        self.gate = threading.Event()

    def queue_depth(self, depth: int) -> None:
        """Ignore it."""

    def tokenized(self, seconds: float, tokens: int, truncated: int) -> None:
        """Ignore it."""

    def inferred(self, seconds: float, rows: int, padded_tokens: int) -> None:
        self.rows.append(rows)
        if len(self.rows) == 1:
            self.first_call.set()
            assert self.gate.wait(timeout=60), "the test never opened the gate"


def test_without_a_wait_requests_queued_during_a_batch_share_the_next(
    offline: Embedder, words: list[str]
) -> None:
    """max_wait_ms=0 (the default) still batches: what queues while a batch runs forms the next.

    The first request's call is held open (the observer waits on a gate), the other 39 are
    queued meanwhile, then the gate opens: no timing decides what shares a batch.
    """
    from embedrt.serve.batcher import Batcher
    from embedrt.serve.config import DEFAULTS

    assert DEFAULTS.max_wait_ms == 0
    calls = _GatedCalls()
    batcher = Batcher(offline, DEFAULTS, calls)
    batcher.start()
    requests = [_sentences(words, 1, offset=i) for i in range(40)]
    try:
        futures = [batcher.submit(requests[0])]
        assert calls.first_call.wait(timeout=60), "the first request was never run"
        futures += [batcher.submit(texts) for texts in requests[1:]]  # while the first call runs
        assert batcher.depth == 40  # the first is not answered yet: all 40 are held
        calls.gate.set()
        results = [future.result(timeout=60) for future in futures]
    finally:
        calls.gate.set()
        batcher.close()
    for texts, result in zip(requests, results, strict=True):
        np.testing.assert_allclose(result.vectors, offline.embed(texts), atol=1e-6)
    assert calls.rows == [1, 39], f"40 requests ran as {len(calls.rows)} calls: {calls.rows}"
