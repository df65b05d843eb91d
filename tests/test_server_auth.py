"""API keys on the server, tested through a real `embedrt serve` process and in-process.

One server per module holds three keys: two of different lengths from a key file (with a
comment, a blank line and a duplicate) and one from EMBEDRT_API_KEYS. Its log runs at debug
level, so a key that reached any log line would be found by the last test.
"""

from __future__ import annotations

import hashlib
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("starlette", reason="the server needs the [serve] extra (starlette)")
httpx = pytest.importorskip("httpx", reason="the server tests need httpx (the [dev] extra)")

from embedrt.runtime import Embedder  # noqa: E402
from embedrt.serve import auth  # noqa: E402
from embedrt.serve.auth import ENV_KEYS, ApiKeys, load_api_keys  # noqa: E402
from embedrt.serve.config import ServerConfig  # noqa: E402

KEY_A = "ek-" + "a1B2c3D4e5F6g7H8i9J0" * 2  # 43 characters
KEY_B = "ek-" + "Zy9Xw8Vu7Ts6Rq5Po4Nm3Lk2" * 3  # 75: another length
KEY_ENV = "ek-env-" + "q" * 30
KEYS = (KEY_A, KEY_B, KEY_ENV)
WRONG = "ek-" + "a1B2c3D4e5F6g7H8i9J0" * 2 + "x"  # KEY_A and one more character
SENT_WRONG = (WRONG, KEY_A[:-1] + "Z", "Z" + KEY_A[1:], "short", "k" * 4000)
OPEN = 'Bearer realm="embedrt"'
INVALID = 'Bearer realm="embedrt", error="invalid_token"'


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "api-keys"
    path.write_text(f"# keys of the test clients\n{KEY_A}\n\n  {KEY_B}  \n{KEY_A}\n")
    return path


@pytest.fixture(scope="module")
def server(
    tiny_bert: Path, key_file: Path, running_server: Callable[..., Any],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Any]:
    with pytest.MonkeyPatch.context() as patch:  # the server process inherits the variable
        patch.setenv(ENV_KEYS, f" {KEY_ENV} ,")
        with running_server(tiny_bert, tmp_path_factory.mktemp("auth-server"), "--api-key-file",
                            str(key_file), "--log-level", "debug") as running:
            yield running


@pytest.fixture(scope="module")
def http(server: Any) -> Iterator[Any]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def _routes(tiny_bert: Path) -> list[tuple[str, str]]:
    """Every (method, path) the app serves, read from the app itself (HEAD is GET's twin)."""
    from embedrt.serve.app import create_app

    app, _ = create_app(ServerConfig(model_dir=tiny_bert, api_keys=ApiKeys([KEY_A])))
    routes = [(method, route.path) for route in app.routes for method in sorted(route.methods or ())
              if method != "HEAD"]
    assert {path for _, path in routes} >= {"/v1/embeddings", "/embed", "/tokenize", "/metrics", "/info",
                                            "/openapi.json", "/health"}
    return routes


def _refused(response: Any, challenge: str, message: str) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == challenge
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_api_key"
    assert error["param"] is None and message in error["message"]


def _sample(metrics: str, name: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


# --- which requests pass ------------------------------------------------------------------


def test_health_is_open_and_every_other_route_refuses_without_a_key(tiny_bert: Path, http: Any) -> None:
    assert http.get("/health").json() == {"status": "ok"}
    routes = _routes(tiny_bert)
    for method, path in routes:
        response = http.request(method, path, json={"inputs": "a"} if method == "POST" else None)
        if path == "/health":
            assert response.status_code == 200
        else:
            _refused(response, OPEN, "no API key: this server requires one; send the key in the "
                     "header 'Authorization: Bearer <key>'")
    for path in ("/nope", "/health/", "/HEALTH", "/v1/models"):  # no route, or not exactly /health
        _refused(http.get(path), OPEN, "no API key")


def test_every_route_lets_the_right_key_through(tiny_bert: Path, http: Any) -> None:
    for method, path in _routes(tiny_bert):
        body = {"inputs": "a", "input": "a", "source_sentence": "a"} if method == "POST" else None
        response = http.request(method, path, json=body, headers=_bearer(KEY_A))
        assert response.status_code != 401, (method, path, response.text)
    assert http.get("/nope", headers=_bearer(KEY_A)).status_code == 404


@pytest.mark.parametrize("key", KEYS)
def test_each_key_from_the_file_and_the_variable_embeds(key: str, http: Any) -> None:
    response = http.post("/embed", json={"inputs": ["hello world"]}, headers=_bearer(key))
    assert response.status_code == 200, response.text
    assert len(response.json()) == 1


@pytest.mark.parametrize("wrong", SENT_WRONG)
def test_wrong_keys_are_refused_whatever_their_length(wrong: str, http: Any) -> None:
    response = http.post("/embed", json={"inputs": "a"}, headers=_bearer(wrong))
    _refused(response, INVALID, "the API key is not valid: it matches none of this server's keys")
    assert wrong not in response.text


@pytest.mark.parametrize("header", [
    f"Basic {KEY_A}", f"Token {KEY_A}", "Bearer", KEY_A, f"Bearer{KEY_A}",
])
def test_a_malformed_authorization_header_is_refused(header: str, http: Any) -> None:
    response = http.get("/info", headers={"Authorization": header})
    _refused(response, INVALID, "the Authorization header is not of the form 'Bearer <key>'")
    assert KEY_A not in response.text


def test_the_bearer_scheme_is_case_insensitive(http: Any) -> None:
    assert http.get("/info", headers={"Authorization": f"bearer {KEY_B}"}).status_code == 200


@pytest.mark.parametrize("name", ["api_key", "key", "apikey", "access_token", "API_KEY"])
def test_a_key_in_the_query_string_is_refused_even_with_a_good_header(name: str, http: Any) -> None:
    response = http.get(f"/info?{name}={KEY_A}", headers=_bearer(KEY_A))
    _refused(response, INVALID, f"API keys are not accepted in the URL (query parameter {name!r})")
    assert "'Authorization: Bearer <key>'" in response.json()["error"]["message"]
    assert KEY_A not in response.text
    _refused(http.post(f"/embed?{name}={KEY_A}", json={"inputs": "a"}), INVALID, "not accepted in the URL")


def test_rejections_are_counted_by_reason(http: Any) -> None:
    def counts() -> dict[str, float]:
        metrics = http.get("/metrics", headers=_bearer(KEY_ENV)).text
        assert "# TYPE embedrt_auth_rejected_total counter" in metrics
        return {reason: _sample(metrics, f'embedrt_auth_rejected_total{{reason="{reason}"}}')
                for reason in ("missing", "malformed", "invalid", "key_in_query")}

    before = counts()
    for _ in range(3):
        http.get("/info")
    http.get("/info", headers={"Authorization": "Basic x"})
    for wrong in SENT_WRONG:
        http.get("/info", headers=_bearer(wrong))
    http.get(f"/info?api_key={KEY_A}", headers=_bearer(KEY_A))
    http.get("/health")  # open: not a rejection
    after = counts()
    assert {reason: after[reason] - before[reason] for reason in after} == {
        "missing": 3, "malformed": 1, "invalid": len(SENT_WRONG), "key_in_query": 1}


def test_the_openai_client_authenticates_with_api_key(server: Any, tiny_bert: Path) -> None:
    openai = pytest.importorskip("openai", reason="the openai client is not installed")
    texts = ["a man plays a guitar", "hello world"]
    with openai.OpenAI(api_key=KEY_B, base_url=f"{server.url}/v1", max_retries=0) as client:
        result = client.embeddings.create(input=texts, model="embedrt")
    vectors = np.array([item.embedding for item in result.data], np.float32)
    expected = Embedder.load(tiny_bert).embed(texts)
    assert np.abs(vectors - expected).max() < 1e-5
    with openai.OpenAI(api_key=WRONG, base_url=f"{server.url}/v1", max_retries=0) as client, \
            pytest.raises(openai.AuthenticationError) as refused:
        client.embeddings.create(input=texts, model="embedrt")
    assert refused.value.status_code == 401 and refused.value.code == "invalid_api_key"
    assert "matches none of this server's keys" in refused.value.message


def test_openapi_declares_the_bearer_scheme(http: Any) -> None:
    document = http.get("/openapi.json", headers=_bearer(KEY_A)).json()
    assert document["components"]["securitySchemes"] == {"bearer": {"type": "http", "scheme": "bearer"}}
    assert document["security"] == [{"bearer": []}]
    assert document["paths"]["/health"]["get"]["security"] == []
    assert "401" in document["paths"]["/tokenize"]["post"]["responses"]
    assert "401" not in document["paths"]["/health"]["get"]["responses"]


# --- keys are never shown -----------------------------------------------------------------


def test_keys_appear_in_no_response_and_no_log_line(server: Any, http: Any) -> None:
    bodies = [http.get(path, headers=_bearer(KEY_A)).text for path in ("/info", "/metrics", "/openapi.json")]
    bodies += [http.get("/info", headers=_bearer(wrong)).text for wrong in SENT_WRONG]
    log = server.log()
    assert "authentication on: 3 API key(s)" in log  # the debug-level log is being written
    for secret in (*KEYS, *SENT_WRONG):
        for text in (*bodies, log):
            assert secret not in text
    # nor their digests (the server holds those)
    for key in KEYS:
        assert hashlib.sha256(key.encode()).hexdigest() not in log


def test_config_and_keys_never_print_a_key(key_file: Path) -> None:
    keys = load_api_keys(key_file, {ENV_KEYS: f"{KEY_ENV},{KEY_A}\n"})
    assert keys is not None and len(keys) == 3  # the duplicate counts once
    config = ServerConfig(api_keys=keys)
    for text in (repr(config), str(config), repr(keys), str(keys)):
        assert "ApiKeys(3 keys)" in text and not any(key in text for key in KEYS)
    assert load_api_keys(None, {}) is None
    assert all(keys.matches(key.encode()) for key in KEYS)
    assert not keys.matches(KEY_A[:-1].encode()) and not keys.matches(b"")


# --- start-up errors ----------------------------------------------------------------------


def _serve(
    tiny_bert: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {key: value for key, value in os.environ.items() if key != ENV_KEYS}
    return subprocess.run(
        [sys.executable, "-m", "embedrt.cli", "serve", "--model", str(tiny_bert), "--port", "0", *args],
        capture_output=True, text=True, timeout=60, env={**environ, **(env or {})},
    )


@pytest.mark.parametrize(("content", "variable", "message"), [
    (None, None, "cannot read the API key file"),
    ("# only a comment\n\n   \n", None, "holds no key (only blank or # comment lines)"),
    (f"{KEY_A}\nbad key with spaces\n", None, "line 2 (--api-key-file): an API key holds a space"),
    ("", None, "holds no key"),
    (f"{KEY_A}\n", " , \n", f"{ENV_KEYS} is set but holds no key"),
])
def test_an_unusable_key_source_stops_the_server_with_one_line(
    tiny_bert: Path, tmp_path: Path, content: str | None, variable: str | None, message: str
) -> None:
    path = tmp_path / "keys"
    if content is not None:
        path.write_text(content)
    environ = None if variable is None else {ENV_KEYS: variable}
    result = _serve(tiny_bert, "--api-key-file", str(path), env=environ)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("embedrt: error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert KEY_A not in result.stderr and "with spaces" not in result.stderr
    if content is not None and variable is None:
        assert "--api-key-file" in result.stderr  # the option, spelled the command line's way


def test_an_unreadable_key_file_is_refused(tiny_bert: Path, tmp_path: Path) -> None:
    result = _serve(tiny_bert, "--api-key-file", str(tmp_path))  # a directory (root reads any file)
    assert result.returncode == 1 and "cannot read the API key file" in result.stderr
    assert "Is a directory" in result.stderr


def test_the_key_file_option_reads_its_variable(tiny_bert: Path, tmp_path: Path) -> None:
    result = _serve(tiny_bert, env={"EMBEDRT_API_KEY_FILE": str(tmp_path / "absent")})
    assert result.returncode == 1 and "cannot read the API key file" in result.stderr
    assert str(tmp_path / "absent") in result.stderr and "No such file or directory" in result.stderr


# --- constant time ------------------------------------------------------------------------


def test_every_key_is_compared_even_after_a_match(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    compare = auth.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(1)
        return compare(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    keys = ApiKeys(KEYS)
    for presented in (KEY_A, KEY_ENV, WRONG):
        calls.clear()
        keys.matches(presented.encode())
        assert len(calls) == len(KEYS), presented


Timer = Callable[[bytes], object]


def _paired_timings(check: Timer, first: bytes, second: bytes, pairs: int) -> tuple[list[float], list[float]]:
    """Interleaved timings (ns) of ``check`` on two inputs, the order within each pair random."""
    order = random.Random(23)
    a: list[float] = []
    b: list[float] = []
    for _ in range(pairs):
        for which in order.sample((0, 1), 2):
            presented = first if which == 0 else second
            started = time.perf_counter_ns()
            check(presented)
            (a if which == 0 else b).append(time.perf_counter_ns() - started)
    return a, b


def _gap_and_noise(a: list[float], b: list[float]) -> tuple[float, float]:
    """The difference of the medians, and the noise bound it must stay within.

    The bound is 4 standard errors of that difference, each median's standard error taken from
    its sample's spread (1.2533 x sigma / sqrt(n), sigma estimated as 1.4826 x the MAD, robust
    to the outliers a shared machine produces): a difference beyond it is a real one.
    """
    def error(sample: list[float]) -> float:
        middle = statistics.median(sample)
        sigma = 1.4826 * statistics.median(abs(x - middle) for x in sample)
        return 1.2533 * sigma / len(sample) ** 0.5

    return statistics.median(a) - statistics.median(b), 4 * (error(a) ** 2 + error(b) ** 2) ** 0.5


def _indistinguishable(check: Timer, first: bytes, second: bytes, pairs: int) -> tuple[bool, float, str]:
    """Whether ``check`` takes the same time on both inputs up to noise (three tries), the
    last noise bound (ns), and every try's figures."""
    seen = []
    for _ in range(3):
        gap, noise = _gap_and_noise(*_paired_timings(check, first, second, pairs))
        seen.append(f"gap {gap / 1000:+.3f} us, noise bound {noise / 1000:.3f} us")
        if abs(gap) <= noise:
            return True, noise, "; ".join(seen)
    return False, noise, "; ".join(seen)


LONG_KEY = ("K" * (64 << 10)).encode()  # 64 KiB: a comparison that stops early saves ~1 us
RIGHT_PREFIX = LONG_KEY[:-1] + b"x"  # wrong in the last byte only
WRONG_FIRST = b"x" + LONG_KEY[1:]  # wrong in the first byte


def _leaky(presented: bytes) -> bool:
    """What a check without hashing does: memcmp, which stops at the first differing byte."""
    return presented == LONG_KEY


def test_a_leaky_comparison_is_caught_by_the_timing_statistic() -> None:
    """The control: a comparison that stops at the first differing byte is told apart."""
    same, _, detail = _indistinguishable(_leaky, RIGHT_PREFIX, WRONG_FIRST, pairs=200)
    print(f"leaky comparison, 64 KiB key: {detail}")
    assert not same, f"the statistic failed to see a short-circuiting comparison: {detail}"


def test_the_key_check_takes_the_same_time_for_a_right_or_wrong_prefix() -> None:
    keys = ApiKeys([LONG_KEY.decode(), KEY_A, KEY_B])
    same, noise, detail = _indistinguishable(keys.matches, RIGHT_PREFIX, WRONG_FIRST, pairs=200)
    leak, _ = _gap_and_noise(*_paired_timings(_leaky, RIGHT_PREFIX, WRONG_FIRST, 200))
    print(f"ApiKeys.matches, 64 KiB key: {detail}; a short-circuit's gap: {leak / 1000:.3f} us")
    assert same, f"the key check's time depends on how much of the key was right: {detail}"
    # and the test could see it if it did: its noise bound is below what a short-circuit costs
    assert noise < leak, f"noise bound {noise / 1000:.3f} us >= a short-circuit's gap {leak / 1000:.3f} us"


def test_the_server_answers_a_right_or_wrong_prefix_in_the_same_time(
    tiny_bert: Path, tmp_path: Path, running_server: Callable[..., Any]
) -> None:
    """Through HTTP, with a 4,000-character key (a header's practical size).

    This shows the whole request path adds no distinguishable difference; its noise bound (tens
    of microseconds here) is far above what a short-circuiting memcmp of 4,000 bytes would save
    (tens of nanoseconds), so the in-process tests above are the ones that catch a short-circuit.
    """
    key = "k" * 4000
    near, far = key[:-1] + "x", "x" + key[1:]
    (tmp_path / "keys").write_text(key)
    with running_server(tiny_bert, tmp_path, "--api-key-file", str(tmp_path / "keys")) as running, \
            httpx.Client(base_url=running.url, timeout=30) as client:
        assert client.get("/info", headers=_bearer(key)).status_code == 200
        for _ in range(50):  # warm up the connection and the server's code paths
            client.get("/info", headers=_bearer(far))

        def request(presented: bytes) -> object:
            response = client.get("/info", headers={"Authorization": b"Bearer " + presented})
            assert response.status_code == 401
            return response

        same, _, detail = _indistinguishable(request, near.encode(), far.encode(), pairs=300)
    print(f"HTTP 401, 4,000-character key: {detail}")
    assert same, f"the server's answer time depends on how much of the key was right: {detail}"
