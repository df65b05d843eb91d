"""Every pooling mode sentence-transformers offers, their combinations, and the stages after
pooling (Dense, then Normalize), each against sentence-transformers on torch.

Tiny BERT (from ``_tiny_models``) with other heads composed here: the numpy pooling against
sentence-transformers' own Pooling module, then exported artefacts against
``SentenceTransformer(folder).encode``; Dense weights checksummed; unsupported stages refused.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

if any(importlib.util.find_spec(name) is None for name in ("torch", "optimum", "sentence_transformers")):
    pytest.skip("pooling and stage tests need the [export] extra", allow_module_level=True)

from embedrt.export import ExportOptions, export_model
from embedrt.export.exporter import check_parity
from embedrt.export.source import DENSE_ACTIVATION_CLASSES, read_source
from embedrt.export.variants import get_variant
from embedrt.runtime import ArtefactError, ArtefactNotFoundError, Embedder, Manifest, SourceModelError
from embedrt.runtime.manifest import DENSE_ACTIVATIONS, POOLING_MODES, sha256_file
from embedrt.runtime.pooling import pool
from embedrt.runtime.stages import ACTIVATIONS

pytestmark = pytest.mark.export

HIDDEN = 32  # the tiny models' width
# One batch of mixed lengths (padding), one cut at max_seq_length, the empty string, non-ASCII.
TEXTS = [
    "hello world",
    "",
    "the quick brown fox jumps over the lazy dog " * 4,
    "bank",
    "she deposited money in the bank by the river",
    "éüö naïve café, ok?",
]
LEGACY_FLAGS = {  # an older sentence-transformers' pooling config, three modes set
    "word_embedding_dimension": HIDDEN,
    "pooling_mode_cls_token": True,
    "pooling_mode_mean_tokens": True,
    "pooling_mode_max_tokens": True,
    "pooling_mode_mean_sqrt_len_tokens": False,
    "pooling_mode_weightedmean_tokens": False,
    "pooling_mode_lasttoken": False,
}


def _st_model(folder: Path) -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(folder), device="cpu", local_files_only=True)


def _compose(
    base: Path,
    target: Path,
    pooling: str | Sequence[str],
    dense: Sequence[tuple[int, int, bool, str]] = (),
    normalize: bool = False,
    safe_serialization: bool = True,
) -> Path:
    """Save ``base``'s Transformer with another head: Pooling, Dense (in, out, bias, torch.nn
    activation class), optionally Normalize."""
    import torch
    from sentence_transformers import SentenceTransformer, models

    torch.manual_seed(7)
    modules = [_st_model(base)[0], models.Pooling(HIDDEN, pooling_mode=pooling)]
    for in_features, out_features, bias, activation in dense:
        modules.append(models.Dense(
            in_features, out_features, bias=bias, activation_function=getattr(torch.nn, activation)()
        ))
    if normalize:
        modules.append(models.Normalize())
    model = SentenceTransformer(modules=modules, device="cpu")
    model.save(str(target), safe_serialization=safe_serialization)
    return target


def _assert_matches_torch(source: Path, artefact: Path, texts: Sequence[str] = TEXTS) -> np.ndarray:
    expected = _st_model(source).encode(list(texts), convert_to_numpy=True)
    actual = Embedder.load(artefact).embed(list(texts))
    assert actual.shape == expected.shape
    assert float(np.abs(actual - expected).max()) <= 1e-5
    return actual


def _edit_json(path: Path, change: Callable[[Any], Any]) -> None:
    data = json.loads(path.read_text())
    path.write_text(json.dumps(change(data) or data))


# --- numpy pooling against sentence-transformers' Pooling module --------------------------


@pytest.mark.parametrize(
    "modes",
    [
        *[(mode,) for mode in POOLING_MODES],
        ("cls", "mean"),
        ("lasttoken", "weightedmean", "max"),
        POOLING_MODES,
    ],
    ids=lambda modes: "+".join(modes),
)
def test_pool_matches_the_pooling_module(modes: tuple[str, ...]) -> None:
    import torch
    from sentence_transformers import models

    rng = np.random.default_rng(3)
    # Right padding as embedrt pads, past the longest row too (pad_to_multiple_of).
    lengths, width = (7, 3, 1, 5), 9
    hidden = rng.standard_normal((len(lengths), width, 5)).astype(np.float32)
    mask = (np.arange(width)[None, :] < np.array(lengths)[:, None]).astype(np.int64)
    module = models.Pooling(5, pooling_mode=modes if len(modes) > 1 else modes[0])
    features = {"token_embeddings": torch.from_numpy(hidden), "attention_mask": torch.from_numpy(mask)}
    expected = module(features)["sentence_embedding"].numpy()
    actual = pool(hidden, mask, "+".join(modes))
    assert actual.shape == expected.shape == (len(lengths), 5 * len(modes))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-6)


def test_pool_refuses_an_unknown_mode() -> None:
    mask = np.ones((1, 2), np.int64)
    with pytest.raises(ValueError, match="'median' \\(in 'cls\\+median'\\) is not one of mean, cls"):
        pool(np.zeros((1, 2, 3), np.float32), mask, "cls+median")


# --- pooling through export and the runtime -----------------------------------------------


@pytest.mark.parametrize(
    "pooling",
    [*POOLING_MODES, ("lasttoken", "mean", "cls")],
    ids=lambda pooling: pooling if isinstance(pooling, str) else "+".join(pooling),
)
def test_pooling_mode_export_matches_torch(
    tiny_sources: dict[str, Path], tmp_path: Path, pooling: str | tuple[str, ...]
) -> None:
    source = _compose(tiny_sources["bert"], tmp_path / "model", pooling)
    manifest = export_model(source, tmp_path / "out", ExportOptions(variant="fp32"))
    modes = (pooling,) if isinstance(pooling, str) else pooling
    # The list's order is the concatenation order (sentence-transformers >= 5.4 keeps it).
    assert manifest.pooling == "+".join(modes) and manifest.dim == HIDDEN * len(modes)
    assert manifest.parity is not None and manifest.parity.passed
    _assert_matches_torch(source, tmp_path / "out")


def test_legacy_pooling_flags_concatenate_in_sentence_transformers_order(
    tiny_sources: dict[str, Path], tmp_path: Path
) -> None:
    source = _compose(tiny_sources["bert"], tmp_path / "model", "mean")
    (source / "1_Pooling" / "config.json").write_text(json.dumps(LEGACY_FLAGS))
    manifest = export_model(source, tmp_path / "out", ExportOptions(variant="fp32"))
    assert manifest.pooling == "cls+max+mean" and manifest.dim == 3 * HIDDEN
    _assert_matches_torch(source, tmp_path / "out")


def test_a_pooling_config_with_no_mode_means_mean(
    tiny_sources: dict[str, Path], tmp_path: Path
) -> None:
    source = tmp_path / "model"
    shutil.copytree(tiny_sources["bert"], source)
    unset = {flag: False for flag in LEGACY_FLAGS if flag.startswith("pooling_mode")}
    config = {"word_embedding_dimension": HIDDEN, **unset}
    (source / "1_Pooling" / "config.json").write_text(json.dumps(config))
    assert read_source(source, "model").pooling == "mean"  # as sentence-transformers reads it
    assert _st_model(source)[1].pooling_mode == "mean"


# --- Dense stages ---------------------------------------------------------------------------

# name -> (pooling, Dense stages, Normalize, safetensors): LaBSE-like and distiluse-like heads.
DENSE_MODELS: dict[str, tuple[str, list[tuple[int, int, bool, str]], bool, bool]] = {
    # Two Dense stages, the second without bias, then Normalize: normalised after the Dense.
    "tanh-normalize": ("mean", [(HIDDEN, 24, True, "Tanh"), (24, 16, False, "Identity")], True, True),
    # CLS, one identity Dense and no Normalize, weights in pytorch_model.bin files.
    "identity": ("cls", [(HIDDEN, 20, True, "Identity")], False, False),
}


@pytest.fixture(scope="module")
def dense_sources(tiny_sources: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dense-sources")
    return {
        name: _compose(tiny_sources["bert"], root / name, pooling, dense, normalize, safe)
        for name, (pooling, dense, normalize, safe) in DENSE_MODELS.items()
    }


@pytest.fixture(scope="module")
def dense_artefacts(
    dense_sources: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dense-artefacts")
    for name, source in dense_sources.items():
        export_model(source, root / name, ExportOptions(variant="fp32"))
    return {name: root / name for name in dense_sources}


@pytest.mark.parametrize("name", list(DENSE_MODELS))
def test_dense_model_matches_torch(
    dense_sources: dict[str, Path], dense_artefacts: dict[str, Path], name: str
) -> None:
    pooling, dense, normalize, _ = DENSE_MODELS[name]
    manifest = Manifest.load(dense_artefacts[name])
    assert (manifest.pooling, manifest.normalize, manifest.dim) == (pooling, normalize, dense[-1][1])
    assert [(s.in_features, s.out_features, s.bias) for s in manifest.dense] == [d[:3] for d in dense]
    assert [s.activation for s in manifest.dense] == [d[3].lower() for d in dense]
    assert set(manifest.files) == {"model.onnx", "tokenizer.json", *(s.file for s in manifest.dense)}
    # The export's gate embeds through the Dense stages too, at fp32's limits.
    assert manifest.parity is not None and manifest.parity.passed
    assert manifest.parity.max_abs_diff <= 1e-5
    vectors = _assert_matches_torch(dense_sources[name], dense_artefacts[name])
    norms = np.linalg.norm(vectors, axis=1)
    assert np.allclose(norms, 1.0, atol=1e-6) == normalize


def test_info_lists_the_dense_stages(dense_artefacts: dict[str, Path]) -> None:
    from embedrt.cli import app
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["info", str(dense_artefacts["tanh-normalize"])])
    assert result.exit_code == 0, result.output
    pipeline = next(line for line in result.output.splitlines() if line.startswith("pipeline"))
    files = [s.file for s in Manifest.load(dense_artefacts["tanh-normalize"]).dense]
    assert pipeline.split(None, 1)[1] == (
        f"mean pooling -> Dense {HIDDEN}->24 tanh ({files[0]}) -> Dense 24->16 no bias identity "
        f"({files[1]}) -> L2 normalise"
    )


def test_parity_gate_embeds_through_the_dense_stages(
    dense_sources: dict[str, Path], dense_artefacts: dict[str, Path], tmp_path: Path
) -> None:
    # A consistent artefact (checksums updated) whose Dense weights are not the model's:
    # the gate must see the difference, so it compares the whole pipeline.
    artefact = tmp_path / "altered"
    shutil.copytree(dense_artefacts["tanh-normalize"], artefact)
    with np.load(artefact / "dense_1.npz") as archive:
        weight = archive["weight"]
    np.savez(artefact / "dense_1.npz", weight=weight[::-1])
    _edit_json(artefact / "manifest.json", lambda d: d["files"].update(
        {"dense_1.npz": sha256_file(artefact / "dense_1.npz")}
    ))
    model = read_source(dense_sources["tanh-normalize"], "tanh-normalize")
    assert not check_parity(model, artefact, get_variant("fp32")).passed
    assert check_parity(model, dense_artefacts["tanh-normalize"], get_variant("fp32")).passed


def test_int8_dense_model_passes_its_gate(
    dense_sources: dict[str, Path], tmp_path: Path
) -> None:
    # With --min-cosine: the accuracy search's trial artefacts embed through the Dense stages too.
    options = ExportOptions(variant="int8", min_cosine=0.995)
    manifest = export_model(dense_sources["tanh-normalize"], tmp_path / "int8", options)
    quantisation = manifest.recipe.quantisation
    assert quantisation is not None and quantisation.accuracy_search is not None
    assert manifest.dim == 16 and len(manifest.dense) == 2
    assert manifest.parity is not None and manifest.parity.passed
    assert manifest.parity.tolerance_min_cosine == 0.995
    expected = _st_model(dense_sources["tanh-normalize"]).encode(TEXTS, convert_to_numpy=True)
    actual = Embedder.load(tmp_path / "int8").embed(TEXTS)
    assert float((actual * expected).sum(axis=1).min()) >= 0.99  # both unit length


def test_tampered_dense_weights_are_refused_on_load(
    dense_artefacts: dict[str, Path], tmp_path: Path
) -> None:
    artefact = tmp_path / "tampered"
    shutil.copytree(dense_artefacts["identity"], artefact)
    with np.load(artefact / "dense_0.npz") as archive:
        arrays = {key: archive[key] * np.float32(1.01) for key in archive.files}
    np.savez(artefact / "dense_0.npz", **arrays)
    with pytest.raises(ArtefactError, match=r"dense_0.npz: sha256 does not match manifest.json"):
        Embedder.load(artefact)


def test_dense_weights_of_the_wrong_shape_are_refused(
    dense_artefacts: dict[str, Path], tmp_path: Path
) -> None:
    artefact = tmp_path / "reshaped"
    shutil.copytree(dense_artefacts["identity"], artefact)
    np.savez(artefact / "dense_0.npz", weight=np.zeros((20, 8), np.float32))
    with pytest.raises(ArtefactError, match=r"dense_0.npz: holds .* the manifest's Dense stage needs"):
        Embedder.load(artefact, verify=False)


def test_a_missing_or_unlisted_dense_file_is_refused(
    dense_artefacts: dict[str, Path], tmp_path: Path
) -> None:
    artefact = tmp_path / "unlisted"
    shutil.copytree(dense_artefacts["identity"], artefact)
    _edit_json(artefact / "manifest.json", lambda d: d["files"].pop("dense_0.npz") and None)
    with pytest.raises(ArtefactError, match=r"manifest.json: dense\[0\]: its file 'dense_0.npz' has no sha"):
        Embedder.load(artefact)
    shutil.rmtree(artefact)
    shutil.copytree(dense_artefacts["identity"], artefact)
    (artefact / "dense_0.npz").unlink()
    with pytest.raises(ArtefactNotFoundError, match=r"dense_0.npz is missing from the artefact"):
        Embedder.load(artefact)


def test_a_manifest_before_dense_still_loads(dense_artefacts: dict[str, Path], tmp_path: Path) -> None:
    artefact = tmp_path / "v3"
    shutil.copytree(dense_artefacts["identity"], artefact)
    expected = Embedder.load(artefact).embed(TEXTS)

    def as_version_3(d: dict[str, Any]) -> None:  # no Dense stage, no 'dense' field
        d.update(schema_version=3, dim=HIDDEN)
        d.pop("dense")
        d["files"].pop("dense_0.npz")

    _edit_json(artefact / "manifest.json", as_version_3)
    manifest = Manifest.load(artefact)
    assert manifest.dense == () and manifest.pooling == "cls"
    pooled = Embedder.load(artefact).embed(TEXTS)
    with np.load(artefact / "dense_0.npz") as archive:  # the same pooled vectors, without the Dense
        np.testing.assert_allclose(pooled @ archive["weight"].T + archive["bias"], expected, atol=1e-5)


# --- refusals at export ---------------------------------------------------------------------


def _dense_copy(dense_sources: dict[str, Path], tmp_path: Path) -> Path:
    source = tmp_path / "model"
    shutil.copytree(dense_sources["tanh-normalize"], source)
    return source


@pytest.mark.parametrize(
    ("activation", "message"),
    [
        ("torch.nn.modules.activation.Softplus", "'torch.nn.modules.activation.Softplus'"),
        ("my_package.activations.Swish", "'my_package.activations.Swish'"),
    ],
)
def test_an_unsupported_activation_fails_export(
    dense_sources: dict[str, Path], tmp_path: Path, activation: str, message: str
) -> None:
    source = _dense_copy(dense_sources, tmp_path)
    _edit_json(source / "2_Dense" / "config.json", lambda d: d.update(activation_function=activation))
    expected = rf"2_Dense/config.json: activation_function {message} cannot be reproduced"
    with pytest.raises(SourceModelError, match=expected) as raised:
        export_model(source, tmp_path / "out")
    assert "\n" not in str(raised.value) and "supported: torch.nn Identity, Tanh" in str(raised.value)
    assert not (tmp_path / "out").exists()


def test_a_dense_stage_on_token_embeddings_fails_export(
    dense_sources: dict[str, Path], tmp_path: Path
) -> None:
    source = _dense_copy(dense_sources, tmp_path)
    _edit_json(source / "3_Dense" / "config.json", lambda d: d.update(module_input_name="token_embeddings"))
    with pytest.raises(SourceModelError, match=r"module_input_name is 'token_embeddings'"):
        export_model(source, tmp_path / "out")


def test_dense_sizes_that_do_not_chain_fail_export(
    dense_sources: dict[str, Path], tmp_path: Path
) -> None:
    source = _dense_copy(dense_sources, tmp_path)
    _edit_json(source / "3_Dense" / "config.json", lambda d: d.update(in_features=25))
    with pytest.raises(SourceModelError, match=r"3_Dense: in_features 25 does not match the 24 dimensions"):
        export_model(source, tmp_path / "out")


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("sentence_transformers.models.LayerNorm", r"stage 5 \(sentence_transformers.models.LayerNorm"),
        ("my_package.Reranker", r"stage 5 \(my_package.Reranker"),
    ],
)
def test_an_unknown_stage_fails_export(
    dense_sources: dict[str, Path], tiny_models: ModuleType, tmp_path: Path, kind: str, message: str
) -> None:
    source = tiny_models.add_stage(dense_sources["tanh-normalize"], tmp_path / "model", kind)
    with pytest.raises(SourceModelError, match=message):
        export_model(source, tmp_path / "out")


def test_stages_out_of_order_fail_export(dense_sources: dict[str, Path], tmp_path: Path) -> None:
    source = _dense_copy(dense_sources, tmp_path)
    # Normalize before the Dense stages: the runtime normalises last, so refuse.
    _edit_json(source / "modules.json", lambda stages: [*stages[:2], stages[4], *stages[2:4]])
    with pytest.raises(
        SourceModelError, match=r"stages Transformer -> Pooling -> Normalize -> Dense -> Dense cannot be"
    ):
        export_model(source, tmp_path / "out")


# --- the activation table -------------------------------------------------------------------


def test_activations_match_torch() -> None:
    import torch

    assert set(ACTIVATIONS) == set(DENSE_ACTIVATIONS) == set(DENSE_ACTIVATION_CLASSES.values())
    values = np.linspace(-12, 12, 4801, dtype=np.float32)
    for class_name, name in DENSE_ACTIVATION_CLASSES.items():
        expected = getattr(torch.nn, class_name)()(torch.from_numpy(values)).numpy()
        actual = ACTIVATIONS[name](values)
        assert actual.dtype == np.float32, name
        np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-6, err_msg=name)
