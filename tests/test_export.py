"""Export on tiny models: the manifest it writes, the stages it refuses, its parity gate."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

if importlib.util.find_spec("torch") is None or importlib.util.find_spec("optimum") is None:
    pytest.skip("export tests need the [export] extra", allow_module_level=True)

from types import ModuleType

from embedrt.export import (
    CatalogueMismatchError,
    ExportOptionError,
    ExportOptions,
    OutputDirectoryError,
    UnknownVariantError,
    export_model,
)
from embedrt.export import source as source_module
from embedrt.export import variants as variants_module
from embedrt.export.variants import Variant
from embedrt.runtime import ArtefactError, Embedder, Manifest, ParityError, SourceModelError
from embedrt.runtime.manifest import SCHEMA_VERSION

pytestmark = pytest.mark.export


def test_manifest_describes_the_model(tiny_bert: Path) -> None:
    manifest = Manifest.load(tiny_bert)
    assert (manifest.dim, manifest.pooling, manifest.normalize) == (32, "mean", True)
    assert manifest.max_seq_length == 24  # sentence-transformers' limit, not the 64 positions
    assert list(manifest.inputs) == ["input_ids", "attention_mask", "token_type_ids"]
    assert manifest.output == "last_hidden_state" and manifest.variant == "fp32"
    assert manifest.source.weights_file == "model.safetensors"
    assert len(manifest.source.weights_sha256) == 64
    assert set(manifest.files) == {"model.onnx", "tokenizer.json"}
    assert {"torch", "transformers", "optimum", "onnx", "onnxruntime"} <= set(manifest.versions)
    assert manifest.schema_version == SCHEMA_VERSION
    assert manifest.recipe.dtype == "float32" and manifest.recipe.quantisation is None
    assert manifest.parity is not None and manifest.parity.passed
    assert manifest.parity.min_cosine >= 0.99999 and manifest.parity.max_abs_diff <= 1e-5


def test_distilbert_has_no_token_type_ids(tiny_distilbert: Path) -> None:
    manifest = Manifest.load(tiny_distilbert)
    assert list(manifest.inputs) == ["input_ids", "attention_mask"]
    assert (manifest.pooling, manifest.normalize) == ("cls", False)


def test_refuses_an_unknown_stage_naming_it(
    tiny_sources: dict[str, Path], tiny_models: ModuleType, tmp_path: Path
) -> None:
    source = tiny_models.add_stage(
        tiny_sources["bert"], tmp_path / "with-layernorm", "sentence_transformers.models.LayerNorm"
    )
    with pytest.raises(SourceModelError, match=r"stage 3 \(sentence_transformers.models.LayerNorm"):
        export_model(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"embedding_dimension": 32, "pooling_mode": "attention"}, "pooling mode 'attention' cannot be"),
        ({"embedding_dimension": 32, "pooling_mode": ["mean", "median"]}, "pooling mode 'median' cannot be"),
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


def test_unknown_variant_fails_when_the_options_are_built() -> None:
    with pytest.raises(
        UnknownVariantError, match="variant 'fp8' is not known; choose one of: fp32"
    ) as raised:
        ExportOptions(variant="fp8")
    assert raised.value.param is not None and raised.value.param.keyword == "variant"


@pytest.mark.parametrize(
    ("options", "keyword"),
    [({"threads": 0}, "threads"), ({"min_cosine": 1.5}, "min_cosine"), ({"opset": 0}, "opset")],
)
def test_out_of_range_options_name_their_keyword(options: dict, keyword: str) -> None:
    with pytest.raises(ExportOptionError, match=rf"^{keyword} .* is not accepted; use ") as raised:
        ExportOptions(**options)
    assert raised.value.param is not None and raised.value.param.keyword == keyword
    assert isinstance(raised.value, ValueError)


def test_importing_the_options_loads_no_heavy_library() -> None:
    import subprocess
    import sys

    code = (
        "import sys\nfrom embedrt.export import ExportOptions\n"
        "print(sorted(m for m in ('torch', 'onnx', 'transformers', 'optimum', 'sentence_transformers') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_catalogue_values_are_checked_against_the_source(
    tiny_sources: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from embedrt.export import exporter

    # The tiny BERT as a catalogue model whose entry states another length limit.
    entry = {"dim": 32, "max_seq_length": 128}
    monkeypatch.setattr(source_module, "catalogue", lambda: {"default": "tiny", "models": {"tiny": entry}})
    monkeypatch.setattr(exporter, "resolve_source", lambda source: (tiny_sources["bert"], "tiny"))
    with pytest.raises(
        CatalogueMismatchError, match=r"tiny has max_seq_length 128, but its folder .* gives 24"
    ):
        export_model("tiny", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_manifest_fields_are_checked_on_load(tiny_bert: Path, tmp_path: Path) -> None:
    data = json.loads((tiny_bert / "manifest.json").read_text())
    data["parity"]["passed"] = "yes"
    with pytest.raises(
        ArtefactError, match=r"manifest.json: parity.passed: expected bool, got 'yes'"
    ):
        Manifest.from_dict(data, str(tmp_path / "manifest.json"))


def test_schema_version_1_manifests_still_load(tiny_bert_int8: Path) -> None:
    current = Manifest.load(tiny_bert_int8)
    quantisation = current.recipe.quantisation
    assert quantisation is not None
    v1 = current.to_dict()
    # Version 1, as embedrt wrote it before the typed manifest.
    v1["schema_version"] = 1
    v1["recipe"] = {
        "method": "embedrt quantisation (export/_quantize.py)",
        "recipe": dict(quantisation.settings),
        **{
            k: v
            for k, v in quantisation.__dict__.items()
            if k not in ("settings", "accuracy_search")
            and k not in ("target_isa", "layout", "matmul_op", "weight_type", "activation_granularity")
        },
        "requires_cpu_flags": list(current.recipe.requires_cpu_flags),
    }
    v1["recipe"]["fp32_matmuls"] = list(quantisation.fp32_matmuls)
    v1["recipe"]["ort_ops"] = list(quantisation.ort_ops)
    loaded = Manifest.from_dict(json.loads(json.dumps(v1)))
    assert loaded.recipe.requires_cpu_flags == current.recipe.requires_cpu_flags
    assert loaded.recipe.quantisation is not None
    assert loaded.recipe.quantisation.layout == quantisation.layout
    assert loaded.parity == current.parity
    v1["recipe"]["recipe"] = {"layout": "fused-bert"}  # a version-1 file missing what we read
    with pytest.raises(ArtefactError, match=r"schema_version 1\) and cannot be read .* re-export"):
        Manifest.from_dict(v1)


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


def test_reexport_replaces_an_artefact(
    tiny_sources: dict[str, Path], tiny_bert: Path, tmp_path: Path
) -> None:
    target = tmp_path / "artefact"
    shutil.copytree(tiny_bert, target)  # an artefact of another model is there
    replaced = export_model(tiny_sources["distilbert"], target, ExportOptions(check=False))
    assert replaced.parity is None and replaced.pooling == "cls"
    assert Embedder.load(target).manifest == replaced
    assert [p.name for p in tmp_path.iterdir()] == ["artefact"]  # no staging directory left


def test_fp32_optimised_variant_fuses_and_keeps_parity(
    tiny_sources: dict[str, Path], tiny_bert: Path, tmp_path: Path
) -> None:
    manifest = export_model(tiny_sources["bert"], tmp_path / "opt", ExportOptions(variant="fp32-optimised"))
    assert manifest.variant == "fp32-optimised"
    assert manifest.recipe.fused_ops.get("Attention") == 2  # one per layer
    assert manifest.parity is not None and manifest.parity.passed
    texts = ["the cat sat", "a dog", "the cat sat on the road " * 8]  # the last over 24 tokens
    fused = Embedder.load(tmp_path / "opt").embed(texts)
    # the same model as the plain fp32 graph, up to the fused kernels' float reassociation
    np.testing.assert_allclose(fused, Embedder.load(tiny_bert).embed(texts), atol=1e-5)
