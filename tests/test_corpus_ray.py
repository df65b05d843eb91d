"""The corpus job on Ray Data (``engine="ray"``) against the local engine, on a real Ray.

A real local Ray instance (2 CPUs) is started once for the module; the jobs run real actors
on it with the tiny models' real onnxruntime sessions. The resume test runs the command in a
subprocess that joins that instance and is killed with SIGKILL mid-run; the fault test kills
one of Ray's actor processes mid-run. Nothing is mocked.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the Ray engine needs the [ray] extra (ray[data])")
pa = pytest.importorskip("pyarrow", reason="the corpus job writes Parquet: the [corpus] extra")
pq = pytest.importorskip("pyarrow.parquet", reason="the corpus job writes Parquet: the [corpus] extra")

from _helpers import finished_shards, make_texts, output_bytes  # noqa: E402
from embedrt.cli import app  # noqa: E402
from embedrt.corpus import BadRowError, CorpusError, CorpusOptions, embed_corpus  # noqa: E402
from embedrt.corpus.ray_worker import UnitWorker, decode_error  # noqa: E402
from embedrt.corpus.record import load_record  # noqa: E402
from embedrt.runtime.errors import ArtefactNotFoundError, MissingExtraError  # noqa: E402
from embedrt.runtime.pooling import row_cosines  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

SMALL = {"rows_per_shard": 10, "chunk_rows": 4}
WORKER_TITLE = "MapBatches(UnitWorker)"  # in the process title Ray gives each actor


@pytest.fixture(scope="module")
def ray_address() -> object:
    """A local Ray instance for the module's tests; its GCS address, for subprocesses to join."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def write_corpus(directory: Path, words: list[str], rows: int = 45) -> list[Path]:
    """JSONL, CSV and Parquet inputs with ids, a bad row, a duplicate id and a row without text."""
    directory.mkdir(parents=True)
    texts = make_texts(words, 3 * rows, seed=5)
    lines = [json.dumps({"id": f"j{i}", "text": t}) for i, t in enumerate(texts[:rows])]
    lines[27] = '{"id": "j27", "text": '  # unparsable (in the third unit of 10 rows)
    lines[33] = json.dumps({"id": "j3", "text": texts[33]})  # a duplicate id
    (directory / "a.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    csv_rows = [f'c{i},"{t}"' for i, t in enumerate(texts[rows : 2 * rows])]
    csv_rows[12] = "c12,"  # no text
    (directory / "b.csv").write_text("id,text\n" + "\n".join(csv_rows) + "\n", encoding="utf-8")
    parquet_ids = [f"p{i}" for i in range(rows)]
    pq.write_table(pa.table({"id": parquet_ids, "text": texts[2 * rows :]}), directory / "c.parquet",
                   row_group_size=8)
    return [directory / "a.jsonl", directory / "b.csv", directory / "c.parquet"]


def table(out: Path) -> pa.Table:
    """Every shard's rows in run order (shard names sort in input order)."""
    return pa.concat_tables([pq.read_table(f) for f in sorted((out / "shards").glob("*.parquet"))])


def float_vectors(rows: pa.Table) -> np.ndarray:
    column = rows.column("embedding").combine_chunks()
    return column.values.to_numpy(zero_copy_only=False).reshape(-1, column.type.list_size).astype(np.float64)


def ray_options(**settings: object) -> CorpusOptions:
    base = {"id_column": "id", "on_bad_row": "skip", "engine": "ray",
            "engine_options": {"actors": 2, "cpus_per_actor": 1}, **SMALL}
    return CorpusOptions(**(base | settings))  # type: ignore[arg-type]


def local_options(**settings: object) -> CorpusOptions:
    """The local engine with one thread: as one Ray actor of one CPU runs its model."""
    return CorpusOptions(**({"id_column": "id", "on_bad_row": "skip", "threads": 1, **SMALL} | settings))  # type: ignore[arg-type]


@pytest.mark.parametrize(("artefact", "precision"), [
    ("tiny_bert", "float32"), ("tiny_bert_int8", "float32"), ("tiny_bert_int8", "int8"),
])
def test_ray_output_equals_the_local_engine(artefact, precision, ray_address, tiny_model_words, request,
                                            tmp_path) -> None:
    model = request.getfixturevalue(artefact)
    inputs = write_corpus(tmp_path / "in", tiny_model_words)
    local = embed_corpus(inputs, tmp_path / "local", model, local_options(precision=precision))
    remote = embed_corpus(inputs, tmp_path / "ray", model, ray_options(precision=precision))
    assert (remote.status, remote.read, remote.embedded, remote.skipped, remote.shards) == (
        "complete", local.read, local.embedded, local.skipped, local.shards)
    assert (remote.read, remote.skipped, remote.shards) == (135, 3, 15)
    # Same parts, same chunks, same threads per model session: the same bytes, run.json included.
    assert output_bytes(tmp_path / "ray") == output_bytes(tmp_path / "local")
    ours, theirs = table(tmp_path / "ray"), table(tmp_path / "local")
    assert ours.schema == theirs.schema
    assert ours.column("id").to_pylist() == theirs.column("id").to_pylist()
    if precision == "float32":
        assert row_cosines(float_vectors(ours), float_vectors(theirs)).min() >= 0.99999
    session = load_record(tmp_path / "ray")["timings"]["sessions"][-1]
    assert session["engine"] == "ray" and session["threads"] == 1
    assert session["engine_options"] | {"ray_version": None} == {
        "address": None, "actors": 2, "cpus_per_actor": 1, "cluster_cpus": 2, "nodes": 1, "ray_version": None,
    }


def test_ray_vectors_agree_with_a_local_run_on_more_threads(ray_address, tiny_bert, tiny_model_words,
                                                           tmp_path) -> None:
    inputs = write_corpus(tmp_path / "in", tiny_model_words)
    embed_corpus(inputs, tmp_path / "local", tiny_bert, local_options(threads=2))
    embed_corpus(inputs, tmp_path / "ray", tiny_bert, ray_options())
    ours, theirs = table(tmp_path / "ray"), table(tmp_path / "local")
    assert ours.column("id").to_pylist() == theirs.column("id").to_pylist()
    assert ours.column("tokens").to_pylist() == theirs.column("tokens").to_pylist()
    assert ours.column("truncated").to_pylist() == theirs.column("truncated").to_pylist()
    assert row_cosines(float_vectors(ours), float_vectors(theirs)).min() >= 0.99999


def _ray_command(inputs: list[Path], out: Path, model: Path, address: str) -> list[str]:
    return [
        sys.executable, "-m", "embedrt.cli", "embed-corpus", *map(str, inputs), "--out", str(out),
        "--model", str(model), "--id-column", "id", "--on-bad-row", "skip", "--rows-per-shard", "5",
        "--chunk-rows", "4", "--engine", "ray", "--address", address, "--actors", "2",
        "--cpus-per-actor", "1", "--quiet",
    ]


def test_a_ray_run_killed_midway_resumes_to_the_uninterrupted_output(ray_address, tiny_bert, tiny_model_words,
                                                                     tmp_path) -> None:
    inputs = write_corpus(tmp_path / "in", tiny_model_words, rows=150)  # 90 units of 5 rows
    embed_corpus(inputs, tmp_path / "whole", tiny_bert, local_options(rows_per_shard=5))
    units = load_record(tmp_path / "whole")["counts"]["shards"]
    out = tmp_path / "killed"
    process = subprocess.Popen(_ray_command(inputs, out, tiny_bert, ray_address),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while finished_shards(out) < 3 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
    os.kill(process.pid, signal.SIGKILL)  # the driver: its actors die with its Ray job
    process.wait()
    process.stderr.close()
    killed_at = finished_shards(out)
    assert 3 <= killed_at < units, f"killed after {killed_at} of {units} shards"
    resumed = embed_corpus(inputs, out, tiny_bert, ray_options(rows_per_shard=5))
    assert resumed.status == "complete" and resumed.resumed >= killed_at
    assert output_bytes(out) == output_bytes(tmp_path / "whole")
    ids = table(out).column("id").to_pylist()
    assert len(ids) == len(set(ids)) == resumed.embedded  # no duplicates
    assert ids == table(tmp_path / "whole").column("id").to_pylist()  # no gaps, input order
    sessions = load_record(out)["timings"]["sessions"]
    assert [s["engine"] for s in sessions] == ["ray", "ray"]


def _actor_pids() -> list[int]:
    """Processes of this user whose title is one of the Ray actors running UnitWorker."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if WORKER_TITLE in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:  # the process ended while we looked
                continue
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds Ray's actor processes through /proc")
def test_an_actor_killed_midway_is_replaced_and_nothing_is_lost(ray_address, tiny_bert, tiny_model_words,
                                                                tmp_path) -> None:
    inputs = write_corpus(tmp_path / "in", tiny_model_words, rows=150)
    embed_corpus(inputs, tmp_path / "whole", tiny_bert, local_options(rows_per_shard=5))
    out = tmp_path / "ray"
    killed: list[int] = []

    def kill_one_actor(progress: object) -> None:
        if not killed and finished_shards(out) >= 3:
            pids = _actor_pids()
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])

    result = embed_corpus(inputs, out, tiny_bert, ray_options(rows_per_shard=5), progress=kill_one_actor)
    assert killed, "no actor was killed: the run ended before the third shard was recorded"
    assert result.status == "complete"
    assert output_bytes(out) == output_bytes(tmp_path / "whole")


def test_a_bad_row_stops_a_ray_run_with_the_embedrt_error_and_skip_finishes_it(
    ray_address, tiny_bert, tiny_model_words, tmp_path
) -> None:
    inputs = write_corpus(tmp_path / "in", tiny_model_words)
    fail = CorpusOptions(id_column="id", engine="ray", engine_options={"actors": 1}, **SMALL)
    with pytest.raises(BadRowError) as caught:
        embed_corpus(inputs, tmp_path / "ray", tiny_bert, fail)
    message = str(caught.value)
    assert message.startswith("a.jsonl line 28: not valid JSON") and "on_bad_row='skip'" in message
    record = load_record(tmp_path / "ray")
    recorded = {s["name"] for s in record["shards"]}
    # One actor takes the units in plan order: the two before the bad row's are written and recorded.
    assert record["status"] == "running" and {"part-00000-000000", "part-00000-000001"} <= recorded
    assert "part-00000-000002" not in recorded
    embed_corpus(inputs, tmp_path / "ray", tiny_bert, ray_options())
    embed_corpus(inputs, tmp_path / "local", tiny_bert, local_options())
    assert output_bytes(tmp_path / "ray") == output_bytes(tmp_path / "local")
    skipped = (tmp_path / "ray" / "skipped.jsonl").read_text().splitlines()
    assert [json.loads(line)["input"] for line in skipped] == ["a.jsonl", "a.jsonl", "b.csv"]


def test_engine_settings_are_checked_before_any_work(ray_address, tiny_bert, tiny_model_words,
                                                     tmp_path) -> None:
    inputs = write_corpus(tmp_path / "in", tiny_model_words)
    too_many = CorpusOptions(engine="ray", engine_options={"actors": 2, "cpus_per_actor": 2}, **SMALL,
                             id_column="id", on_bad_row="skip")
    with pytest.raises(CorpusError, match=r"2 actors x 2 CPUs need 4 CPUs; the Ray cluster has 2, so the "
                                          r"actors could never all start\. Pass actors 1 or fewer"):
        embed_corpus(inputs, tmp_path / "a", tiny_bert, too_many)
    unknown = CorpusOptions(engine="ray", engine_options={"workers": 2}, **SMALL, id_column="id")
    with pytest.raises(CorpusError, match="engine option.s. workers are not Ray's"):
        embed_corpus(inputs, tmp_path / "b", tiny_bert, unknown)
    assert not list((tmp_path / "a" / "shards").glob("*.parquet"))


def test_without_ray_the_error_names_the_extra(ray_address, tiny_bert, tmp_path, monkeypatch) -> None:
    source = tmp_path / "a.txt"
    source.write_text("the cat\n")
    for name in ("ray", "ray.data"):
        monkeypatch.setitem(sys.modules, name, None)  # what `import ray` meets where it is absent
    with pytest.raises(MissingExtraError, match=r"embed-corpus --engine ray needs the \[ray\] extra"):
        embed_corpus([source], tmp_path / "out", tiny_bert, CorpusOptions(engine="ray"))


def test_an_actor_without_the_artefact_names_its_node_and_the_fix(tiny_bert, tmp_path) -> None:
    worker = UnitWorker(str(tmp_path / "elsewhere"), str(tmp_path / "out"), "float32", None, 8, 1, 32)
    finished, error = worker._process(object())  # type: ignore[arg-type]  # not read: loading failed
    assert finished is None
    err = decode_error(error)
    assert isinstance(err, ArtefactNotFoundError)
    assert str(err).startswith("on Ray node ") and "no such artefact directory" in str(err)
    assert "must be at the same path on every node" in str(err)


def test_cli_runs_the_ray_engine_and_maps_its_errors(ray_address, tiny_bert, tiny_model_words,
                                                     tmp_path) -> None:
    inputs = write_corpus(tmp_path / "in", tiny_model_words)
    runner = CliRunner()
    settings = ["--model", str(tiny_bert), "--id-column", "id", "--on-bad-row", "skip", "--rows-per-shard",
                "10", "--engine", "ray"]
    args = ["embed-corpus", *map(str, inputs), "--out", str(tmp_path / "out"), *settings]
    done = runner.invoke(app, args)
    assert done.exit_code == 0, done.output
    assert done.stdout.startswith("135 rows read: 132 embedded, 3 skipped (see skipped.jsonl), ")
    assert "15 shards in" in done.stdout
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and again.stdout.startswith("nothing to do: ")
    other = ["embed-corpus", *map(str, inputs), "--out", str(tmp_path / "other"), *settings]
    wrong = runner.invoke(app, [*other, "--actors", "3"])
    assert wrong.exit_code == 1
    assert wrong.stderr.strip().splitlines()[-1] == (
        "embedrt: error: 3 actors x 1 CPUs need 3 CPUs; the Ray cluster has 2, so the actors could never all "
        "start. Pass --actors 2 or fewer, or lower --cpus-per-actor"
    )


def test_the_ray_benchmark_runs_and_reports(tiny_bert, tmp_path) -> None:
    from embedrt.bench.studies import corpus_ray

    corpus_ray.main(["--out", str(tmp_path), "--model", str(tiny_bert), "--rows", "120", "--long-rows", "12",
                     "--rows-per-shard", "40", "--threads", "2", "--layouts", "2x1", "--repeats", "1"])
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["summary"]) == {"short", "long"}
    for corpus, rows in (("short", 120), ("long", 12)):
        summary = results["summary"][corpus]
        assert set(summary) == {"local", "ray 2x1"}
        assert summary["local"]["ratio_to_local"] == [1.0]
        texts = [run[system]["texts"] for run in results["runs"][corpus] for system in ("local", "ray 2x1")]
        assert texts == [rows, rows]
    table = (tmp_path / "results.md").read_text()
    assert "| ray 2x1 | " in table and "## long (12 texts)" in table
