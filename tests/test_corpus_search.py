"""Search over an embedded corpus: exact top-k equals brute force, quantised search with rescoring,
the real embed-corpus pipeline through Python and the CLI, and clear errors for bad inputs."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyarrow", reason="search reads Parquet shards: the [corpus] extra")

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from embedrt.corpus.errors import CorpusError  # noqa: E402
from embedrt.corpus.search import (  # noqa: E402
    RunNotFoundError,
    SearchError,
    SearchHit,
    search,
    search_vectors,
)
from embedrt.corpus.writer import FinishedUnit  # noqa: E402
from embedrt.runtime import ArtefactError, ArtefactNotFoundError, Embedder, EmbedrtError  # noqa: E402
from embedrt.runtime.manifest import sha256_file  # noqa: E402
from embedrt.runtime.precision import (  # noqa: E402
    calibrate_int8,
    code_width,
    dequantize_embeddings,
    quantize_embeddings,
)
from typer.testing import CliRunner  # noqa: E402

# --- a run made from given vectors, in embed-corpus's layout (for vector-level tests) ----------


def _vector_run(
    directory: Path, vectors: np.ndarray, precision: str, *, shard_rows: tuple[int, ...] = (300, 450),
    model: Path | None = None, manifest_sha256: str | None = None,
) -> Path:
    """Shards of ``vectors`` (ids ``r<row>``) cut at uneven sizes, and a complete run.json."""
    directory.mkdir(parents=True)
    (directory / "shards").mkdir()
    calibration = calibrate_int8(vectors) if precision == "int8" else None
    codes = quantize_embeddings(vectors, precision, calibration)
    entries, start, index = [], 0, 0
    while start < len(codes):
        part = codes[start : start + shard_rows[index % len(shard_rows)]]
        name = f"part-{index:05d}"
        table = pa.table({
            "id": [f"r{row}" for row in range(start, start + len(part))],
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(part.reshape(-1)), part.shape[1]),
            "tokens": pa.array(np.full(len(part), 7, np.int32)),
            "truncated": pa.array(np.zeros(len(part), bool)),
        })
        shard = directory / "shards" / f"{name}.parquet"
        pq.write_table(table, shard)
        entries.append(FinishedUnit(
            name=name, input=0, index=index, first_row=start + 1, rows_read=len(part), embedded=len(part),
            skipped=0, truncated=0, shard=f"shards/{name}.parquet", bytes=shard.stat().st_size,
            sha256=sha256_file(shard),
        ).to_dict())
        start, index = start + len(part), index + 1
    model = model or directory / "no-model"
    record = {
        "format": "embedrt-corpus-run", "version": 1, "status": "complete",
        "model": {"name": "tiny", "variant": "fp32", "path": str(model), "dim": vectors.shape[1],
                  "manifest_sha256": manifest_sha256 if manifest_sha256 is not None else (
                      sha256_file(model / "manifest.json") if (model / "manifest.json").is_file() else "")},
        "precision": {"name": precision, "width": code_width(precision, vectors.shape[1]),
                      "calibration": calibration.to_dict() if calibration else None},
        "shards": entries,
    }
    (directory / "run.json").write_text(json.dumps(record))
    return directory


def _clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Vectors around 60 centres (so nearest neighbours mean something), not normalised."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((60, dim))
    points = centres[rng.integers(0, 60, n)] + 0.6 * rng.standard_normal((n, dim))
    return (points * rng.uniform(0.5, 2.0, (n, 1))).astype(np.float32)


def _brute_force(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    rows = vectors.astype(np.float64)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    unit = queries.astype(np.float64) / np.linalg.norm(queries, axis=1, keepdims=True)
    scores = unit @ rows.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(scores, order, axis=1)


def _rows(hits: list[SearchHit]) -> list[int]:
    return [int(hit.id[1:]) for hit in hits]


def _recall(results: list[list[SearchHit]], truth: np.ndarray) -> float:
    return float(np.mean([len(set(_rows(hits)) & set(row.tolist())) / truth.shape[1]
                          for hits, row in zip(results, truth, strict=True)]))


# --- exact search -------------------------------------------------------------------------------


@pytest.mark.parametrize("block_rows", [7, None])
def test_float32_top10_equals_brute_force_across_shards_and_blocks(
    tmp_path: Path, block_rows: int | None
) -> None:
    vectors = _clustered(1000, 24)
    queries = _clustered(12, 24, seed=1)
    run = _vector_run(tmp_path / "run", vectors, "float32")
    results = search_vectors(run, queries, k=10, block_rows=block_rows)
    order, scores = _brute_force(vectors, queries, 10)
    for hits, want_rows, want_scores in zip(results, order, scores, strict=True):
        assert _rows(hits) == want_rows.tolist()
        np.testing.assert_allclose([hit.score for hit in hits], want_scores, rtol=0, atol=1e-6)


def test_k_above_the_row_count_returns_every_row_best_first(tmp_path: Path) -> None:
    vectors = _clustered(40, 8)
    run = _vector_run(tmp_path / "run", vectors, "float16", shard_rows=(15,))
    (hits,) = search_vectors(run, vectors[:1], k=100, block_rows=6)
    assert sorted(_rows(hits)) == list(range(40))
    stored = vectors.astype(np.float16).astype(np.float32)
    order, scores = _brute_force(stored, vectors[:1], 40)
    assert _rows(hits) == order[0].tolist()
    np.testing.assert_allclose([hit.score for hit in hits], scores[0], atol=1e-6)
    empty = _vector_run(tmp_path / "empty", np.zeros((0, 8), np.float32), "float32")
    assert search_vectors(empty, vectors[:2], k=3) == [[], []]


# --- the search cache: decoded shards as .npy, keyed by each shard's size and mtime -------------


def _cache_files(run: Path) -> list[Path]:
    return sorted((run / ".search-cache").glob("*.npy"))


def _same_hits(got: list[list[SearchHit]], want: list[list[SearchHit]]) -> None:
    """Same rows in the same order; scores equal to float32 rounding.

    Another ``block_rows`` scores rows in matrices of another shape, and BLAS may sum those in
    another order (on an AMD EPYC the last bits of float32 scores moved), so only the rows are
    compared exactly.
    """
    assert [[hit.id for hit in hits] for hits in got] == [[hit.id for hit in hits] for hits in want]
    for got_hits, want_hits in zip(got, want, strict=True):
        np.testing.assert_allclose(
            [hit.score for hit in got_hits], [hit.score for hit in want_hits], rtol=0, atol=1e-6
        )


@pytest.mark.parametrize("precision", ["float32", "int8", "ubinary"])
def test_the_cache_is_written_once_read_later_and_changes_no_result(tmp_path: Path, precision: str) -> None:
    vectors = _clustered(900, 16)
    queries = _clustered(5, 16, seed=1)
    run = _vector_run(tmp_path / "run", vectors, precision)
    uncached = search_vectors(run, queries, k=10, cache=False)
    assert not (run / ".search-cache").exists()
    assert search_vectors(run, queries, k=10) == uncached
    files = _cache_files(run)
    assert [f.name.split(".")[0] for f in files] == ["part-00000", "part-00001", "part-00002"]
    stamps = [f.stat().st_mtime_ns for f in files]
    _same_hits(search_vectors(run, queries, k=10, block_rows=50), uncached)
    assert [f.stat().st_mtime_ns for f in files] == stamps  # read, not written again
    # Later searches read the cache, not the shard: codes changed there change the answer.
    first = np.load(files[0])
    np.save(files[0], np.zeros_like(first))
    assert search_vectors(run, queries, k=10) != uncached
    assert search_vectors(run, queries, k=10, cache=False) == uncached


def test_a_rewritten_shard_is_decoded_again_and_its_old_cache_removed(tmp_path: Path) -> None:
    vectors = _clustered(900, 16)
    run = _vector_run(tmp_path / "run", vectors, "float32")
    search_vectors(run, vectors[:3], k=5)
    old = _cache_files(run)[0]
    np.save(old, np.zeros((300, 16), np.float32))  # a wrong cache, for the old shard
    shard = run / "shards" / "part-00000.parquet"
    stat = shard.stat()
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # as a rewrite would
    order, _ = _brute_force(vectors, vectors[:3], 5)
    assert [_rows(hits) for hits in search_vectors(run, vectors[:3], k=5)] == order.tolist()
    assert not old.exists() and len(_cache_files(run)) == 3


def test_a_bad_or_unwritable_cache_is_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    vectors = _clustered(900, 16)
    order, _ = _brute_force(vectors, vectors[:3], 5)
    run = _vector_run(tmp_path / "run", vectors, "float32")
    search_vectors(run, vectors[:3], k=5)
    broken, wrong = _cache_files(run)[:2]
    broken.write_bytes(b"not numpy")
    rows = len(np.load(wrong))
    np.save(wrong, np.zeros((rows - 1, 16), np.float32))
    with caplog.at_level(logging.WARNING):
        assert [_rows(hits) for hits in search_vectors(run, vectors[:3], k=5)] == order.tolist()
    assert "is unreadable" in caplog.text and f"expected float32 ({rows}, 16)" in caplog.text
    other = _vector_run(tmp_path / "other", vectors, "float32")
    (other / ".search-cache").write_text("a file where the cache directory would go")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert [_rows(hits) for hits in search_vectors(other, vectors[:3], k=5)] == order.tolist()
    assert "cannot write the search cache" in caplog.text


def test_overwriting_a_run_clears_its_search_cache(tmp_path: Path) -> None:
    from embedrt.corpus.record import clear_run

    run = _vector_run(tmp_path / "run", _clustered(900, 16), "float32")
    search_vectors(run, _clustered(2, 16), k=5)
    assert len(_cache_files(run)) == 3
    clear_run(run)
    assert _cache_files(run) == [] and not (run / "run.json").exists()


# --- int8 / ubinary: compact first pass, then rescoring ------------------------------------------


@pytest.mark.parametrize("precision", ["int8", "ubinary"])
def test_rescoring_improves_recall_and_scores_are_cosines_of_dequantised_vectors(
    tmp_path: Path, precision: str
) -> None:
    vectors = _clustered(3000, 64, seed=2)
    queries = _clustered(60, 64, seed=3)
    run = _vector_run(tmp_path / "run", vectors, precision, shard_rows=(1000, 700))
    truth, _ = _brute_force(vectors, queries, 10)
    plain = search_vectors(run, queries, k=10, rescore=False)
    rescored = search_vectors(run, queries, k=10)
    wider = search_vectors(run, queries, k=10, rescore_multiplier=8)
    assert _recall(plain, truth) < _recall(rescored, truth) < _recall(wider, truth)
    # rescored scores are the float query's cosine with each hit's dequantised vector
    codes = quantize_embeddings(vectors, precision, calibrate_int8(vectors) if precision == "int8" else None)
    restored = dequantize_embeddings(codes, precision, calibrate_int8(vectors), dim=64).astype(np.float64)
    restored /= np.linalg.norm(restored, axis=1, keepdims=True)
    unit = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    for hits, query in zip(wider, unit, strict=True):
        np.testing.assert_allclose([hit.score for hit in hits], restored[_rows(hits)] @ query, atol=1e-6)
    # every row a candidate: the result is the exact top-k over the dequantised vectors
    order, scores = _brute_force(restored, queries, 10)
    everything = search_vectors(run, queries, k=10, rescore_multiplier=300, block_rows=333)
    assert [_rows(hits) for hits in everything] == order.tolist()
    # blocks of any size give the same answer
    _same_hits(search_vectors(run, queries, k=10, block_rows=97), rescored)


@pytest.mark.parametrize("dim", [64, 20])  # whole 8-byte words, and 3 bytes with 4 padding bits
def test_ubinary_first_pass_scores_are_the_cosines_of_the_sign_vectors(tmp_path: Path, dim: int) -> None:
    vectors = _clustered(500, dim, seed=4)
    queries = _clustered(3, dim, seed=5)
    run = _vector_run(tmp_path / "run", vectors, "ubinary", shard_rows=(200,))
    signs = np.where(vectors > 0, 1.0, -1.0)
    want = np.where(queries > 0, 1.0, -1.0) @ signs.T / dim
    for hits, row in zip(search_vectors(run, queries, k=500, rescore=False), want, strict=True):
        assert sorted(_rows(hits)) == list(range(500))
        np.testing.assert_array_equal([hit.score for hit in hits], row[_rows(hits)])


# --- the real pipeline: embed-corpus, then search in Python and on the command line -------------


@pytest.fixture(scope="module")
def corpus_texts(tiny_model_words: list[str]) -> list[str]:
    rng = np.random.default_rng(4)
    words = tiny_model_words
    return [" ".join(rng.choice(words, int(rng.integers(2, 9)))) for _ in range(500)]


def _embed_corpus(tmp_path: Path, texts: list[str], artefact: Path, precision: str) -> Path:
    from embedrt.corpus.job import CorpusOptions, embed_corpus

    source = tmp_path / "corpus.jsonl"
    source.write_text("".join(json.dumps({"id": f"doc{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    out = tmp_path / f"run-{precision}"
    options = CorpusOptions(precision=precision, id_column="id", rows_per_shard=120)
    embed_corpus([source], out, artefact, options)
    return out


def test_search_on_a_real_float32_run_equals_brute_force_in_python_and_cli(
    tmp_path: Path, tiny_bert: Path, corpus_texts: list[str]
) -> None:
    from embedrt.cli.app import app

    run = _embed_corpus(tmp_path, corpus_texts, tiny_bert, "float32")
    embedder = Embedder.load(tiny_bert)
    vectors = embedder.embed(corpus_texts)
    query = corpus_texts[3][::-1] + " " + corpus_texts[7]
    order, scores = _brute_force(vectors, embedder.embed([query]), 10)
    hits = search(run, query, k=10)
    assert [hit.id for hit in hits] == [f"doc{i}" for i in order[0]]
    np.testing.assert_allclose([hit.score for hit in hits], scores[0], atol=1e-6)

    result = CliRunner().invoke(app, ["search", str(run), query, "-k", "10"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines == [{"id": hit.id, "score": hit.score} for hit in hits]


@pytest.mark.parametrize("precision", ["int8", "ubinary"])
def test_search_on_a_real_quantised_run_rescores_the_stored_codes(
    tmp_path: Path, tiny_bert: Path, corpus_texts: list[str], precision: str
) -> None:
    run = _embed_corpus(tmp_path, corpus_texts, tiny_bert, precision)
    record = json.loads((run / "run.json").read_text())
    stored = np.concatenate([
        np.asarray(pq.read_table(run / entry["shard"]).column("embedding").combine_chunks().flatten())
        for entry in record["shards"]
    ]).reshape(len(corpus_texts), -1)
    ids = [ident for entry in record["shards"]
           for ident in pq.read_table(run / entry["shard"]).column("id").to_pylist()]
    embedder = Embedder.load(tiny_bert)
    calibration = None
    if precision == "int8":
        from embedrt.runtime.precision import Int8Calibration

        calibration = Int8Calibration.from_dict(record["precision"]["calibration"])
    restored = dequantize_embeddings(stored, precision, calibration, dim=embedder.dim)
    query = corpus_texts[11]
    order, scores = _brute_force(restored, embedder.embed([query]), 5)
    hits = search(run, query, k=5, rescore_multiplier=len(corpus_texts))  # every row rescored
    assert [hit.id for hit in hits] == [ids[i] for i in order[0]]
    np.testing.assert_allclose([hit.score for hit in hits], scores[0], atol=1e-6)
    assert len(search(run, query, k=5)) == 5


# --- bad inputs -------------------------------------------------------------------------------------


def _fails(error: type[Exception], message: str, call: object) -> EmbedrtError:
    with pytest.raises(error, match=message) as caught:
        call()  # type: ignore[operator]
    assert isinstance(caught.value, EmbedrtError)
    return caught.value


def test_bad_searches_raise_typed_errors_that_say_what_to_do(tmp_path: Path) -> None:
    vectors = _clustered(50, 8)
    run = _vector_run(tmp_path / "run", vectors, "float32", shard_rows=(20,))
    missing = _fails(RunNotFoundError, "no such directory.*embed-corpus",
                     lambda: search_vectors(tmp_path / "x", vectors))
    assert isinstance(missing, FileNotFoundError)
    (tmp_path / "empty").mkdir()
    _fails(RunNotFoundError, "no run.json in it", lambda: search_vectors(tmp_path / "empty", vectors))
    _fails(SearchError, "k must be a whole number of at least 1, got 0",
           lambda: search_vectors(run, vectors, k=0))
    _fails(SearchError, "rescore_multiplier must be .* at least 1",
           lambda: search_vectors(run, vectors, rescore_multiplier=0))
    _fails(SearchError, "the query must be a non-empty text", lambda: search(run, "  "))
    _fails(SearchError, "the query must be a non-empty text", lambda: search(run, ""))
    _fails(SearchError, "query vectors have dimension 5, the run's vectors 8",
           lambda: search_vectors(run, np.ones((1, 5), np.float32)))
    _fails(SearchError, "non-zero", lambda: search_vectors(run, np.zeros((1, 8), np.float32)))
    _fails(SearchError, "2-D float array", lambda: search_vectors(run, vectors[0]))

    other = _vector_run(tmp_path / "other", _clustered(10, 6), "float32", shard_rows=(10,))
    foreign = (other / "shards" / "part-00000.parquet").read_bytes()
    (run / "shards" / "part-00001.parquet").write_bytes(foreign)
    _fails(SearchError, r"part-00001.parquet: embedding column is fixed_size_list<.*>\[6\], but run.json "
           r"says float32 vectors of dimension 8 \(a fixed-size list of 8 float\)",
           lambda: search_vectors(run, vectors[:1]))
    (run / "shards" / "part-00001.parquet").unlink()
    _fails(CorpusError, "part-00001.parquet: a shard run.json lists is missing",
           lambda: search_vectors(run, vectors[:1]))
    (run / "run.json").write_text("{not json")
    _fails(CorpusError, "run.json: not a readable embedrt corpus run record .*run embed-corpus on the "
           "directory again", lambda: search_vectors(run, vectors[:1]))
    (run / "run.json").write_text(json.dumps({"format": "something-else", "version": 1}))
    _fails(CorpusError, "not a readable embedrt corpus run record .*'something-else'",
           lambda: search_vectors(run, vectors[:1]))


def test_the_runs_model_is_checked_and_an_explicit_model_is_trusted(
    tmp_path: Path, tiny_bert: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from embedrt.cli.app import app

    dim = Embedder.load(tiny_bert).dim
    changed = _vector_run(tmp_path / "changed", _clustered(30, dim), "float32", model=tiny_bert,
                          manifest_sha256="0" * 64)
    error = _fails(ArtefactError, "its manifest changed since .*re-run embed-corpus, or pass it as model",
                   lambda: search(changed, "a query"))
    assert not isinstance(error, FileNotFoundError)
    result = CliRunner().invoke(app, ["search", str(changed), "a query"])
    assert result.exit_code == 1
    assert result.stderr.startswith("embedrt: error: ") and "pass it as --model" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    with caplog.at_level(logging.WARNING):
        assert len(search(changed, "a query", k=3, model=tiny_bert)) == 3
    assert "manifest checksum differs" in caplog.text

    gone = _vector_run(tmp_path / "gone", _clustered(30, dim), "float32", model=tmp_path / "moved",
                       manifest_sha256="0" * 64)
    _fails(ArtefactNotFoundError,
           "model artefact .*moved .* is gone; pass the same model's artefact directory as model",
           lambda: search(gone, "a query"))

    result = CliRunner().invoke(app, ["search", str(tmp_path / "nowhere"), "a query"])
    assert result.exit_code == 1 and "no such directory" in result.stderr


def test_without_pyarrow_search_names_the_extra(tmp_path: Path) -> None:
    run = _vector_run(tmp_path / "run", _clustered(10, 4), "float32", shard_rows=(10,))
    script = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "pyarrow" or name.startswith("pyarrow."):
                    raise ImportError("blocked for the test")
        sys.meta_path.insert(0, Block())
        import numpy as np
        from embedrt.runtime.errors import MissingExtraError
        from embedrt.corpus.search import search_vectors
        try:
            search_vectors({str(run)!r}, np.ones((1, 4), np.float32))
        except MissingExtraError as err:
            print(err)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert "searching an embedded corpus needs the [corpus] extra (pyarrow is not installed)" in result.stdout


def test_search_recall_benchmark_runs_and_reports(
    tmp_path: Path, tiny_bert: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json as json_package

    from embedrt.bench.studies import search_recall

    # a small slice of the standard library keeps the test fast; the script reads all of it
    small = search_recall.docstring_sentences(Path(json_package.__file__).parent)
    monkeypatch.setattr(search_recall, "docstring_sentences", lambda: small)
    out = tmp_path / "report"
    argv = ["--out", str(out), "--model", str(tiny_bert), "--corpus-size", "150", "--queries", "8",
            "--multipliers", "2,50", "--timing-rows", "3000", "--repeats", "1"]
    assert search_recall.main(argv) == 0
    results = json.loads((out / "search_recall.json").read_text())
    assert results["corpus"]["size"] == 150 and results["corpus"]["queries"] == 8
    assert results["corpus"]["sources"]["stsb_dev"] == 3000
    for precision in ("int8", "ubinary"):
        row = results["recall"][precision]
        assert all(0 <= row[name] <= 1 for name in ("no_rescore", "rescore_x2", "rescore_x50"))
        assert row["seconds_per_query"] > 0
    assert results["scale"]["rows"] == 3000
    assert all(results["scale"][p]["seconds_per_query"] > 0 for p in ("float32", "int8", "ubinary"))
    assert not (out / "work" / "synthetic-float32").exists()
    report = (out / "search_recall.md").read_text()
    assert "| int8 |" in report and "Exact search at 3,000 synthetic unit vectors" in report
