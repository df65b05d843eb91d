"""The typed-record helper: each kind of field read and written back, each error naming file and field."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
from embedrt.runtime.errors import ArtefactError, EmbedrtError
from embedrt.runtime.records import RecordError, read_record, record_json


@dataclass(frozen=True)
class Inner:
    weight_type: str
    bits: int = 8


@dataclass(frozen=True)
class Positive:
    value: int

    def __post_init__(self) -> None:
        if self.value <= 0:
            raise ValueError(f"value must be positive, got {self.value}")


@dataclass(frozen=True)
class Outer:
    name: str
    count: int
    ratio: float
    enabled: bool
    note: str | None
    tags: tuple[str, ...]
    pair: tuple[int, str]
    items: list[Inner]
    inner: Inner
    scores: dict[str, float]
    extra: Mapping[str, Any]
    mode: Literal["fast", "exact"] = "fast"
    optional_inner: Inner | None = None
    many: tuple[Inner, ...] = ()
    defaults: Mapping[str, int] = field(default_factory=dict)


GOOD: dict[str, Any] = {
    "name": "m", "count": 3, "ratio": 2, "enabled": False, "note": None, "tags": ["a", "b"],
    "pair": [1, "x"], "items": [{"weight_type": "s8"}], "inner": {"weight_type": "u8", "bits": 4},
    "scores": {"short": 1.5, "long": 2}, "extra": {"k": [1, {"z": None}], "b": True},
    "mode": "exact", "optional_inner": {"weight_type": "s8", "bits": 8},
}


def test_reads_every_kind_of_field() -> None:
    record = read_record(Outer, json.loads(json.dumps(GOOD)), "f.json")
    assert record == Outer(
        name="m", count=3, ratio=2.0, enabled=False, note=None, tags=("a", "b"), pair=(1, "x"),
        items=[Inner("s8", 8)], inner=Inner("u8", 4), scores={"short": 1.5, "long": 2.0},
        extra={"k": [1, {"z": None}], "b": True}, mode="exact", optional_inner=Inner("s8", 8),
    )
    assert isinstance(record.ratio, float) and isinstance(record.scores["long"], float)
    assert isinstance(record.tags, tuple) and isinstance(record.items, list)


def test_written_back_reads_to_the_same_record() -> None:
    record = read_record(Outer, GOOD, "f.json")
    data = record_json(record)
    assert json.loads(json.dumps(data)) == data  # plain JSON: tuples became lists
    assert data["tags"] == ["a", "b"] and data["many"] == []
    assert data["inner"] == {"weight_type": "u8", "bits": 4}
    assert read_record(Outer, json.loads(json.dumps(data)), "f.json") == record


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"inner": {"weight_type": 3}}, "f.json: inner.weight_type: expected str, got 3"),
        ({"count": True}, "f.json: count: expected int, got True"),
        ({"count": 1.5}, "f.json: count: expected int, got 1.5"),
        ({"ratio": "2"}, "f.json: ratio: expected float, got '2'"),
        ({"enabled": 1}, "f.json: enabled: expected bool, got 1"),
        ({"note": 5}, "f.json: note: expected str or null, got 5"),
        ({"tags": "ab"}, "f.json: tags: expected a JSON list, got 'ab'"),
        ({"tags": ["a", 2]}, "f.json: tags[1]: expected str, got 2"),
        ({"pair": [1]}, "f.json: pair: expected 2 items, got 1"),
        ({"items": [{"weight_type": "s8"}, {"weight_type": "u8", "bits": "8"}]},
         "f.json: items[1].bits: expected int, got '8'"),
        ({"scores": {"short": "x"}}, "f.json: scores.short: expected float, got 'x'"),
        ({"scores": []}, "f.json: scores: expected a JSON object, got []"),
        ({"mode": "slow"}, "f.json: mode: expected one of 'fast', 'exact', got 'slow'"),
        ({"optional_inner": {"weight_type": "s8", "bits": None}},
         "f.json: optional_inner.bits: expected int, got None"),
        ({"optional_inner": 7}, "f.json: optional_inner: expected an object (Inner) or null, got 7"),
        ({"inner": {"weight_type": "s8", "bitz": 4}},
         "f.json: inner.bitz: unknown field (a Inner has weight_type, bits)"),
        ({"inner": {"bits": 4}}, "f.json: inner.weight_type: missing (required)"),
    ],
)
def test_each_error_names_the_file_and_the_field(change: dict[str, Any], message: str) -> None:
    with pytest.raises(RecordError) as caught:
        read_record(Outer, {**GOOD, **change}, "f.json")
    assert str(caught.value) == message
    assert caught.value.file == "f.json"
    assert caught.value.field == message.split(": ")[1]


def test_missing_and_unknown_top_level_fields() -> None:
    data = dict(GOOD)
    del data["name"]
    with pytest.raises(RecordError, match=r"^f\.json: name: missing \(required\)$"):
        read_record(Outer, data, "f.json")
    with pytest.raises(RecordError, match=r"^f\.json: nmae: unknown field \(a Outer has name, count"):
        read_record(Outer, {**GOOD, "nmae": "m"}, "f.json")


def test_unknown_fields_ignored_on_request_at_every_level() -> None:
    data = {"weight_type": "s8", "later": 1}
    assert read_record(Inner, data, "f.json", ignore_unknown=True) == Inner("s8")

    @dataclass(frozen=True)
    class Part:
        inner: Inner

    assert read_record(Part, {"inner": data, "more": []}, "f.json", ignore_unknown=True) == Part(Inner("s8"))
    with pytest.raises(RecordError, match=r"^f\.json: inner\.later: unknown field"):
        read_record(Part, {"inner": data}, "f.json")


def test_not_an_object_names_the_file() -> None:
    expected = r"^f\.json: expected a JSON object \(Outer\), got \[1, 2\]$"
    with pytest.raises(RecordError, match=expected) as caught:
        read_record(Outer, [1, 2], "f.json")
    assert caught.value.field == ""


def test_post_init_check_is_reported_at_its_record() -> None:
    @dataclass(frozen=True)
    class Holder:
        limit: Positive

    with pytest.raises(RecordError, match=r"^run\.json: limit: value must be positive, got 0$"):
        read_record(Holder, {"limit": {"value": 0}}, "run.json")


def test_any_json_value_and_non_json_values() -> None:
    @dataclass(frozen=True)
    class Free:
        data: Any

    assert read_record(Free, {"data": {"a": [1, 2.5, None]}}, "x").data == {"a": [1, 2.5, None]}
    with pytest.raises(RecordError, match=r"^x: data\.a: expected a JSON value"):
        read_record(Free, {"data": {"a": object()}}, "x")


def test_error_class_and_advice_are_the_callers() -> None:
    class ManifestFieldError(RecordError, ArtefactError):
        pass

    with pytest.raises(ManifestFieldError) as caught:
        read_record(Inner, {"weight_type": 3}, "manifest.json", error=ManifestFieldError, fix="re-export it")
    assert str(caught.value) == "manifest.json: weight_type: expected str, got 3; re-export it"
    assert isinstance(caught.value, (EmbedrtError, ValueError, ArtefactError))


def test_record_json_refuses_non_records() -> None:
    with pytest.raises(TypeError, match="dataclass instance"):
        record_json({"a": 1})
    with pytest.raises(TypeError, match="dataclass instance"):
        record_json(Inner)


def _run_json() -> dict[str, Any]:
    """A finished float32 run.json as embed-corpus writes it (one input, one shard)."""
    return {
        "format": "embedrt-corpus-run", "version": 1, "status": "complete", "embedrt_version": "0.1.0",
        "model": {"name": "tiny", "variant": "fp32", "path": "/m", "manifest_sha256": "ab" * 32, "dim": 4,
                  "max_seq_length": 24},
        "inputs": [{"label": "a.txt", "path": "/in/a.txt", "format": "txt", "size": 5, "sha256": "cd" * 32}],
        "settings": {"text_column": "text", "id_column": None, "precision": "float32", "rows_per_shard": 10,
                     "chunk_rows": 10, "batch_size": 32, "max_batch_tokens": 1024, "calibration_rows": None,
                     "on_bad_row": "fail"},
        "precision": {"name": "float32", "width": 4, "calibration": None, "calibration_rows": None},
        "schema": {"id": "string"},
        "counts": {"rows": 1, "read": 1, "embedded": 1, "skipped": 0, "truncated": 0, "shards": 1},
        "shards": [{"name": "part-00000-000000", "input": 0, "index": 0, "first_row": 1, "rows_read": 1,
                    "embedded": 1, "skipped": 0, "truncated": 0, "shard": "shards/part-00000-000000.parquet",
                    "bytes": 10, "sha256": "ef" * 32}],
        "timings": {"started_at": "t", "finished_at": "t", "seconds": 0.5, "sessions": [
            {"started_at": "t", "engine": "local", "engine_options": {"processes": 1}, "threads": 2,
             "rows": 1, "seconds": 0.5}]},
    }


def test_corpus_run_json_round_trips_and_names_a_wrong_field(tmp_path: Path) -> None:
    from embedrt.corpus.errors import CorpusError
    from embedrt.corpus.record import CorpusRun, load_record, read_run
    from embedrt.corpus.search_run import SearchRunError, read_search_run

    (tmp_path / "run.json").write_text(json.dumps(_run_json()))
    run = read_run(tmp_path)
    assert isinstance(run, CorpusRun) and run.model.dim == 4 and run.timings.sessions[0].threads == 2
    assert run.shards[0].shard == "shards/part-00000-000000.parquet" and run.precision is not None
    assert load_record(tmp_path) == _run_json()  # written back key for key

    broken = _run_json()
    broken["model"]["dim"] = "4"
    (tmp_path / "run.json").write_text(json.dumps(broken))
    with pytest.raises(CorpusError, match=r"run\.json: not a readable embedrt corpus run record "
                       r"\(model\.dim: expected int, got '4'\)"):
        read_run(tmp_path)
    with pytest.raises(SearchRunError) as caught:  # search reads the same field, by the same helper
        read_search_run(tmp_path)
    assert (caught.value.file, caught.value.field) == (str(tmp_path / "run.json"), "model.dim")


@pytest.mark.export
def test_a_real_exported_manifest_round_trips_and_names_a_nested_field(tiny_bert_int8: Path) -> None:
    from embedrt.runtime.manifest import Manifest, ManifestFieldError

    path = tiny_bert_int8 / "manifest.json"
    raw = json.loads(path.read_text())
    manifest = Manifest.from_dict(raw, str(path))
    assert manifest.recipe.quantisation is not None and manifest.recipe.quantisation.settings
    assert json.loads(json.dumps(manifest.to_dict())) == raw  # written back key for key
    assert Manifest.from_dict(json.loads(json.dumps(manifest.to_dict())), str(path)) == manifest

    raw["recipe"]["quantisation"]["weight_type"] = 3
    with pytest.raises(ManifestFieldError) as caught:
        Manifest.from_dict(raw, str(path))
    expected = f"{path}: recipe.quantisation.weight_type: expected str, got 3; re-export"
    assert str(caught.value).startswith(expected)
    assert isinstance(caught.value, ArtefactError) and caught.value.field == "recipe.quantisation.weight_type"
