# ruff: noqa: F811  (pytest fixtures imported by name are redefined as test parameters)
"""``embedrt rerank`` and ``embedrt search --rerank`` through the CLI, on a tiny cross-encoder.

``rerank`` prints what ``Reranker.rank`` returns (JSON lines or a table; a file or stdin);
``search --rerank`` reorders an ``embed-corpus`` run's candidates by the reranker's scores of
their texts, read back from the run's input file.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from _reranker_fixtures import reranker_artefact, tiny_cross_encoders  # noqa: F401
from embedrt.cli.app import app
from embedrt.runtime import Embedder, Reranker
from typer.testing import CliRunner

pytestmark = pytest.mark.export

QUERY = "a man is playing the guitar"
DOCUMENTS = [
    "the man sat by the river bank",
    "a woman is playing the piano",
    "a man is playing music on a guitar",
    "the quick brown fox jumps over the lazy dog",
]


def test_rerank_prints_the_ranking_as_json_lines_and_as_a_table(
    tmp_path: Path, reranker_artefact: Callable[[str, str], Path]
) -> None:
    artefact = reranker_artefact("bert", "fp32")
    docs = tmp_path / "docs.txt"
    docs.write_text("\n".join(DOCUMENTS) + "\n")
    expected = Reranker.load(artefact).rank(QUERY, DOCUMENTS, return_documents=True)
    result = CliRunner().invoke(app, ["rerank", QUERY, str(docs), "--reranker", str(artefact)])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["index"] for line in lines] == [r.index for r in expected]
    assert [line["text"] for line in lines] == [DOCUMENTS[r.index] for r in expected]
    np.testing.assert_allclose([line["score"] for line in lines], [r.score for r in expected], atol=1e-6)

    piped = CliRunner().invoke(
        app, ["rerank", QUERY, "-", "-r", str(artefact), "-k", "2", "--table"], input="\n".join(DOCUMENTS)
    )
    assert piped.exit_code == 0, piped.output
    rows = piped.stdout.splitlines()
    assert rows[0].split() == ["rank", "index", "score", "text"] and len(rows) == 3
    assert rows[1].split()[:2] == ["1", str(expected[0].index)]
    assert rows[1].endswith(DOCUMENTS[expected[0].index])


def test_rerank_refuses_an_empty_file_and_a_missing_artefact(
    tmp_path: Path, reranker_artefact: Callable[[str, str], Path]
) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    result = CliRunner().invoke(
        app, ["rerank", QUERY, str(empty), "-r", str(reranker_artefact("bert", "fp32"))]
    )
    assert result.exit_code == 1
    assert "no documents" in result.stderr
    docs = tmp_path / "docs.txt"
    docs.write_text("one document\n")
    missing = CliRunner().invoke(app, ["rerank", QUERY, str(docs), "-r", str(tmp_path / "nope")])
    assert missing.exit_code == 1 and "no such artefact directory" in missing.stderr


def test_search_rerank_reorders_the_candidates_by_the_cross_encoder(
    tmp_path: Path,
    tiny_bert: Path,
    reranker_artefact: Callable[[str, str], Path],
    tiny_model_words: list[str],
) -> None:
    pytest.importorskip("pyarrow", reason="search reads Parquet shards: the [corpus] extra")
    from embedrt.corpus.job import CorpusOptions, embed_corpus
    from embedrt.corpus.search import search

    rng = np.random.default_rng(5)
    texts = [" ".join(rng.choice(tiny_model_words, int(rng.integers(2, 9)))) for _ in range(200)]
    source = tmp_path / "corpus.jsonl"
    source.write_text("".join(json.dumps({"id": f"doc{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    run = tmp_path / "run"
    embed_corpus([source], run, tiny_bert, CorpusOptions(id_column="id", rows_per_shard=64))
    artefact = reranker_artefact("bert", "fp32")

    result = CliRunner().invoke(
        app, ["search", str(run), QUERY, "-k", "5", "--rerank", str(artefact), "--candidates", "30"]
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    candidates = search(run, QUERY, k=30, embedder=Embedder.load(tiny_bert))
    by_id = {hit.id: hit.score for hit in candidates}
    scores = Reranker.load(artefact).predict([(QUERY, texts[int(hit.id[3:])]) for hit in candidates])
    best = [candidates[i].id for i in np.argsort(-scores, kind="stable")[:5]]
    assert [line["id"] for line in lines] == best
    assert all(line["text"] == texts[int(line["id"][3:])] for line in lines)
    assert all(abs(line["cosine"] - by_id[line["id"]]) < 1e-6 for line in lines)
    assert [line["score"] for line in lines] == sorted((line["score"] for line in lines), reverse=True)


def test_the_rerank_benchmark_runs_and_writes_its_report(
    tmp_path: Path, tiny_cross_encoders: dict[str, Path], reranker_artefact: Callable[[str, str], Path]
) -> None:
    from embedrt.bench.rerank import main

    out = tmp_path / "rerank"
    main(
        [
            "--model",
            str(tiny_cross_encoders["bert"]),
            "--artefact",
            f"fp32={reranker_artefact('bert', 'fp32')}",
            "--artefact",
            f"int8={reranker_artefact('bert', 'int8')}",
            "--queries",
            "4",
            "--threads",
            "1",
            "--rounds",
            "1",
            "--out",
            str(out),
        ]
    )
    results = json.loads((out / "rerank.json").read_text())
    assert results["data"]["pairs"] == 4 * 20 and results["data"]["queries"] == 4
    assert results["fidelity_to_torch"]["embedrt-fp32"]["max_abs_diff"] <= 1e-4
    assert results["fidelity_to_torch"]["embedrt-fp32"]["identical_rankings"] == 1.0
    assert results["invariance"]["int8"] >= 0.99999
    assert set(results["pairs_per_second_batch32"]) >= {"torch", "embedrt-fp32", "embedrt-int8"}
    assert "--queries 4" in results["context"]["command"]
    assert "| embedrt-int8 |" in (out / "rerank.md").read_text()


def test_embedrt_bench_reranker_measures_the_artefacts_against_torch(
    tmp_path: Path, tiny_cross_encoders: dict[str, Path], reranker_artefact: Callable[[str, str], Path]
) -> None:
    fp32 = reranker_artefact("bert", "fp32")
    out = tmp_path / "bench"
    args = ["bench", "--reranker", str(tiny_cross_encoders["bert"]), "-m", str(fp32), "--quick",
            "--threads", "1", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    results = json.loads((out / "rerank.json").read_text())
    assert results["data"]["queries"] == 60  # --quick
    assert results["fidelity_to_torch"][f"embedrt-{fp32.name}"]["max_abs_diff"] <= 1e-4
    assert results["fidelity_to_torch"][f"embedrt-{fp32.name}"]["identical_rankings"] == 1.0


def test_embedrt_bench_reranker_needs_artefacts(tmp_path: Path, tiny_cross_encoders: dict[str, Path]) -> None:
    result = CliRunner().invoke(app, ["bench", "--reranker", str(tiny_cross_encoders["bert"]), "--out",
                                      str(tmp_path)])
    assert result.exit_code == 2 and "--model" in result.output


def test_embedrt_export_reranker_writes_an_artefact_that_scores_as_torch(
    tmp_path: Path, tiny_cross_encoders: dict[str, Path]
) -> None:
    from sentence_transformers import CrossEncoder

    source, out = tiny_cross_encoders["bert"], tmp_path / "reranker"
    args = ["export", str(source), "--reranker", "--variant", "fp32", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"wrote {out} (reranker, fp32)" in result.output
    assert "parity vs CrossEncoder.predict" in result.output
    pairs = [("a cat", "the cat sat"), ("a cat", "the road is long"), ("a dog", "a dog and a cat")]
    expected = CrossEncoder(str(source), device="cpu").predict(pairs)
    assert np.allclose(Reranker.load(out).predict(pairs), expected, atol=1e-4)


def test_embedrt_export_reranker_needs_a_source(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["export", "--reranker", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "SOURCE" in result.output
