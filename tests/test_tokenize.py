"""``POST /tokenize`` through a real `embedrt serve` process, checked against the runtime.

The ids must be the ones the Embedder feeds its graph (recorded at the session's ``run``),
truncated at the manifest's ``max_seq_length`` as the embedding routes truncate, and counted
in the same ``x-embedrt-*`` headers.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

httpx = pytest.importorskip("httpx", reason="the server tests need httpx (the [dev] extra)")

from embedrt.runtime import Embedder  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402


class _FeedRecorder:
    """Wraps an inference session and keeps each row of ``input_ids`` it is fed, unpadded."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.rows: list[list[int]] = []

    def run(self, outputs: list[str], feeds: dict[str, np.ndarray]) -> Any:
        for ids, mask in zip(feeds["input_ids"], feeds["attention_mask"], strict=True):
            self.rows.append(ids[mask.astype(bool)].tolist())
        return self.session.run(outputs, feeds)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)


def _fed_ids(model: Path, texts: list[str]) -> list[list[int]]:
    """What the Embedder feeds its graph for each text (embedded one at a time)."""
    embedder = Embedder.load(model)
    recorder = _FeedRecorder(embedder._session)  # the one place a test looks inside
    embedder._session = recorder
    for text in texts:
        embedder.embed([text])
    assert len(recorder.rows) == len(texts)
    return recorder.rows


@pytest.fixture(scope="module")
def texts(tiny_model_words: list[str]) -> list[str]:
    words = [w for w in tiny_model_words if w.isalpha()]
    return [words[0], " ".join(words[:6]), " ".join((words * 4)[:40]), "Naïve " + " ".join(words[3:7]), "?!"]


@pytest.fixture(scope="module")
def http(
    tiny_bert: Path, running_server: Callable[..., Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    with running_server(tiny_bert, tmp_path_factory.mktemp("tokenize")) as server, \
            httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def _tokenize(http: Any, body: dict[str, Any]) -> Any:
    response = http.post("/tokenize", json=body)
    assert response.status_code == 200, response.text
    return response


def test_ids_are_what_the_embedder_feeds_the_model(http: Any, tiny_bert: Path, texts: list[str]) -> None:
    response = _tokenize(http, {"inputs": texts})
    lists = response.json()
    assert [[token["id"] for token in tokens] for tokens in lists] == _fed_ids(tiny_bert, texts)
    expected = Embedder.load(tiny_bert).encode(texts)
    assert [len(tokens) for tokens in lists] == expected.token_counts.tolist()
    # the counts a client budgets with: the header, and what /v1/embeddings then reports
    assert response.headers["x-embedrt-tokens"] == str(int(expected.token_counts.sum()))
    assert response.headers["x-embedrt-truncated"] == str(len(expected.truncated)) == "1"
    assert response.headers["x-embedrt-truncated-indices"] == "2"
    usage = http.post("/v1/embeddings", json={"input": texts}).json()["usage"]
    assert usage["prompt_tokens"] == int(response.headers["x-embedrt-tokens"])


def test_the_shape_is_text_embeddings_inference(http: Any, tiny_bert: Path, texts: list[str]) -> None:
    tokens = _tokenize(http, {"inputs": texts[3]}).json()  # a single string: still a list of lists
    assert len(tokens) == 1 and all(set(t) == {"id", "text", "special", "start", "stop"} for t in tokens[0])
    first, *middle, last = tokens[0]
    assert (first["text"], last["text"]) == ("[CLS]", "[SEP]")
    for special in (first, last):
        assert special["special"] is True and special["start"] is None and special["stop"] is None
    vocabulary = Tokenizer.from_file(str(tiny_bert / "tokenizer.json"))
    for token in middle:
        assert token["special"] is False
        assert token["text"] == texts[3][token["start"]:token["stop"]]  # offsets in characters
        piece = vocabulary.id_to_token(token["id"]).removeprefix("##")
        assert piece == token["text"].lower().replace("ï", "i")
    assert middle[0]["start"] == 0 and middle[-1]["stop"] == len(texts[3])


def test_without_special_tokens_the_same_tokens_remain(http: Any, texts: list[str]) -> None:
    full = _tokenize(http, {"inputs": texts}).json()
    response = _tokenize(http, {"inputs": texts, "add_special_tokens": False})
    bare = response.json()
    assert bare == [[token for token in tokens if not token["special"]] for tokens in full]
    assert all(len(b) == len(f) - 2 for b, f in zip(bare, full, strict=True))
    assert response.headers["x-embedrt-tokens"] == str(sum(map(len, bare)))


def test_truncation_is_the_embedders(http: Any, tiny_bert: Path, texts: list[str]) -> None:
    limit = Embedder.load(tiny_bert).max_seq_length
    tokens = _tokenize(http, {"inputs": [texts[2]]}).json()[0]
    assert len(tokens) == limit and tokens[-1]["text"] == "[SEP]"
    refused = http.post("/tokenize", json={"inputs": [texts[0], texts[2]], "truncate": False})
    assert refused.status_code == 422
    error = refused.json()["error"]
    assert error["param"] == "truncate" and error["limit"] == limit
    untruncated = Tokenizer.from_file(str(tiny_bert / "tokenizer.json"))
    untruncated.no_truncation()
    count = len(untruncated.encode(texts[2]).ids)
    assert f"input 1 has {count} tokens; the model accepts at most {limit}" in error["message"]
    assert 'Pass "truncate": true' in error["message"]


@pytest.mark.parametrize(("body", "status", "message"), [
    ({}, 422, "'inputs' is required"),
    ({"inputs": []}, 422, "empty list"),
    ({"inputs": [1, 2]}, 422, "token arrays are not supported"),
    ({"inputs": "a", "add_special_tokens": "yes"}, 422, "'add_special_tokens' must be a boolean"),
    ({"inputs": "a", "prompt_name": "nope"}, 422, "not one of this model's prompts"),
])
def test_bad_requests_are_422_naming_the_field(
    http: Any, body: dict[str, Any], status: int, message: str
) -> None:
    response = http.post("/tokenize", json=body)
    assert response.status_code == status and message in response.json()["error"]["message"]


def test_the_default_prompt_is_tokenised_as_it_is_embedded(
    tiny_bert: Path, running_server: Callable[..., Any], tmp_path: Path, texts: list[str]
) -> None:
    prompted = tmp_path / "prompted"
    shutil.copytree(tiny_bert, prompted)
    manifest = json.loads((prompted / "manifest.json").read_text())
    manifest.update(prompts={"query": "bank: ", "document": ""}, default_prompt_name="query")
    (prompted / "manifest.json").write_text(json.dumps(manifest))
    with running_server(prompted, tmp_path) as server, \
            httpx.Client(base_url=server.url, timeout=30) as client:
        with_prompt = _tokenize(client, {"inputs": texts[:2]}).json()
        without = _tokenize(client, {"inputs": texts[:2], "prompt_name": "document"}).json()
    assert [[t["id"] for t in tokens] for tokens in with_prompt] == _fed_ids(prompted, texts[:2])
    assert [t["text"] for t in with_prompt[0][1:3]] == ["bank", ":"]
    assert with_prompt[0][3]["start"] == len("bank: ")  # offsets index the text the model reads
    assert [len(w) - len(p) for w, p in zip(with_prompt, without, strict=True)] == [2, 2]


def test_the_real_tokenizer(minilm_fp32: Path, running_server: Callable[..., Any], tmp_path: Path) -> None:
    """all-MiniLM-L6-v2's WordPiece: subwords, accents, and the cut at 256 (not tokenizer.json's 128)."""
    texts = ["Tokenization of naïve café résumés, 2026!", "The bank approved the loan quickly. " * 40]
    with running_server(minilm_fp32, tmp_path) as server, \
            httpx.Client(base_url=server.url, timeout=30) as client:
        response = _tokenize(client, {"inputs": texts})
    lists = response.json()
    assert [[t["id"] for t in tokens] for tokens in lists] == _fed_ids(minilm_fp32, texts)
    reference = Tokenizer.from_file(str(minilm_fp32 / "tokenizer.json"))
    reference.no_padding()
    reference.enable_truncation(max_length=256)
    assert [[t["id"] for t in tokens] for tokens in lists] == [e.ids for e in reference.encode_batch(texts)]
    assert len(lists[1]) == 256 and response.headers["x-embedrt-truncated-indices"] == "1"
    words = [t["text"] for t in lists[0] if not t["special"]]
    assert "".join(words) == texts[0].replace(" ", "")
    assert words[:3] == ["Token", "ization", "of"]
    café = next(t for t in lists[0] if t["text"] == "café")
    assert (café["start"], café["stop"]) == (22, 26)  # characters; the UTF-8 bytes would be 23-28
