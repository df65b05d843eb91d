"""Export on tiny models: the manifest it writes, the stages it refuses, its parity gate."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

if importlib.util.find_spec("torch") is None or importlib.util.find_spec("optimum") is None:
    pytest.skip("export tests need the [export] extra", allow_module_level=True)

from embedrt.export import ExportOptions, OutputDirectoryError, export_model
from embedrt.export import variants as variants_module
from embedrt.export.variants import UnknownVariantError, Variant
from embedrt.runtime import Embedder, Manifest, ParityError, SourceModelError

pytestmark = pytest.mark.export


def _tiny_models():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("_tiny_models", Path(__file__).with_name("_tiny_models.py"))
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_manifest_describes_the_model(tiny_bert: Path, tiny_sources: dict[str, Path]) -> None:
    manifest = Manifest.load(tiny_bert)
    assert (manifest.dim, manifest.pooling, manifest.normalize) == (32, "mean", True)
    assert manifest.max_seq_length == 24  # sentence-transformers' limit, not the 64 positions
    assert list(manifest.inputs) == ["input_ids", "attention_mask", "token_type_ids"]
    assert manifest.output == "last_hidden_state" and manifest.variant == "fp32"
    assert manifest.source["weights_file"] == "model.safetensors"
    assert len(manifest.source["weights_sha256"]) == 64
    assert set(manifest.files) == {"model.onnx", "tokenizer.json"}
    assert {"torch", "transformers", "optimum", "onnx", "onnxruntime"} <= set(manifest.versions)
    assert manifest.parity["passed"] is True
    assert manifest.parity["min_cosine"] >= 0.99999 and manifest.parity["max_abs_diff"] <= 1e-5


def test_distilbert_has_no_token_type_ids(tiny_distilbert: Path) -> None:
    manifest = Manifest.load(tiny_distilbert)
    assert list(manifest.inputs) == ["input_ids", "attention_mask"]
    assert (manifest.pooling, manifest.normalize) == ("cls", False)


def test_refuses_a_dense_stage_naming_it(tiny_sources: dict[str, Path], tmp_path: Path) -> None:
    source = _tiny_models().add_stage(
        tiny_sources["bert"], tmp_path / "with-dense", "sentence_transformers.models.Dense"
    )
    with pytest.raises(SourceModelError, match=r"stage 3 \(sentence_transformers.models.Dense"):
        export_model(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"embedding_dimension": 32, "pooling_mode": "lasttoken"}, "pooling lasttoken cannot be reproduced"),
        ({"word_embedding_dimension": 32, "pooling_mode_mean_sqrt_len_tokens": True},
         "pooling pooling_mode_mean_sqrt_len_tokens cannot be reproduced"),
    ],
)
def test_refuses_unsupported_pooling(
    tiny_sources: dict[str, Path], tmp_path: Path, config: dict, message: str
) -> None:
    source = tmp_path / "model"
    shutil.copytree(tiny_sources["bert"], source)
    (source / "1_Pooling" / "config.json").write_text(json.dumps(config))
    with pytest.raises(SourceModelError, match=message):
        export_model(source, tmp_path / "out")


def test_refuses_a_folder_without_modules_json(tmp_path: Path) -> None:
    with pytest.raises(SourceModelError, match="no modules.json"):
        export_model(tmp_path, tmp_path / "out")


def test_unknown_variant(tiny_sources: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(UnknownVariantError, match="variant 'fp8' is not known; choose one of: fp32"):
        export_model(tiny_sources["bert"], tmp_path / "out", ExportOptions(variant="fp8"))


def test_parity_failure_writes_nothing(
    tiny_sources: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A tolerance no export can meet proves the gate is wired to the measured figures.
    impossible = Variant("fp32", "test", min_cosine=1.0 + 1e-9, max_abs_diff=0.0)
    monkeypatch.setitem(variants_module.VARIANTS, "fp32", impossible)
    with pytest.raises(ParityError, match=r"disagrees with torch: 13 sentences: min cosine"):
        export_model(tiny_sources["bert"], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []  # no staging directory left behind


def test_will_not_overwrite_a_foreign_directory(tiny_sources: dict[str, Path], tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("mine")
    with pytest.raises(OutputDirectoryError, match="is not an embedrt artefact"):
        export_model(tiny_sources["bert"], precious)
    assert (precious / "notes.txt").read_text() == "mine"


def test_reexport_replaces_an_artefact(tiny_sources: dict[str, Path], tmp_path: Path) -> None:
    target = tmp_path / "artefact"
    first = export_model(tiny_sources["distilbert"], target, ExportOptions(check=False))
    assert first.parity == {}
    second = export_model(tiny_sources["distilbert"], target)
    assert second.parity["passed"] is True
    assert Embedder.load(target).manifest == second


def test_fp32_optimised_variant_fuses_and_keeps_parity(
    tiny_sources: dict[str, Path], tmp_path: Path
) -> None:
    manifest = export_model(
        tiny_sources["bert"], tmp_path / "opt", ExportOptions(variant="fp32-optimised")
    )
    assert manifest.variant == "fp32-optimised"
    assert manifest.recipe["fused_ops"].get("Attention") == 2  # one per layer
    assert manifest.parity["passed"] is True
    plain = Embedder.load(tmp_path / "opt").embed(["the cat sat", "a dog"])
    assert plain.shape == (2, 32)
