"""Prompts and output dimensions, compared with sentence-transformers on torch.

A tiny BERT whose config_sentence_transformers.json defines ``query: `` / ``passage: ``
prompts and ``query`` as the default, exported once: the library, the CLI and the server
must prepend exactly what ``SentenceTransformer.encode(prompt_name=..., prompt=...)`` does,
and ``truncate_dim`` / ``dimensions`` must keep the leading dimensions, normalised again.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from embedrt.runtime import Embedder
from embedrt.runtime.errors import ConfigurationError
from embedrt.runtime.manifest import Manifest

PROMPTS = {"query": "query: ", "passage": "passage: "}
TEXTS = ["the bank by the river", "she deposited money", "", "a quick brown fox jumps over the lazy dog " * 3]
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def prompted_source(tiny_sources: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT's folder with prompts and a default prompt name."""
    folder = tmp_path_factory.mktemp("prompted") / "st-bert-prompts"
    shutil.copytree(tiny_sources["bert"], folder)
    config_file = folder / "config_sentence_transformers.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    config.update(prompts=PROMPTS, default_prompt_name="query")
    config_file.write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def prompted(prompted_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from embedrt.export import ExportOptions, export_model

    target = tmp_path_factory.mktemp("prompted-artefact") / "fp32"
    export_model(prompted_source, target, ExportOptions(variant="fp32"))
    return target


@pytest.fixture(scope="module")
def reference(prompted_source: Path) -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(prompted_source), device="cpu")


@pytest.fixture(scope="module")
def embedder(prompted: Path) -> Embedder:
    return Embedder.load(prompted)


def test_manifest_records_the_prompts(prompted: Path) -> None:
    manifest = Manifest.load(prompted)
    assert dict(manifest.prompts) == PROMPTS
    assert manifest.default_prompt_name == "query"


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"prompt_name": "passage"}, {"prompt_name": "query"}, {"prompt": "custom text: "}, {"prompt": ""},
     {"prompt_name": "passage", "prompt": "wins: "}],
    ids=["default", "passage", "query", "custom", "off", "prompt-wins"],
)
def test_prompts_match_sentence_transformers(
    embedder: Embedder, reference: Any, kwargs: dict[str, str]
) -> None:
    expected = reference.encode(TEXTS, convert_to_numpy=True, **kwargs)
    actual = embedder.embed(TEXTS, **kwargs)
    assert np.abs(actual - expected).max() <= TOLERANCE


def test_the_default_prompt_changes_the_vectors(embedder: Embedder) -> None:
    """The test above can fail: with and without the prompt the vectors differ."""
    with_default = embedder.embed(TEXTS)
    without = embedder.embed(TEXTS, prompt="")
    assert np.abs(with_default - without).max() > 1e-3


def test_token_counts_and_truncation_include_the_prompt(embedder: Embedder, reference: Any) -> None:
    result = embedder.encode(TEXTS, prompt_name="passage")
    counts = [len(reference.tokenizer("passage: " + text)["input_ids"]) for text in TEXTS]
    assert result.token_counts.tolist() == [min(c, embedder.max_seq_length) for c in counts]
    assert result.truncated == tuple(i for i, c in enumerate(counts) if c > embedder.max_seq_length)
    assert result.truncated  # the long text is cut


def test_an_unknown_prompt_name_is_refused_naming_the_known_ones(embedder: Embedder) -> None:
    with pytest.raises(ConfigurationError, match="'document'.*'query', 'passage'"):
        embedder.embed(TEXTS, prompt_name="document")


@pytest.mark.parametrize("dims", [1, 8, 31])
def test_truncate_dim_keeps_the_leading_dimensions_normalised(
    prompted: Path, embedder: Embedder, reference: Any, dims: int
) -> None:
    expected = reference.encode(TEXTS, convert_to_numpy=True, truncate_dim=dims)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)  # embedrt normalises again
    on_call = embedder.embed(TEXTS, truncate_dim=dims)
    at_load = Embedder.load(prompted, truncate_dim=dims)
    assert at_load.dim == dims
    for actual in (on_call, at_load.embed(TEXTS)):
        assert actual.shape == (len(TEXTS), dims)
        assert np.abs(actual - expected).max() <= TOLERANCE
        np.testing.assert_allclose(np.linalg.norm(actual, axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize("dims", [0, 33, True, 8.0])
def test_truncate_dim_out_of_range_is_refused(prompted: Path, embedder: Embedder, dims: Any) -> None:
    with pytest.raises(ConfigurationError, match="from 1 to 32"):
        embedder.embed(TEXTS, truncate_dim=dims)
    with pytest.raises(ConfigurationError, match="from 1 to 32"):
        Embedder.load(prompted, truncate_dim=dims)


def test_cli_embed_takes_prompt_name_prompt_and_truncate_dim(prompted: Path, embedder: Embedder) -> None:
    from embedrt.cli import app
    from typer.testing import CliRunner

    runner = CliRunner()
    for options, kwargs in (
        (["--prompt-name", "passage"], {"prompt_name": "passage"}),
        (["--prompt", ""], {"prompt": ""}),
        (["--truncate-dim", "8"], {"truncate_dim": 8}),
    ):
        result = runner.invoke(app, ["embed", *TEXTS, "--model", str(prompted), *options])
        assert result.exit_code == 0, result.output
        rows = np.array([json.loads(line)["embedding"] for line in result.stdout.splitlines()])
        np.testing.assert_allclose(rows, embedder.embed(TEXTS, **kwargs), atol=1e-6)
    result = runner.invoke(app, ["embed", "x", "--model", str(prompted), "--prompt-name", "nope"])
    assert result.exit_code != 0 and "'nope' is not one of this model's prompts" in result.output


def test_cli_info_lists_the_prompts(prompted: Path) -> None:
    from embedrt.cli import app
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["info", str(prompted)])
    assert result.exit_code == 0, result.output
    assert "query: 'query: ', passage: 'passage: ' (default: query)" in result.stdout


@pytest.fixture(scope="module")
def client(
    prompted: Path, running_server: Callable[..., Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    import httpx

    with running_server(prompted, tmp_path_factory.mktemp("prompted-server")) as server, \
            httpx.Client(base_url=server.url, timeout=30) as http:
        yield http


def test_server_routes_apply_prompts_and_dimensions(client: Any, embedder: Embedder) -> None:
    default = client.post("/embed", json={"inputs": TEXTS})
    assert default.status_code == 200
    np.testing.assert_allclose(np.array(default.json()), embedder.embed(TEXTS), atol=1e-6)
    passage = client.post("/embed", json={"inputs": TEXTS, "prompt_name": "passage", "dimensions": 8})
    assert passage.status_code == 200
    np.testing.assert_allclose(
        np.array(passage.json()), embedder.embed(TEXTS, prompt_name="passage", truncate_dim=8), atol=1e-6
    )
    request = {"input": TEXTS, "prompt_name": "passage", "dimensions": 5}
    body = client.post("/v1/embeddings", json=request).json()
    vectors = np.array([item["embedding"] for item in body["data"]])
    expected = embedder.embed(TEXTS, prompt_name="passage", truncate_dim=5)
    np.testing.assert_allclose(vectors, expected, atol=1e-6)
    expected_tokens = int(embedder.encode(TEXTS, prompt_name="passage").token_counts.sum())
    assert body["usage"]["prompt_tokens"] == expected_tokens
    refused = client.post("/v1/embeddings", json={"input": "x", "prompt_name": "nope"})
    assert refused.status_code == 422 and "'query', 'passage'" in refused.json()["error"]["message"]
    schema = client.get("/openapi.json").json()
    body_schema = schema["paths"]["/v1/embeddings"]["post"]["requestBody"]["content"]["application/json"]
    assert body_schema["schema"]["properties"]["prompt_name"]["enum"] == ["query", "passage", None]
    assert body_schema["schema"]["properties"]["dimensions"]["maximum"] == 32
