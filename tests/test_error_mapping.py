"""Library errors as every front end shows them, readiness as state, truncation without loggers.

- Each library error about a setting is raised by the runtime itself (the front ends do not
  re-check) and reaches the user with the library's message, the setting spelled the front
  end's way: a 422 whose ``message`` names the JSON field (``"dimensions"``), ``param`` the
  field and ``limit`` the bound; a single ``embedrt: error:`` line naming the flag
  (``--truncate-dim``), exit status 1.
- ``GET /health`` reads the server's :class:`Readiness`: loading, ready, failed, each tried on a
  real uvicorn server (in this process, so the load can be held at a gate: no timing window).
- The truncation warning is switched per call (``warn_truncation``): the CLI reports it once,
  the corpus job counts it silently, the bench is quiet, and no caller touches a logger level.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from embedrt.runtime import Embedder
from embedrt.runtime.errors import EmbedrtError

ROOT = Path(__file__).resolve().parents[1]
LONG = "the cat sat on the road " * 10  # 62 tokens; the tiny model accepts 24
WAIT_SECONDS = 60


@dataclass(frozen=True)
class Case:
    """One library error, raised through Python, HTTP and the CLI.

    ``spellings`` maps each setting as ``str(err)`` spells it (Python) to its HTTP and CLI
    spellings; the expected front-end message is the Python one with those replaced.
    """

    id: str
    python: Callable[[Embedder], object]
    requests: tuple[tuple[str, dict[str, Any]], ...]
    cli: tuple[str, ...]
    spellings: dict[str, tuple[str, str]]
    field: str
    limit: int | None


CASES = [
    Case("input-too-long", lambda e: e.encode(["hello", LONG], truncate=False),
         (("/embed", {"inputs": ["hello", LONG], "truncate": False}),
          ("/tokenize", {"inputs": ["hello", LONG], "truncate": False}),
          ("/similarity", {"inputs": {"source_sentence": "hello", "sentences": [LONG]}, "truncate": False})),
         ("embed", "hello", LONG, "--no-truncate"),
         {"truncate=True": ('"truncate": true', "--truncate")}, "truncate", 24),
    Case("unknown-prompt-name", lambda e: e.encode(["x"], prompt_name="nope"),
         (("/embed", {"inputs": "x", "prompt_name": "nope"}),
          ("/v1/embeddings", {"input": "x", "prompt_name": "nope"}),
          ("/tokenize", {"inputs": "x", "prompt_name": "nope"})),
         ("embed", "x", "--prompt-name", "nope"),
         {"prompt_name": ('"prompt_name"', "--prompt-name")}, "prompt_name", None),
    Case("dimensions-over", lambda e: e.encode(["x"], truncate_dim=33),
         (("/v1/embeddings", {"input": "x", "dimensions": 33}),
          ("/embed", {"inputs": "x", "dimensions": 33})),
         ("embed", "x", "--truncate-dim", "33"),
         {"truncate_dim": ('"dimensions"', "--truncate-dim")}, "dimensions", 32),
    Case("dimensions-zero", lambda e: e.encode(["x"], truncate_dim=0),
         (("/v1/embeddings", {"input": "x", "dimensions": 0}),),
         ("embed", "x", "--truncate-dim", "0"),
         {"truncate_dim": ('"dimensions"', "--truncate-dim")}, "dimensions", 32),
]


def _library_error(case: Case, embedder: Embedder) -> EmbedrtError:
    with pytest.raises(EmbedrtError) as caught:
        case.python(embedder)
    err = caught.value
    for python_spelling in case.spellings:
        assert python_spelling in str(err), (python_spelling, str(err))
    return err


def _spelled(message: str, spellings: dict[str, tuple[str, str]], front: int) -> str:
    for python_spelling, fronts in spellings.items():
        message = message.replace(python_spelling, fronts[front])
    return message


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The console entry point (``main``, with its logging set-up) in a new process."""
    return subprocess.run([sys.executable, "-c", "from embedrt.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def embedder(tiny_bert: Path) -> Embedder:
    return Embedder.load(tiny_bert)


@pytest.fixture(scope="module")
def http(tiny_bert: Path, running_server: Callable[..., Any],
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    import httpx

    with running_server(tiny_bert, tmp_path_factory.mktemp("mapping-server")) as server, \
            httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


# --- one mapper per front end ------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_library_error_reaches_http_as_a_422_naming_the_json_field(
    case: Case, embedder: Embedder, http: Any
) -> None:
    err = _library_error(case, embedder)
    assert err.limit == case.limit
    expected = _spelled(str(err), case.spellings, 0)
    for route, body in case.requests:
        response = http.post(route, json=body)
        assert response.status_code == 422, (route, response.text)
        error = response.json()["error"]
        assert error["message"] == expected, route
        assert error["param"] == case.field and error.get("limit") == case.limit
        assert error["type"] == "invalid_request_error" and error["code"] == 422


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_library_error_reaches_the_cli_as_one_line_naming_the_flag(
    case: Case, embedder: Embedder, tiny_bert: Path
) -> None:
    err = _library_error(case, embedder)
    result = _run_cli(*case.cli, "--model", str(tiny_bert))
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [f"embedrt: error: {_spelled(str(err), case.spellings, 1)}"]
    assert result.stdout == ""


def test_a_server_setting_error_names_both_flags_on_the_cli(tiny_bert: Path) -> None:
    from embedrt.serve.config import ServerConfig

    with pytest.raises(EmbedrtError) as caught:
        ServerConfig(max_inputs=8, max_queue=5)
    spellings = {"max_queue": ("", "--max-queue"), "max_inputs": ("", "--max-inputs")}
    expected = _spelled(str(caught.value), spellings, 1)
    result = _run_cli("serve", "--model", str(tiny_bert), "--max-inputs", "8", "--max-queue", "5")
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [f"embedrt: error: {expected}"]
    assert "--max-queue (5) must be at least --max-inputs + 1 (9)" in expected


# export_model's recipe settings: the CLI reaches them only through --variant, never by name
PYTHON_ONLY = {"layout", "scales"}
# the settings each embedding route passes to the runtime, which may refuse them
ROUTE_SETTINGS = {"/embed": ("truncate", "prompt_name", "truncate_dim"),
                  "/v1/embeddings": ("prompt_name", "truncate_dim"), "/tokenize": ("truncate", "prompt_name")}


def test_every_setting_an_error_names_is_a_cli_flag_and_a_request_field() -> None:
    """The CLI mapper spells a keyword as its flag, so every named keyword must be one."""
    import typer.main
    from embedrt.cli import app
    from embedrt.runtime.errors import Param, cli_spelling
    from embedrt.serve.config import ServerConfig
    from embedrt.serve.schema import json_field, openapi_document

    keywords = {keyword for folder in ("runtime", "corpus", "export", "serve", "bench")
                for path in (ROOT / folder).rglob("*.py")
                for keyword in re.findall(r'Param\("([a-z_]+)"', path.read_text())}
    assert {"truncate", "prompt_name", "truncate_dim", "overwrite", "max_queue"} <= keywords
    command = typer.main.get_command(app)
    flags = {flag for sub in command.commands.values() for param in sub.params  # type: ignore[attr-defined]
             for flag in [*param.opts, *param.secondary_opts]}
    assert sorted(k for k in keywords - PYTHON_ONLY if cli_spelling(Param(k)) not in flags) == []
    document = openapi_document("tiny", 32, ServerConfig(), ())
    for route, settings in ROUTE_SETTINGS.items():
        body = document["paths"][route]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert [s for s in settings if json_field(Param(s)) not in body["properties"]] == [], route


# --- readiness as state ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen in {WAIT_SECONDS} s")
        time.sleep(0.01)


@contextlib.contextmanager
def _uvicorn(model_dir: Path, release: threading.Event | None = None) -> Iterator[tuple[Any, Any]]:
    """A real uvicorn server over ``create_app`` in a thread; yields ``(client, state)``.

    With ``release``, the model's load waits for it (the server answers meanwhile).
    """
    import httpx
    import uvicorn
    from embedrt.serve.app import create_app
    from embedrt.serve.config import ServerConfig

    port = _free_port()
    app, state = create_app(ServerConfig(model_dir=model_dir, port=port))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="test-uvicorn", daemon=True)
    thread.start()
    try:
        _until(lambda: server.started or not thread.is_alive(), "the server listening")
        assert server.started
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client, state
    finally:
        if release is not None:
            release.set()
        server.should_exit = True
        thread.join(WAIT_SECONDS)
        assert not thread.is_alive()


def test_health_reports_loading_then_ready(
    tiny_bert: Path, embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    from embedrt.serve import app as app_module
    from embedrt.serve.app import Readiness

    loading, release = threading.Event(), threading.Event()

    class GatedEmbedder:
        @staticmethod
        def load(*args: Any, **kwargs: Any) -> Embedder:
            loading.set()
            assert release.wait(WAIT_SECONDS)
            return Embedder.load(*args, **kwargs)

    monkeypatch.setattr(app_module, "Embedder", GatedEmbedder)
    with _uvicorn(tiny_bert, release) as (client, state):
        assert loading.wait(WAIT_SECONDS)
        assert state.readiness is Readiness.LOADING
        health = client.get("/health")
        assert (health.status_code, health.json()) == (503, {"status": "loading"})
        assert health.headers["retry-after"] == "1"
        assert client.get("/info").json()["ready"] is False
        refused = client.post("/embed", json={"inputs": "the cat"})
        assert refused.status_code == 503 and "not loaded yet" in refused.json()["error"]["message"]

        release.set()
        _until(lambda: state.readiness is not Readiness.LOADING, "the load ending")
        assert state.readiness is Readiness.READY
        health = client.get("/health")
        assert (health.status_code, health.json()) == (200, {"status": "ok"})
        assert client.get("/info").json()["ready"] is True
        served = client.post("/embed", json={"inputs": ["the cat", LONG]})
        assert served.status_code == 200
        np.testing.assert_allclose(np.array(served.json()), embedder.embed(["the cat", LONG]), atol=1e-6)


def test_health_reports_a_failed_load_and_why(tiny_bert: Path, tmp_path: Path) -> None:
    from embedrt.serve.app import Readiness

    broken = tmp_path / "broken"
    shutil.copytree(tiny_bert, broken)
    (broken / "model.onnx").write_bytes(b"not an onnx graph")
    with _uvicorn(broken) as (client, state):
        _until(lambda: state.readiness is not Readiness.LOADING, "the load ending")
        assert state.readiness is Readiness.FAILED
        health = client.get("/health")
        assert health.status_code == 503
        body = health.json()
        assert body["status"] == "failed" and "retry-after" not in health.headers
        assert body["error"].startswith("ArtefactError: ") and "sha256 does not match" in body["error"]
        assert client.get("/info").json()["ready"] is False
        refused = client.post("/embed", json={"inputs": "the cat"})
        assert refused.status_code == 503 and "failed to load" in refused.json()["error"]["message"]


# --- the truncation report ---------------------------------------------------------------------

TRUNCATION = "truncated 2 of 3 inputs to max_seq_length=24 tokens"
TEXTS = ["hello", LONG, LONG + " again"]


def _truncation_records(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("truncated ")]


def test_encode_warns_once_unless_told_not_to(embedder: Embedder, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="embedrt"):
        warned = embedder.encode(TEXTS)
    assert _truncation_records(caplog) == [TRUNCATION]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="embedrt"):
        quiet = embedder.encode(TEXTS, warn_truncation=False)
        vectors = embedder.embed(TEXTS, warn_truncation=False)
    assert _truncation_records(caplog) == []
    assert quiet.truncated == warned.truncated == (1, 2)  # the report is in the result either way
    np.testing.assert_array_equal(quiet.vectors, warned.vectors)
    np.testing.assert_array_equal(vectors, warned.vectors)


def test_cli_embed_reports_truncation_once_on_stderr(tiny_bert: Path) -> None:
    result = _run_cli("embed", *TEXTS, "--model", str(tiny_bert))
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [f"embedrt: {TRUNCATION}"]
    assert [json.loads(line)["truncated"] for line in result.stdout.splitlines()] == [False, True, True]


@pytest.mark.parametrize("processes", [1, 2])
def test_corpus_job_counts_truncation_without_a_warning(
    tiny_bert: Path, embedder: Embedder, tmp_path: Path, processes: int
) -> None:
    pytest.importorskip("pyarrow", reason="the corpus job needs the [corpus] extra")
    texts = [f"{text} {i}" for i in range(12) for text in TEXTS]
    source = tmp_path / "texts.txt"
    source.write_text("\n".join(texts) + "\n")
    expected = len(embedder.encode(texts, warn_truncation=False).truncated)
    assert expected == 24
    result = _run_cli("embed-corpus", str(source), "--out", str(tmp_path / "out"), "--model", str(tiny_bert),
                      "--quiet", "--processes", str(processes), "--chunk-rows", "8", "--threads", "2")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no line per chunk (nor per worker process)
    assert f"36 rows read: 36 embedded, 0 skipped, {expected} truncated" in result.stdout
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["counts"]["truncated"] == expected


def test_corpus_job_in_python_logs_no_truncation(
    tiny_bert: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("pyarrow", reason="the corpus job needs the [corpus] extra")
    from embedrt.corpus.job import embed_corpus

    source = tmp_path / "texts.txt"
    source.write_text("\n".join(TEXTS) + "\n")
    with caplog.at_level(logging.WARNING, logger="embedrt"):
        result = embed_corpus([source], tmp_path / "out", tiny_bert)
    assert result.truncated == 2 and _truncation_records(caplog) == []


def test_bench_systems_embed_quietly(
    tiny_bert: Path, embedder: Embedder, caplog: pytest.LogCaptureFixture
) -> None:
    from embedrt.bench.systems import EmbedrtSystem, SystemSpec

    system = EmbedrtSystem(SystemSpec("embedrt-fp32", "embedrt", str(tiny_bert), 1))
    with caplog.at_level(logging.WARNING, logger="embedrt"):
        vectors = system.embed(TEXTS, None)
    assert _truncation_records(caplog) == []
    np.testing.assert_allclose(vectors, embedder.embed(TEXTS), atol=1e-6)


def test_no_caller_changes_the_embedders_logger() -> None:
    """Nothing outside the runtime names its logger (to raise or lower its level)."""
    named = [path.relative_to(ROOT) for folder in ("cli", "corpus", "bench", "serve", "export")
             for path in (ROOT / folder).rglob("*.py")
             if any(f"getLogger({quote}embedrt.runtime" in path.read_text() for quote in "'\"")]
    assert named == []
    assert logging.getLogger("embedrt.runtime.embedder").level == logging.NOTSET
