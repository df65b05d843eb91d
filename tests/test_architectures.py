"""Every architecture embedrt exports, on a tiny model built here, against sentence-transformers.

BERT, DistilBERT, MPNet, RoBERTa (byte-level BPE), XLM-RoBERTa (SentencePiece Unigram) and
ModernBERT (rotary positions, local attention windows, its fused Q/K/V projection): fp32
through export's parity gate and then through the runtime, compared with
``SentenceTransformer.encode`` on torch on texts that cover truncation, non-ASCII, the
empty string and characters the vocabulary lacks. The int8 blocks layout per architecture
is tests/test_patterns.py's; ModernBERT, which it does not match, is quantised per token
and checked here. The pad id the runtime pads with, and its fallbacks, are checked last.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

if importlib.util.find_spec("torch") is None or importlib.util.find_spec("optimum") is None:
    pytest.skip("architecture tests need the [export] extra", allow_module_level=True)

from embedrt.export import ExportOptions, export_model
from embedrt.runtime import Embedder, Manifest
from embedrt.runtime.pooling import row_cosines

TEXTS = [
    "the cat",
    "",
    "a man is playing guitar",
    "the cat sat on the road " * 8,  # over the tiny models' 24 tokens
    "dog",
    "Hello World, ÉÈ üö ä!",
    "水 and ☃ are not in the vocabulary",
    "quick brown fox jumps over lazy dog",
]
FP32_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def sources(tiny_models: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("architectures")
    return {arch: tiny_models.build(root, arch) for arch in tiny_models.ARCHITECTURES}


def _reference(source: Path, texts: list[str]) -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(source), device="cpu").encode(texts, convert_to_numpy=True)


@pytest.mark.export
@pytest.mark.parametrize("arch", ["bert", "distilbert", "mpnet", "roberta", "xlm-roberta", "modernbert"])
def test_fp32_matches_sentence_transformers(
    arch: str, sources: dict[str, Path], tmp_path: Path
) -> None:
    export_model(sources[arch], tmp_path / "fp32", ExportOptions(variant="fp32"))
    manifest = Manifest.load(tmp_path / "fp32")
    assert manifest.parity is not None and manifest.parity.passed
    embedder = Embedder.load(tmp_path / "fp32")
    result = embedder.encode(TEXTS)
    assert result.truncated  # the long text was cut, as sentence-transformers cuts it
    difference = np.abs(result.vectors - _reference(sources[arch], TEXTS)).max()
    assert difference <= FP32_TOLERANCE, f"{arch}: max |diff| {difference:.2e}"


@pytest.mark.export
@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="needs the [openvino] extra")
@pytest.mark.parametrize("arch", ["bert", "distilbert", "mpnet", "roberta", "xlm-roberta", "modernbert"])
def test_bf16_on_openvino_matches_sentence_transformers(
    arch: str, sources: dict[str, Path], tmp_path: Path
) -> None:
    """OpenVINO reads every architecture's exported graph; bf16 keeps fp32's answers."""
    export_model(sources[arch], tmp_path / "bf16", ExportOptions(variant="bf16"))
    manifest = Manifest.load(tmp_path / "bf16")
    assert manifest.parity is not None and manifest.parity.passed
    assert manifest.recipe.backend == "openvino"
    vectors = Embedder.load(tmp_path / "bf16").embed(TEXTS)
    reference = _reference(sources[arch], TEXTS)
    cosines = row_cosines(vectors, reference)  # normalised or not (DistilBERT's CLS is not)
    assert cosines.min() >= 0.9999, f"{arch}: min cosine {cosines.min():.6f}"


@pytest.mark.export
def test_modernbert_int8_per_token_layout_and_invariance(
    sources: dict[str, Path], tmp_path: Path
) -> None:
    export_model(sources["modernbert"], tmp_path / "int8", ExportOptions(variant="int8"))
    manifest = Manifest.load(tmp_path / "int8")
    record = manifest.recipe.quantisation
    assert manifest.parity is not None and manifest.parity.passed
    # ModernBERT projects Q, K and V with one MatMul: the blocks pattern names that and
    # export falls back to per-token scales, which must still pass the gate.
    assert record is not None and record.layout == "per-token" and record.quantised_matmuls > 0
    embedder = Embedder.load(tmp_path / "int8")
    alone = np.concatenate([embedder.embed([text]) for text in TEXTS])
    batched = embedder.embed(TEXTS * 4, batch_size=32)[: len(TEXTS)]
    assert row_cosines(alone, batched).min() >= 0.99999
    assert row_cosines(embedder.embed(TEXTS), _reference(sources["modernbert"], TEXTS)).min() >= 0.99


def _rename_pad(source: Path, target: Path, new: str) -> None:
    """Copy ``source`` with its pad token spelt ``new`` in tokenizer.json and its config."""
    shutil.copytree(source, target)
    tokenizer_file = target / "tokenizer.json"
    data = json.loads(tokenizer_file.read_text())
    old = next(t["content"] for t in data["added_tokens"] if t["content"] in ("<pad>", "[PAD]"))
    text = json.dumps(data).replace(json.dumps(old), json.dumps(new))
    tokenizer_file.write_text(text)
    config_file = target / "tokenizer_config.json"
    config_file.write_text(config_file.read_text().replace(json.dumps(old), json.dumps(new)))


@pytest.mark.export
@pytest.mark.parametrize(("arch", "drop_config_id", "expected"), [
    ("roberta", False, 1),  # named by tokenizer_config.json although not spelt like a pad token
    ("modernbert", False, 3),
    ("roberta", True, 1),  # the same without config.json's pad_token_id
])
def test_the_pad_id_is_the_models_own_and_padding_is_masked(
    arch: str, drop_config_id: bool, expected: int, sources: dict[str, Path], tmp_path: Path
) -> None:
    source = tmp_path / "source"
    _rename_pad(sources[arch], source, "<my-padding>")
    if drop_config_id:
        config_file = source / "config.json"
        config = json.loads(config_file.read_text())
        config.pop("pad_token_id", None)
        config_file.write_text(json.dumps(config))
    export_model(source, tmp_path / "fp32", ExportOptions(variant="fp32"))
    assert Manifest.load(tmp_path / "fp32").pad_token_id == expected
    embedder = Embedder.load(tmp_path / "fp32")
    assert np.abs(embedder.embed(TEXTS) - _reference(source, TEXTS)).max() <= FP32_TOLERANCE


@pytest.mark.export
def test_with_no_pad_token_anywhere_padding_falls_back_to_id_0(
    sources: dict[str, Path], tmp_path: Path
) -> None:
    """The last fallback: no pad token named anywhere; masked padding still gives the same vectors."""
    source = tmp_path / "source"
    _rename_pad(sources["roberta"], source, "<not-a-pad>")
    config_file = source / "config.json"
    config = json.loads(config_file.read_text())
    config.pop("pad_token_id", None)
    config_file.write_text(json.dumps(config))
    tokenizer_config_file = source / "tokenizer_config.json"
    tokenizer_config = json.loads(tokenizer_config_file.read_text())
    tokenizer_config.pop("pad_token", None)
    tokenizer_config_file.write_text(json.dumps(tokenizer_config))
    # sentence-transformers cannot pad without a pad token: its reference runs one text at a time
    reference = np.concatenate([_reference(sources["roberta"], [text]) for text in TEXTS])
    export_model(source, tmp_path / "fp32", ExportOptions(variant="fp32", check=False))
    assert Manifest.load(tmp_path / "fp32").pad_token_id == 0
    embedder = Embedder.load(tmp_path / "fp32")
    assert np.abs(embedder.embed(TEXTS, batch_size=len(TEXTS)) - reference).max() <= FP32_TOLERANCE
