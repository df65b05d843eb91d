"""A missing or corrupt artefact raises a typed error naming the file and the problem."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from embedrt.runtime import ArtefactError, ArtefactNotFoundError, Embedder, EmbedrtError


@pytest.fixture()
def copy(tiny_bert: Path, tmp_path: Path) -> Path:
    target = tmp_path / "artefact"
    shutil.copytree(tiny_bert, target)
    return target


def _edit_manifest(directory: Path, change: Callable[[dict], None]) -> None:
    path = directory / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ArtefactNotFoundError, match="no such artefact directory"):
        Embedder.load(tmp_path / "nowhere")


def test_missing_manifest(copy: Path) -> None:
    (copy / "manifest.json").unlink()
    with pytest.raises(ArtefactNotFoundError, match=r"manifest.json is missing"):
        Embedder.load(copy)


def test_unreadable_json(copy: Path) -> None:
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(ArtefactError, match=r"manifest.json: not valid JSON"):
        Embedder.load(copy)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(schema_version=99), "schema_version 99 is not supported"),
        (lambda d: d.pop("dim"), r"manifest.json: dim: missing \(required\); re-export"),
        (lambda d: d.update(dim="384"), "manifest.json: dim: expected int, got '384'"),
        (lambda d: d.update(pooling="weighted"), "manifest.json: pooling: 'weighted' is not one of mean"),
        (lambda d: d.update(max_seq_length=0), "manifest.json: max_seq_length: must be positive, got 0"),
    ],
)
def test_invalid_manifest(copy: Path, change: Callable[[dict], None], message: str) -> None:
    _edit_manifest(copy, change)
    with pytest.raises(ArtefactError, match=message):
        Embedder.load(copy)


def test_missing_model_file(copy: Path) -> None:
    (copy / "model.onnx").unlink()
    with pytest.raises(ArtefactNotFoundError, match=r"model.onnx is missing"):
        Embedder.load(copy)


def test_model_not_matching_checksum(copy: Path) -> None:
    with open(copy / "model.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ArtefactError, match=r"model.onnx: sha256 does not match manifest.json"):
        Embedder.load(copy)


def test_corrupt_model_without_checksum_check(copy: Path) -> None:
    (copy / "model.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(ArtefactError, match=r"model.onnx: onnxruntime cannot load it"):
        Embedder.load(copy, verify=False)


def test_input_names_not_matching_graph(copy: Path) -> None:
    _edit_manifest(copy, lambda d: d.update(inputs=["input_ids", "attention_mask"]))
    with pytest.raises(ArtefactError, match=r"graph inputs .* do not match the manifest"):
        Embedder.load(copy)


def test_corrupt_tokenizer(copy: Path) -> None:
    (copy / "tokenizer.json").write_text("{}")
    with pytest.raises(ArtefactError, match=r"tokenizer.json: not a valid tokenizer.json"):
        Embedder.load(copy, verify=False)


def test_errors_are_builtin_subclasses_too(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Embedder.load(tmp_path / "nowhere")
    with pytest.raises(EmbedrtError):
        Embedder.load(tmp_path / "nowhere")
