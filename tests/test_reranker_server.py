# ruff: noqa: F811  (pytest fixtures imported by name are redefined as test parameters)
"""``POST /rerank`` and ``POST /v1/rerank`` through a real ``embedrt serve --reranker`` process.

Scores and order are the offline Reranker's (``CrossEncoder.rank``'s order); bad requests
(no documents, too many, wrong types, a pair over the limit with truncation off) are 422s
whose message names the field and the fix, as on the embedding routes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _reranker_fixtures import reranker_artefact, tiny_cross_encoders  # noqa: F401
from embedrt.runtime import Reranker

httpx = pytest.importorskip("httpx", reason="the server tests need httpx (the [dev] extra)")
pytestmark = pytest.mark.export

QUERY = "a man is playing the guitar"
DOCUMENTS = [
    "the man sat by the river bank",
    "a woman is playing the piano",
    "a man is playing music on a guitar",
    "the quick brown fox jumps over the lazy dog",
    "the man sat by the river bank",
]
LIMITS = ["--max-inputs", "8", "--max-chars", "300"]


@pytest.fixture(scope="module")
def artefact(reranker_artefact: Callable[[str, str], Path]) -> Path:
    return reranker_artefact("bert", "fp32")


@pytest.fixture(scope="module")
def client(
    running_server: Callable[..., Any],
    tiny_bert: Path,
    artefact: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Any]:
    logs = tmp_path_factory.mktemp("rerank-server")
    with running_server(tiny_bert, logs, "--reranker", str(artefact), *LIMITS) as server:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            yield http


def test_tei_rerank_returns_the_offline_ranking(client: Any, artefact: Path) -> None:
    expected = Reranker.load(artefact).rank(QUERY, DOCUMENTS)
    response = client.post("/rerank", json={"query": QUERY, "texts": DOCUMENTS, "return_text": True})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [item["index"] for item in body] == [r.index for r in expected]
    np.testing.assert_allclose([item["score"] for item in body], [r.score for r in expected], atol=1e-6)
    assert [item["text"] for item in body] == [DOCUMENTS[r.index] for r in expected]
    assert int(response.headers["x-embedrt-tokens"]) > len(DOCUMENTS) * 3
    raw = client.post("/rerank", json={"query": QUERY, "texts": DOCUMENTS, "raw_scores": True}).json()
    logits = Reranker.load(artefact).predict([(QUERY, d) for d in DOCUMENTS], activation=False)
    np.testing.assert_allclose(
        [item["score"] for item in raw], [logits[item["index"]] for item in raw], atol=1e-5
    )
    assert "text" not in raw[0]
    # The embedding routes still answer beside it.
    assert client.post("/embed", json={"inputs": ["hello world"]}).status_code == 200


def test_cohere_rerank_shape_top_n_and_documents(client: Any, artefact: Path) -> None:
    expected = Reranker.load(artefact).rank(QUERY, DOCUMENTS)
    documents: list[Any] = [{"text": d} if i % 2 else d for i, d in enumerate(DOCUMENTS)]
    response = client.post(
        "/v1/rerank",
        json={"model": "any", "query": QUERY, "documents": documents, "top_n": 3, "return_documents": True},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert [r["index"] for r in body["results"]] == [r.index for r in expected[:3]]
    np.testing.assert_allclose(
        [r["relevance_score"] for r in body["results"]], [r.score for r in expected[:3]], atol=1e-6
    )
    assert [r["document"]["text"] for r in body["results"]] == [DOCUMENTS[r.index] for r in expected[:3]]
    assert body["usage"]["total_tokens"] > 0 and isinstance(body["model"], str)
    plain = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS}).json()
    assert len(plain["results"]) == len(DOCUMENTS) and "document" not in plain["results"][0]


@pytest.mark.parametrize(
    ("route", "body", "field", "message"),
    [
        ("/rerank", {"query": QUERY, "texts": []}, "texts", "empty list"),
        ("/rerank", {"query": QUERY, "texts": ["a"] * 9}, "texts", "at most 8"),
        ("/rerank", {"query": QUERY, "texts": ["a", 3]}, "texts[1]", "must be a string"),
        ("/rerank", {"texts": ["a"]}, "query", "'query' is required"),
        ("/rerank", {"query": ["q"], "texts": ["a"]}, "query", "must be a string"),
        ("/rerank", {"query": QUERY, "texts": ["a" * 301]}, "texts[0]", "at most 300"),
        ("/rerank", {"query": QUERY, "texts": ["a"], "raw_scores": "yes"}, "raw_scores", "raw_scores"),
        ("/v1/rerank", {"query": QUERY, "documents": []}, "documents", "empty list"),
        ("/v1/rerank", {"query": QUERY}, "documents", "'documents' is required"),
        ("/v1/rerank", {"query": QUERY, "documents": [{"txt": "a"}]}, "documents[0]", "must be a string"),
        ("/v1/rerank", {"query": QUERY, "documents": ["a"], "top_n": 0}, "top_n", "positive integer"),
    ],
)
def test_bad_requests_are_422_naming_the_field(
    client: Any, route: str, body: dict[str, Any], field: str, message: str
) -> None:
    response = client.post(route, json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"] == field and message in error["message"]


def test_a_pair_over_the_limit_with_truncation_off_is_a_422(client: Any) -> None:
    long = " ".join(["the quick brown fox"] * 10)
    response = client.post("/rerank", json={"query": QUERY, "texts": [long], "truncate": False})
    assert response.status_code == 422, response.text
    assert "truncate" in response.json()["error"]["message"]
    assert client.post("/rerank", json={"query": QUERY, "texts": [long]}).status_code == 200


def test_the_cohere_client_reranks_through_v1_rerank(client: Any, artefact: Path) -> None:
    cohere = pytest.importorskip("cohere", reason="the Cohere client is not installed")
    expected = Reranker.load(artefact).rank(QUERY, DOCUMENTS)
    co = cohere.Client(base_url=str(client.base_url).rstrip("/"), api_key="unused")
    response = co.rerank(model="embedrt", query=QUERY, documents=DOCUMENTS, top_n=3)
    assert [r.index for r in response.results] == [r.index for r in expected[:3]]
    np.testing.assert_allclose(
        [r.relevance_score for r in response.results], [r.score for r in expected[:3]], atol=1e-6
    )


@pytest.fixture(scope="module")
def reranker_only(
    running_server: Callable[..., Any], artefact: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """A real ``embedrt serve --reranker DIR`` process with no --model: no embedding model."""
    logs = tmp_path_factory.mktemp("rerank-only-server")
    with running_server(None, logs, "--reranker", str(artefact), *LIMITS) as server:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            yield http


def test_a_reranker_only_server_reranks_as_the_offline_reranker(reranker_only: Any, artefact: Path) -> None:
    reranker = Reranker.load(artefact)
    expected = reranker.rank(QUERY, DOCUMENTS)
    body = reranker_only.post("/rerank", json={"query": QUERY, "texts": DOCUMENTS}).json()
    assert [item["index"] for item in body] == [r.index for r in expected]
    np.testing.assert_allclose([item["score"] for item in body], [r.score for r in expected], atol=1e-6)
    cohere = reranker_only.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS, "top_n": 2})
    assert cohere.status_code == 200, cohere.text
    assert [r["index"] for r in cohere.json()["results"]] == [r.index for r in expected[:2]]
    assert cohere.json()["model"] == reranker.manifest.model_name


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("/v1/embeddings", {"input": ["hello world"]}),
        ("/embed", {"inputs": ["hello world"]}),
        ("/similarity", {"inputs": {"source_sentence": "a", "sentences": ["b"]}}),
        ("/tokenize", {"inputs": ["hello world"]}),
        ("/embed", {"not": "valid"}),  # refused for the missing model, not for the body
    ],
)
def test_a_reranker_only_server_answers_404_naming_model_on_embedding_routes(
    reranker_only: Any, route: str, body: dict[str, Any]
) -> None:
    response = reranker_only.post(route, json=body)
    assert response.status_code == 404, response.text
    message = response.json()["error"]["message"]
    assert "no embedding model" in message and "--model" in message


def test_a_reranker_only_server_reports_what_it_runs(reranker_only: Any, artefact: Path) -> None:
    name = Reranker.load(artefact).manifest.model_name
    assert reranker_only.get("/health").json() == {"status": "ok", "embedding_model": None, "reranker": name}
    info = reranker_only.get("/info").json()
    assert info["manifest"] is None and info["ready"] is True
    assert info["reranker"]["model_name"] == name and info["reranker"]["task"] == "rerank"
    paths = set(reranker_only.get("/openapi.json").json()["paths"])
    assert paths == {"/rerank", "/v1/rerank", "/health", "/info", "/metrics"}


def test_a_server_with_both_lists_both_in_health_info_and_openapi(client: Any, artefact: Path) -> None:
    name = Reranker.load(artefact).manifest.model_name
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["reranker"] == name
    assert isinstance(health["embedding_model"], str)
    info = client.get("/info").json()
    assert info["manifest"]["dim"] > 0 and info["reranker"]["model_name"] == name
    paths = set(client.get("/openapi.json").json()["paths"])
    assert {"/rerank", "/v1/rerank", "/embed", "/v1/embeddings", "/tokenize"} <= paths
