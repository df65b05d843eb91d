"""The corpus job (embedrt embed-corpus): formats, ids, bad rows, precision, refusal, resume.

Real files, the real tiny model on onnxruntime, real Parquet; the resume test kills a real
subprocess with SIGKILL (test_corpus_resume.py).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow", reason="the corpus job writes Parquet: the [corpus] extra")
pq = pytest.importorskip("pyarrow.parquet", reason="the corpus job writes Parquet: the [corpus] extra")

from _helpers import make_texts, output_bytes  # noqa: E402
from embedrt.cli import app  # noqa: E402
from embedrt.corpus import (  # noqa: E402
    BadRowError,
    CorpusError,
    CorpusInputError,
    CorpusOptions,
    RunMismatchError,
    embed_corpus,
)
from embedrt.corpus.record import load_record, locked  # noqa: E402
from embedrt.runtime import Embedder  # noqa: E402
from embedrt.runtime.precision import Int8Calibration, calibrate_int8, quantize_embeddings  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

SMALL = {"rows_per_shard": 10, "chunk_rows": 4}


def write_inputs(directory: Path, texts: list[str], ids: list[str] | None = None) -> dict[str, Path]:
    """The same rows as .txt, .jsonl, .csv and .parquet files."""
    directory.mkdir(parents=True, exist_ok=True)
    ids = ids or [f"doc-{i}" for i in range(len(texts))]
    paths = {fmt: directory / f"corpus.{fmt}" for fmt in ("txt", "jsonl", "csv", "parquet")}
    paths["txt"].write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    rows = zip(ids, texts, strict=True)
    lines = "".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in rows)
    paths["jsonl"].write_text(lines, encoding="utf-8")
    with paths["csv"].open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text"])
        writer.writerows(zip(ids, texts, strict=True))
    pq.write_table(pa.table({"id": ids, "text": texts}), paths["parquet"], row_group_size=7)
    return paths


def shards(out: Path) -> pa.Table:
    """Every shard's rows, in run order (shard names sort in input order)."""
    files = sorted((out / "shards").glob("*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files])


def vectors(table: pa.Table) -> np.ndarray:
    column = table.column("embedding").combine_chunks()
    width = column.type.list_size
    return column.values.to_numpy(zero_copy_only=False).reshape(-1, width)


@pytest.fixture(scope="module")
def texts(tiny_model_words: list[str]) -> list[str]:
    return make_texts(tiny_model_words, 57)


@pytest.fixture(scope="module")
def reference(tiny_bert: Path, texts: list[str]):
    return Embedder.load(tiny_bert).encode(texts)


@pytest.mark.parametrize("fmt", ["txt", "jsonl", "csv", "parquet"])
def test_every_format_embeds_every_row_like_the_embedder(fmt, tiny_bert, texts, reference, tmp_path) -> None:
    path = write_inputs(tmp_path / "in", texts)[fmt]
    result = embed_corpus([path], tmp_path / "out", tiny_bert, CorpusOptions(**SMALL))
    assert (result.status, result.read, result.embedded, result.skipped) == ("complete", 57, 57, 0)
    table = shards(tmp_path / "out")
    assert table.column("id").to_pylist() == [f"corpus.{fmt}:{row}" for row in range(1, 58)]
    np.testing.assert_allclose(vectors(table), reference.vectors, atol=1e-6)
    assert table.column("tokens").to_pylist() == reference.token_counts.tolist()
    truncated = table.column("truncated").to_pylist()
    assert [i for i, t in enumerate(truncated) if t] == list(reference.truncated)
    assert result.truncated == len(reference.truncated) > 0
    assert sorted(p.name for p in (tmp_path / "out" / "shards").iterdir()) == [
        f"part-00000-{i:06d}.parquet" for i in range(6)
    ]
    record = load_record(tmp_path / "out")
    assert record["counts"] == {"rows": 57, "read": 57, "embedded": 57, "skipped": 0,
                                "truncated": result.truncated, "shards": 6}
    assert [s["rows_read"] for s in record["shards"]] == [10, 10, 10, 10, 10, 7]
    assert not (tmp_path / "out" / ".work").exists()


def test_formats_give_identical_vectors_and_schema(tiny_bert, texts, tmp_path) -> None:
    paths = write_inputs(tmp_path / "in", texts)
    tables = []
    for fmt, path in paths.items():
        embed_corpus([path], tmp_path / fmt, tiny_bert, CorpusOptions(**SMALL))
        tables.append(shards(tmp_path / fmt))
    for table in tables[1:]:
        assert np.array_equal(vectors(table), vectors(tables[0]))  # same chunks, same bits
        assert table.schema == tables[0].schema
    schema = tables[0].schema
    assert str(schema.field("embedding").type) == "fixed_size_list<element: float>[32]"
    assert (schema.field("id").type, schema.field("tokens").type, schema.field("truncated").type) == (
        pa.string(), pa.int32(), pa.bool_())


def test_directories_and_globs_and_labels(tiny_bert, texts, tmp_path) -> None:
    root = tmp_path / "in"
    write_inputs(root, texts[:5])
    (root / "sub").mkdir()
    (root / "sub" / "more.txt").write_text("hello world\nthe cat\n")
    (root / "notes.md").write_text("not an input")
    result = embed_corpus([root], tmp_path / "out", tiny_bert, CorpusOptions(**SMALL))
    labels = [i["label"] for i in load_record(tmp_path / "out")["inputs"]]
    assert labels == ["corpus.csv", "corpus.jsonl", "corpus.parquet", "corpus.txt", "sub/more.txt"]
    assert result.read == 4 * 5 + 2
    assert shards(tmp_path / "out").column("id").to_pylist()[-2:] == ["sub/more.txt:1", "sub/more.txt:2"]
    embed_corpus([str(root / "*.jsonl")], tmp_path / "glob", tiny_bert, CorpusOptions(**SMALL))
    assert [i["label"] for i in load_record(tmp_path / "glob")["inputs"]] == ["corpus.jsonl"]
    with pytest.raises(CorpusInputError, match="matches no file"):
        embed_corpus([str(root / "*.tsv")], tmp_path / "none", tiny_bert)
    with pytest.raises(CorpusInputError, match="unknown input format '.md'"):
        embed_corpus([root / "notes.md"], tmp_path / "none", tiny_bert)
    with pytest.raises(CorpusInputError, match="no such file"):
        embed_corpus([root / "missing.jsonl"], tmp_path / "none", tiny_bert)


def test_ids_are_stable_across_runs_and_working_directories(tiny_bert, texts, tmp_path, monkeypatch) -> None:
    paths = write_inputs(tmp_path / "in", texts)
    monkeypatch.chdir(tmp_path / "in")
    embed_corpus(["corpus.jsonl"], tmp_path / "one", tiny_bert, CorpusOptions(**SMALL))
    monkeypatch.chdir(tmp_path)
    embed_corpus([paths["jsonl"]], tmp_path / "two", tiny_bert, CorpusOptions(**SMALL))
    assert output_bytes(tmp_path / "one")["shards/part-00000-000000.parquet"] == output_bytes(
        tmp_path / "two")["shards/part-00000-000000.parquet"]
    ids = shards(tmp_path / "one").column("id").to_pylist()
    assert ids == shards(tmp_path / "two").column("id").to_pylist()
    # an id column: its values, integers as text
    numbered = tmp_path / "numbered.jsonl"
    numbered.write_text("".join(
        json.dumps({"key": 100 + i, "text": t}) + "\n" for i, t in enumerate(texts[:3])
    ))
    embed_corpus([numbered], tmp_path / "keyed", tiny_bert, CorpusOptions(id_column="key", **SMALL))
    assert shards(tmp_path / "keyed").column("id").to_pylist() == ["100", "101", "102"]


def _bad_inputs(directory: Path) -> list[Path]:
    """One file per format, with every kind of bad row, and the duplicates across files."""
    directory.mkdir()
    jsonl = directory / "a.jsonl"
    jsonl.write_bytes(b"\n".join([
        b'{"id": "x1", "text": "the cat"}',
        b'{"id": "x2"}',
        b'{"id": "x3", "text": null}',
        b'{"id": "x4", "text": 7}',
        b'{"id": "x5", "text": "caf\xe9"}',
        b'{"id": "x6", "text": "ok",',
        b"[1, 2]",
        b"",
        b'{"id": "x1", "text": "a dog"}',
        b'{"id": "x10", "text": "the dog"}',
        b'{"text": "no id"}',
        b'{"id": 12, "text": "a tree"}',
    ]) + b"\n")
    csv_file = directory / "b.csv"
    csv_file.write_bytes(b"id,text\n" + b"\n".join([
        b'c1,"a man, a piano"',
        b"c2,the,extra",
        b"c3,",
        b"c4,caf\xe9",
        b'c5,"bad"quote',
        b'x10,"duplicate of a.jsonl\'s x10"',
        b'c7,"two\nlines"',
    ]) + b"\n")
    parquet = directory / "c.parquet"
    pq.write_table(pa.table({
        "id": ["p1", None, "p3", "c1"],
        "text": pa.array([b"the river", b"x", b"\xff\xfe", b"the bank"], pa.binary()),
    }), parquet)
    return [jsonl, csv_file, parquet]


EXPECTED_SKIPS = [
    ("a.jsonl", 2, "missing text (no 'text' value)"),
    ("a.jsonl", 3, "missing text (no 'text' value)"),
    ("a.jsonl", 4, "text 'text' is a number, not a string"),
    ("a.jsonl", 5, "invalid UTF-8 at byte 26 of the line"),
    ("a.jsonl", 6, "not valid JSON"),
    ("a.jsonl", 7, "the line is a JSON list, not an object"),
    ("a.jsonl", 8, "empty line: no JSON object"),
    ("a.jsonl", 9, "duplicate id 'x1' (first at a.jsonl line 1)"),
    ("a.jsonl", 11, "missing id (no 'id' value)"),
    ("b.csv", 2, "the record has 3 fields; the header has 2"),
    ("b.csv", 3, "missing text (empty 'text' field)"),
    ("b.csv", 4, "text 'text' is not valid UTF-8"),
    ("b.csv", 5, "unparsable CSV"),
    ("b.csv", 6, "duplicate id 'x10' (first at a.jsonl line 10)"),
    ("c.parquet", 2, "missing id (null 'id')"),
    ("c.parquet", 3, "text 'text' is not valid UTF-8"),
    ("c.parquet", 4, "duplicate id 'c1' (first at b.csv record 1 (line 2))"),
]


def test_bad_rows_of_every_kind_are_skipped_listed_and_counted(tiny_bert, tmp_path) -> None:
    inputs = _bad_inputs(tmp_path / "in")
    options = CorpusOptions(id_column="id", on_bad_row="skip", rows_per_shard=4, chunk_rows=3)
    result = embed_corpus(inputs, tmp_path / "out", tiny_bert, options)
    skipped = [json.loads(line) for line in (tmp_path / "out" / "skipped.jsonl").read_text().splitlines()]
    assert [(s["input"], s["row"]) for s in skipped] == [(f, r) for f, r, _ in EXPECTED_SKIPS]
    for entry, (_, _, reason) in zip(skipped, EXPECTED_SKIPS, strict=True):
        assert entry["reason"].startswith(reason), entry
    assert skipped[0].get("id") == "x2" and skipped[9]["line"] == 3  # csv: record 2 starts on line 3
    ids = shards(tmp_path / "out").column("id").to_pylist()
    assert ids == ["x1", "x10", "12", "c1", "c7", "p1"]
    assert (result.read, result.embedded, result.skipped) == (12 + 7 + 4, 6, 17)
    counts = load_record(tmp_path / "out")["counts"]
    assert counts["read"] == counts["embedded"] + counts["skipped"] == counts["rows"] == 23
    texts = ["the cat", "the dog", "a tree", "a man, a piano", "two\nlines", "the river"]
    expected = Embedder.load(tiny_bert).embed(texts)
    np.testing.assert_allclose(vectors(shards(tmp_path / "out")), expected, atol=1e-6)


@pytest.mark.parametrize(("name", "content", "where", "reason"), [
    ("a.jsonl", b'{"text": "ok"}\n{"text": null}\n', "a.jsonl line 2", "missing text"),
    ("a.jsonl", b'{"text": "ok"}\n{"text": ["x"]}\n', "a.jsonl line 2", "is a list, not a string"),
    ("a.jsonl", b'{"text": "ok"}\n{"text": "\xc3("}\n', "a.jsonl line 2", "invalid UTF-8 at byte 11"),
    ("a.jsonl", b'{"text": "ok"}\n{"text": "ok"\n', "a.jsonl line 2", "not valid JSON"),
    ("a.txt", b"ok\n\xffbad\n", "a.txt line 2", "invalid UTF-8 at byte 1"),
    ("a.txt", b"ok\n\nok\n", "a.txt line 2", "empty line"),
    ("a.csv", b'text\nok\n"x"y\n', "a.csv record 2 (line 3)", "unparsable CSV"),
    ("a.csv", b"text\nok\n\n", "a.csv record 2 (line 3)", "the record has 0 fields"),
])
def test_a_bad_row_fails_the_run_naming_file_row_and_reason(name, content, where, reason, tiny_bert,
                                                             tmp_path):
    source = tmp_path / name
    source.write_bytes(content)
    options = CorpusOptions(rows_per_shard=1, chunk_rows=1)
    with pytest.raises(BadRowError) as caught:
        embed_corpus([source], tmp_path / "out", tiny_bert, options)
    message = str(caught.value)
    assert message.startswith(f"{where}: ") and reason in message and "on_bad_row='skip'" in message
    record = load_record(tmp_path / "out")  # the unit before the bad row is written and recorded
    assert (record["status"], record["counts"]["shards"], record["counts"]["embedded"]) == ("running", 1, 1)
    skipping = CorpusOptions(on_bad_row="skip", rows_per_shard=1, chunk_rows=1)
    result = embed_corpus([source], tmp_path / "out", tiny_bert, skipping)
    assert (result.resumed, result.skipped, result.read) == (1, 1, result.embedded + 1)


def test_duplicate_ids_within_one_file_fail_by_default(tiny_bert, tmp_path) -> None:
    source = tmp_path / "d.jsonl"
    source.write_text('{"id": "a", "text": "x"}\n{"id": "b", "text": "y"}\n{"id": "a", "text": "z"}\n')
    with pytest.raises(BadRowError, match=r"d.jsonl line 3: duplicate id 'a' \(first at d.jsonl line 1\)"):
        embed_corpus([source], tmp_path / "out", tiny_bert, CorpusOptions(id_column="id"))


def test_missing_columns_are_input_errors(tiny_bert, texts, tmp_path) -> None:
    paths = write_inputs(tmp_path / "in", texts[:3])
    for fmt in ("csv", "parquet"):
        with pytest.raises(CorpusInputError, match=f"corpus.{fmt}: no column 'body'.*text_column"):
            embed_corpus([paths[fmt]], tmp_path / fmt, tiny_bert, CorpusOptions(text_column="body"))
    with pytest.raises(CorpusInputError, match="a .txt input has no columns"):
        embed_corpus([paths["txt"]], tmp_path / "txt", tiny_bert, CorpusOptions(id_column="id"))


@pytest.mark.parametrize("precision", ["float16", "int8", "ubinary"])
def test_precisions_store_the_quantised_codes(precision, tiny_bert, texts, reference, tmp_path) -> None:
    path = write_inputs(tmp_path / "in", texts)["jsonl"]
    options = CorpusOptions(precision=precision, calibration_rows=20, **SMALL)
    embed_corpus([path], tmp_path / "out", tiny_bert, options)
    record = load_record(tmp_path / "out")
    calibration = None
    if precision == "int8":
        calibration = Int8Calibration.from_dict(record["precision"]["calibration"])
        assert record["precision"]["calibration_rows"] == 20
        expected = calibrate_int8(Embedder.load(tiny_bert).embed(texts[:20]))
        np.testing.assert_allclose(calibration.ranges(), expected.ranges(), atol=1e-6)
    else:
        assert record["precision"]["calibration"] is None
    stored = vectors(shards(tmp_path / "out"))
    codes = quantize_embeddings(reference.vectors, precision, calibration)
    assert stored.dtype == codes.dtype and stored.shape == codes.shape == (57, record["precision"]["width"])
    mismatched = np.abs(stored.astype(np.float64) - codes.astype(np.float64)).max()
    # int8: a value on a bucket's edge may move by one code between batchings
    assert mismatched <= (1 if precision == "int8" else 0.001)
    assert record["schema"]["embedding"] == f"fixed_size_list<{stored.dtype.name}>[{stored.shape[1]}]"


def test_a_changed_model_input_or_setting_is_refused_unless_overwrite(
    tiny_bert, tiny_distilbert, texts, tmp_path
) -> None:
    path = write_inputs(tmp_path / "in", texts)["jsonl"]
    out = tmp_path / "out"
    embed_corpus([path], out, tiny_bert, CorpusOptions(**SMALL))
    with pytest.raises(RunMismatchError, match="precision was 'float32', now 'int8'.*overwrite=True"):
        embed_corpus([path], out, tiny_bert, CorpusOptions(precision="int8", **SMALL))
    with pytest.raises(RunMismatchError, match="rows_per_shard was 10, now 11"):
        embed_corpus([path], out, tiny_bert, CorpusOptions(rows_per_shard=11, chunk_rows=4))
    with pytest.raises(RunMismatchError, match="model was st-bert fp32 .* now st-distilbert"):
        embed_corpus([path], out, tiny_distilbert, CorpusOptions(**SMALL))
    path.write_text(path.read_text() + json.dumps({"text": "one more"}) + "\n")
    with pytest.raises(RunMismatchError, match="input corpus.jsonl changed"):
        embed_corpus([path], out, tiny_bert, CorpusOptions(**SMALL))
    other = tmp_path / "in" / "corpus.txt"
    with pytest.raises(RunMismatchError, match="corpus.jsonl is no longer given.*input corpus.txt is new"):
        embed_corpus([other], out, tiny_bert, CorpusOptions(**SMALL))
    result = embed_corpus([path], out, tiny_bert, CorpusOptions(precision="int8", overwrite=True, **SMALL))
    assert (result.status, result.read, result.resumed) == ("complete", 58, 0)
    assert load_record(out)["precision"]["name"] == "int8"
    assert vectors(shards(out)).dtype == np.int8


def test_worker_processes_write_the_same_bytes(tiny_bert, texts, tmp_path) -> None:
    path = write_inputs(tmp_path / "in", texts)["jsonl"]
    for processes in (1, 2):
        options = CorpusOptions(precision="int8", processes=processes, threads=2, **SMALL)
        embed_corpus([path], tmp_path / f"p{processes}", tiny_bert, options)
    assert output_bytes(tmp_path / "p2") == output_bytes(tmp_path / "p1")
    sessions = load_record(tmp_path / "p2")["timings"]["sessions"]
    assert [s["engine_options"] for s in sessions] == [{"processes": 2}]


def test_a_third_run_on_a_finished_run_does_nothing(tiny_bert, texts, tmp_path) -> None:
    path = write_inputs(tmp_path / "in", texts)["jsonl"]
    out = tmp_path / "out"
    embed_corpus([path], out, tiny_bert, CorpusOptions(**SMALL))
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file()}
    for _ in range(2):
        result = embed_corpus([path], out, tiny_bert, CorpusOptions(on_bad_row="skip", **SMALL))
        assert (result.status, result.rows, result.resumed, result.read) == ("already complete", 0, 6, 57)
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file()} == before


def test_temporary_files_of_a_killed_session_are_removed_on_resume(tiny_bert, texts, tmp_path) -> None:
    """A kill between writing run.json's temporary file and renaming it leaves that file."""
    path = write_inputs(tmp_path / "in", texts)["jsonl"]
    out = tmp_path / "out"
    embed_corpus([path], out, tiny_bert, CorpusOptions(**SMALL))
    finished = output_bytes(out)
    leftovers = [out / ".run.json.4242.tmp", out / "shards" / ".part-00000.parquet.4242.tmp"]
    for leftover in leftovers:
        leftover.write_text('{"format": "embedrt-corpus-run", "status": "running"')
    result = embed_corpus([path], out, tiny_bert, CorpusOptions(**SMALL))
    assert result.status == "already complete"
    assert not any(leftover.exists() for leftover in leftovers)
    assert output_bytes(out) == finished


def test_an_output_directory_that_is_not_a_run_or_is_busy_is_refused(tiny_bert, texts, tmp_path) -> None:
    path = write_inputs(tmp_path / "in", texts[:3])["jsonl"]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(CorpusError, match="not empty .*thesis.tex.* not an embedrt corpus run"):
        embed_corpus([path], foreign, tiny_bert)
    out = tmp_path / "out"
    with locked(out), pytest.raises(CorpusError, match="being written by another"):
        embed_corpus([path], out, tiny_bert)
    with pytest.raises(CorpusError, match="chunk_rows must be a positive integer, got 0"):
        embed_corpus([path], out, tiny_bert, CorpusOptions(chunk_rows=0))


def test_without_pyarrow_the_error_names_the_extra(tiny_bert, tmp_path) -> None:
    source = tmp_path / "a.txt"
    source.write_text("the cat\n")
    code = (
        "import sys; sys.modules['pyarrow'] = None\n"
        "from embedrt.corpus import embed_corpus\n"
        "from embedrt.runtime.errors import MissingExtraError\n"
        f"try:\n    embed_corpus([{str(source)!r}], {str(tmp_path / 'out')!r}, {str(tiny_bert)!r})\n"
        "except MissingExtraError as err:\n    print(err)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "needs the [corpus] extra (pyarrow is not installed)" in done.stdout, done.stderr
    assert not (tmp_path / "out").exists()  # refused before touching the output directory


def test_cli_summary_errors_and_no_op(tiny_bert, texts, tmp_path) -> None:
    path = write_inputs(tmp_path / "in", texts)["csv"]
    runner = CliRunner()
    args = ["embed-corpus", str(path), "--out", str(tmp_path / "out"), "--model", str(tiny_bert),
            "--rows-per-shard", "10", "--chunk-rows", "4"]
    done = runner.invoke(app, args)
    assert done.exit_code == 0, done.output
    assert done.stdout.startswith("57 rows read: 57 embedded, 0 skipped, ") and done.stdout.count("\n") == 1
    assert "6 shards in" in done.stdout and "rows/s" in done.stdout
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and again.stdout.startswith("nothing to do: ")
    changed = runner.invoke(app, [*args[:-4], "--rows-per-shard", "11", "--chunk-rows", "4"])
    assert changed.exit_code == 1
    assert changed.stderr.strip().splitlines() == [
        f"embedrt: error: {tmp_path / 'out'} holds a run made differently: rows_per_shard was 10, now 11. "
        "Use a new output directory, or pass --overwrite to delete that run and start again"
    ]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": 1}\n')
    failed = runner.invoke(app, ["embed-corpus", str(bad), "--out", str(tmp_path / "bad"), "-m",
                                 str(tiny_bert)])
    assert failed.exit_code == 1 and failed.stderr.strip().splitlines() == [
        "embedrt: error: bad.jsonl line 1: text 'text' is a number, not a string. Fix the row, or pass "
        "--on-bad-row skip to leave bad rows out (each is listed in skipped.jsonl)"
    ]
    wrong = runner.invoke(app, [*args, "--address", "auto"])
    assert wrong.exit_code == 1 and "--address apply to --engine ray only" in wrong.stderr
