"""Quantised variants: structure, batch invariance, accuracy-aware export, and (real model)
the int8 fidelity targets against sentence-transformers on torch."""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

if importlib.util.find_spec("torch") is None or importlib.util.find_spec("onnx") is None:
    pytest.skip("quantisation tests need the [export] extra", allow_module_level=True)

import onnx
from _helpers import MIXED
from embedrt.export import AccuracyTargetError, ExportOptions, UnknownISAError, export_model, quantize
from embedrt.export.quantize.shapes import fold_shape_arithmetic
from embedrt.runtime import Embedder, Manifest
from embedrt.runtime.manifest import QuantisationRecord
from embedrt.runtime.pooling import row_cosines

Invariance = Callable[[Embedder, list[str], tuple[int, ...]], float]  # conftest's fixture


def _quantisation(artefact: Path) -> QuantisationRecord:
    record = Manifest.load(artefact).recipe.quantisation
    assert record is not None
    return record


def _op_counts(model_file: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in onnx.load(str(model_file)).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def _weight_matmuls(model_file: Path) -> int:
    graph = onnx.load(str(model_file)).graph
    constants = {i.name for i in graph.initializer}
    return sum(n.op_type == "MatMul" and n.input[1] in constants for n in graph.node)


@pytest.mark.export
def test_recipe_matches_the_graph(tiny_bert_int8: Path) -> None:
    recipe = _quantisation(tiny_bert_int8)
    counts = _op_counts(tiny_bert_int8 / "model.onnx")
    assert recipe.layout == "blocks" and recipe.settings["activation_scales"] == "static"
    check = recipe.settings["static_check_result"]
    assert isinstance(check, float) and check >= recipe.settings["static_check_min_cosine"]
    assert recipe.quantised_matmuls == 12  # 2 layers x (Q, K, V, attention out, FFN in, FFN out)
    # Per layer: QAttention (Q, K, V and attention in one kernel) and three MatMulIntegerToFloat.
    assert recipe.quantised_matmul_nodes == 8
    assert counts.get("QAttention", 0) == 2
    assert counts.get("MatMulIntegerToFloat", 0) == 6
    assert counts.get("Attention", 0) == counts.get("Softmax", 0) == counts.get("Split", 0) == 0
    # Weight MatMuls left are the fp32 neurons' (two per layer that has any, with their GELU).
    assert _weight_matmuls(tiny_bert_int8 / "model.onnx") == 2 * counts.get("Gelu", 0)
    # One quantisation per int8 kernel input: static for three, per-token (blocked) for FFN-down.
    graph = onnx.load(str(tiny_bert_int8 / "model.onnx")).graph
    quantize = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    assert len(quantize) == 8
    assert sum(any(a.name == "block_size" for a in n.attribute) for n in quantize) == 2
    # The residual Adds are Sums, so onnxruntime does not fuse its slower SkipLayerNormalization.
    assert counts.get("Sum", 0) == 4 and counts.get("LayerNormalization", 0) == 5
    assert recipe.graph_nodes == sum(counts.values())
    assert recipe.fp32_matmuls == ()
    assert recipe.quantised_gathers == counts.get("GatherBlockQuantized", 0) == 1
    assert recipe.activation_granularity.startswith("static per-tensor for the block inputs")
    parity = Manifest.load(tiny_bert_int8).parity
    assert parity is not None and parity.passed


@pytest.mark.export
def test_per_token_layout_matches_the_graph(tiny_bert_per_token: tuple[Path, QuantisationRecord]) -> None:
    model_file, record = tiny_bert_per_token
    counts = _op_counts(model_file)
    assert record.layout == "per-token"
    assert record.activation_granularity == "per-token"
    # Q, K and V read the same tensor: one kernel per layer, split back into three.
    assert record.quantised_matmuls == 12 and record.quantised_matmul_nodes == 8
    assert counts.get("MatMulIntegerToFloat", 0) == 8
    assert counts.get("Split", 0) == 2
    assert counts.get("QuantizeLinear", 0) == 8  # one per distinct input
    assert record.graph_nodes == sum(counts.values())


def _no_block_matches(*args: Any) -> Any:
    raise quantize.PatternMismatchError("layer 0 attention: expected 3 MatMuls (Q, K, V), found 2")


@pytest.mark.export
def test_search_candidates_follow_the_layout_actually_used(
    tiny_bert: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    from embedrt.export.quantize import layout

    fp32 = tiny_bert / "model.onnx"
    blocks, per_token = quantize.recipe_for("int8"), quantize.recipe_for("int8", layout="per-token")
    # Blocks: Q, K and V go together, so one candidate each; per-token: every MatMul.
    assert len(quantize.search_candidates(fp32, blocks)) == 2 * 4
    assert len(quantize.search_candidates(fp32, per_token)) == 2 * 6
    monkeypatch.setattr(layout, "prepare", _no_block_matches)
    assert len(quantize.search_candidates(fp32, blocks)) == 2 * 6  # it would fall back
    # The fallback keeps a caller's "no smoothing".
    assert quantize.as_per_token(dataclasses.replace(blocks, smoothing_alpha=None)).smoothing_alpha is None


@pytest.mark.export
def test_distilbert_matches_and_stays_faithful(tiny_distilbert_int8: Path, invariance: Invariance) -> None:
    assert _quantisation(tiny_distilbert_int8).layout == "blocks"
    assert _op_counts(tiny_distilbert_int8 / "model.onnx").get("QAttention", 0) == 2
    parity = Manifest.load(tiny_distilbert_int8).parity
    assert parity is not None and parity.passed
    assert invariance(Embedder.load(tiny_distilbert_int8), MIXED, (8, 32)) >= 0.99999


@pytest.mark.export
def test_a_graph_no_pattern_matches_falls_back_to_per_token_and_says_why(
    tiny_sources: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every in-test architecture matches, so a mismatch is simulated (test_patterns.py
    # checks the real ones on altered graphs).
    from embedrt.export.quantize import layout

    monkeypatch.setattr(layout, "prepare", _no_block_matches)
    manifest = export_model(tiny_sources["bert"], tmp_path / "b", ExportOptions(variant="int8"))
    record = _quantisation(tmp_path / "b")
    assert record.layout == "per-token" and record.activation_granularity == "per-token"
    assert record.settings["fallback_reason"] == "layer 0 attention: expected 3 MatMuls (Q, K, V), found 2"
    assert _op_counts(tmp_path / "b" / "model.onnx").get("Split", 0) == 2
    assert manifest.parity is not None and manifest.parity.passed


@pytest.mark.export
def test_shape_arithmetic_is_folded_without_changing_outputs(tiny_bert: Path) -> None:
    import onnxruntime as ort

    artefact = Manifest.load(tiny_bert)
    model = onnx.load(str(tiny_bert / "model.onnx"))
    before = _op_counts(tiny_bert / "model.onnx")
    folded = fold_shape_arithmetic(model)
    after = {n.op_type for n in model.graph.node}
    constants = {i.name for i in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    assert folded > 0
    assert len(model.graph.node) < sum(before.values())
    assert all(n.input[1] in constants for n in model.graph.node if n.op_type == "Reshape")
    assert "Sqrt" in before and "Sqrt" not in after  # the attention scale became a constant
    rng = np.random.default_rng(1)
    feed = {"input_ids": rng.integers(5, 50, (3, 13)), "attention_mask": np.ones((3, 13), np.int64)}
    feed["attention_mask"][1, 9:] = 0
    if "token_type_ids" in artefact.inputs:
        feed["token_type_ids"] = np.zeros((3, 13), np.int64)
    original = ort.InferenceSession(str(tiny_bert / "model.onnx")).run(None, feed)[0]
    simplified = ort.InferenceSession(model.SerializeToString()).run(None, feed)[0]
    np.testing.assert_allclose(simplified, original, atol=1e-6)


@pytest.mark.export
def test_tiny_int8_is_batch_invariant(tiny_bert_int8: Path, invariance: Invariance) -> None:
    assert invariance(Embedder.load(tiny_bert_int8), MIXED, (8, 32)) >= 0.99999


@pytest.mark.export
@pytest.mark.parametrize(
    ("fixture", "variant", "matmul_op", "embedding_bits"),
    [
        ("tiny_bert_int8_edge", "int8-edge", "MatMulIntegerToFloat", 4),
        ("tiny_bert_int4_edge", "int4-edge", "MatMulNBits", 4),
    ],
)
def test_edge_variants_are_checked_artefacts(
    request: pytest.FixtureRequest, fixture: str, variant: str, matmul_op: str, embedding_bits: int,
    invariance: Invariance,
) -> None:
    artefact: Path = request.getfixturevalue(fixture)
    manifest = Manifest.load(artefact)
    recipe = _quantisation(artefact)
    counts = _op_counts(artefact / "model.onnx")
    gathers = [
        n for n in onnx.load(str(artefact / "model.onnx")).graph.node if n.op_type == "GatherBlockQuantized"
    ]
    assert manifest.variant == variant and manifest.parity is not None and manifest.parity.passed
    assert recipe.matmul_op == matmul_op and recipe.quantised_matmuls == 12
    assert counts.get(matmul_op, 0) + counts.get("QAttention", 0) == recipe.quantised_matmul_nodes
    assert [a.i for g in gathers for a in g.attribute if a.name == "bits"] == [embedding_bits]
    # Both edge recipes quantise activations per row (or per row block): batch-invariant too.
    assert invariance(Embedder.load(artefact), MIXED, (8, 32)) >= 0.99999


@pytest.mark.export
def test_explicit_isa_without_vnni_uses_the_saturation_safe_form(
    tiny_sources: dict[str, Path], tmp_path: Path
) -> None:
    options = ExportOptions("int8", isa="avx2", check=False)  # what is checked here is the recipe
    manifest = export_model(tiny_sources["distilbert"], tmp_path / "avx2", options)
    recipe = _quantisation(tmp_path / "avx2")
    assert recipe.target_isa == "avx2" and recipe.settings["target_isa"] == "avx2"
    assert recipe.weight_type == "u8"
    assert manifest.recipe.requires_cpu_flags == ("avx2",)
    assert "token_type_ids" not in manifest.inputs


def test_unknown_isa_fails_when_the_options_are_built() -> None:
    with pytest.raises(
        UnknownISAError, match=r"isa 'sse2' is not a known target; choose one of: avx512_vnni"
    ):
        ExportOptions("int8", isa="sse2")


def test_arm_machines_export_the_vnni_file(monkeypatch: pytest.MonkeyPatch) -> None:
    # One int8 file serves x86 with VNNI and arm64: an ARM machine's default recipe is the
    # avx512_vnni one (s8 weights), whatever /proc/cpuinfo says; arm64 is no --isa choice.
    from embedrt.runtime import cpus

    assert "arm64" not in quantize.ISAS
    monkeypatch.setattr(cpus.platform, "machine", lambda: "aarch64")
    assert quantize.detect_isa() == "avx512_vnni"
    assert quantize.recipe_for("int8") == quantize.recipe_for("int8", "avx512_vnni")
    assert quantize.recipe_for("int8").weight_type == "s8"
    with pytest.raises(UnknownISAError, match=r"arm64 needs no target of its own: it runs the avx512_vnni"):
        ExportOptions("int8", isa="arm64")


def test_recipe_for_names_the_keyword() -> None:
    with pytest.raises(UnknownISAError) as raised:
        quantize.recipe_for("int8", "sse2")
    assert raised.value.param is not None and raised.value.param.keyword == "isa"
    with pytest.raises(quantize.UnknownVariantError, match=r"variant 'fp32' is not a quantised variant"):
        quantize.recipe_for("fp32", "avx2")
    assert quantize.QUANTISED_VARIANTS == ("int8", "int8-edge", "int4-edge")


@pytest.mark.export
def test_unreachable_accuracy_target_fails_clearly(tiny_sources: dict[str, Path], tmp_path: Path) -> None:
    # Every node left in float still differs from torch by rounding (and the int8
    # embedding table stays quantised), so a cosine of exactly 1 cannot be reached.
    with pytest.raises(AccuracyTargetError, match=r"no recipe reaches min cosine 1.0 .* Lower --min-cosine"):
        export_model(tiny_sources["bert"], tmp_path / "out", ExportOptions("int8", min_cosine=1.0))
    assert not (tmp_path / "out").exists()


@pytest.mark.export
def test_reachable_accuracy_target_keeps_sensitive_nodes_float(
    tiny_sources: dict[str, Path], tiny_bert_int8: Path, tmp_path: Path
) -> None:
    parity = Manifest.load(tiny_bert_int8).parity
    assert parity is not None
    target = min(0.99999, 1 - (1 - parity.min_cosine) / 4)  # a quarter of the plain recipe's error
    export_model(tiny_sources["bert"], tmp_path / "acc", ExportOptions("int8", min_cosine=target))
    recipe = _quantisation(tmp_path / "acc")
    assert recipe.accuracy_search is not None and recipe.accuracy_search.calibration_min_cosine >= target
    gate = Manifest.load(tmp_path / "acc").parity
    assert gate is not None and gate.min_cosine >= target  # what the search reached, the gate sees
    kept = recipe.fp32_matmuls
    counts = _op_counts(tmp_path / "acc" / "model.onnx")
    assert recipe.quantised_matmuls == 12 - len(kept)
    kernels = counts.get("MatMulIntegerToFloat", 0) + counts.get("QAttention", 0)
    assert kernels == recipe.quantised_matmul_nodes
    # What is kept float is in the graph as exported (Q, K and V together), beside any
    # fp32 neurons (two weight MatMuls and a GELU each).
    assert _weight_matmuls(tmp_path / "acc" / "model.onnx") == len(kept) + 2 * counts.get("Gelu", 0)


@pytest.mark.export
def test_search_fails_naming_the_best_where_the_sentence_sets_disagree(
    tiny_sources: dict[str, Path], tiny_bert_int8_edge: Path, tmp_path: Path
) -> None:
    """--min-cosine never gives an artefact whose gate misses the target.

    On this model the calibration sentences (what the search measures on) rate the plain
    int8-edge recipe above the target, while the gate's sentences rate it below: a search on
    the calibration sentences alone would stop at once and hand the gate a failing artefact.
    The 4-bit embedding table is never kept float and alone costs more than the target allows
    (even with every MatMul float the gate reads about 0.9985 against a target near 0.9991), so
    the export must fail, name the best it reached, and leave no artefact.
    """
    from embedrt.export.parity import reference_embeddings

    source = tiny_sources["bert"]
    calibration = quantize.calibration_sentences()
    plain = Embedder.load(tiny_bert_int8_edge).embed(calibration)
    calibration_min = float(row_cosines(reference_embeddings(source, calibration), plain).min())
    gate = Manifest.load(tiny_bert_int8_edge).parity
    assert gate is not None and gate.min_cosine < calibration_min  # the two sets disagree
    target = (gate.min_cosine + calibration_min) / 2
    with pytest.raises(AccuracyTargetError, match=f"no recipe reaches min cosine {target}") as raised:
        export_model(source, tmp_path / "out", ExportOptions("int8-edge", min_cosine=target))
    reached = re.search(r"with (\d+) of (\d+) quantisable MatMuls left in float, reached (0\.\d+)",
                        str(raised.value))
    assert reached is not None, str(raised.value)
    assert reached.group(1) == reached.group(2) == "12"  # it tried keeping every MatMul float
    assert float(reached.group(3)) < target
    assert not (tmp_path / "out").exists()


# --- the real model --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stsb(stsb_dev: tuple[list[tuple[str, str]], list[float]]) -> tuple[list[str], np.ndarray]:
    pairs, gold = stsb_dev
    return [text for pair in pairs for text in pair], np.array(gold)


def _spearman_x100(vectors: np.ndarray, gold: np.ndarray) -> float:
    from embedrt.bench.quality import spearman

    return 100 * spearman(row_cosines(vectors[0::2], vectors[1::2]), gold)


@pytest.fixture(scope="module")
def torch_stsb(minilm_torch_stsb: Any) -> Any:
    return minilm_torch_stsb


@pytest.mark.real_model
def test_int8_fidelity_on_stsb_dev(
    minilm_int8: Path, minilm_fp32: Path, stsb: tuple[list[str], np.ndarray], torch_stsb: Any
) -> None:
    texts, gold = stsb
    int8 = Embedder.load(minilm_int8).embed(texts)
    cosines = row_cosines(int8, torch_stsb)
    fp32_spearman = _spearman_x100(Embedder.load(minilm_fp32).embed(texts), gold)
    drop = fp32_spearman - _spearman_x100(int8, gold)
    print(
        f"\nint8 vs torch on STS-B dev: min {cosines.min():.4f} mean {cosines.mean():.5f}; "
        f"Spearman drop {drop:.3f}"
    )
    assert cosines.min() >= 0.99 and cosines.mean() >= 0.997
    assert drop <= 0.3


@pytest.mark.real_model
def test_int8_batch_invariance_on_stsb_dev(
    minilm_int8: Path, stsb: tuple[list[str], np.ndarray], invariance: Invariance
) -> None:
    texts = stsb[0][:600] + [max(stsb[0], key=len) * 6]  # plus a neighbour far over 256 tokens
    worst = invariance(Embedder.load(minilm_int8), texts, (8, 32, 128))
    print(f"\nint8 alone vs batches of 8/32/128: min cosine {worst:.7f}")
    assert worst >= 0.9999


@pytest.mark.real_model
def test_int8_artefact_size(minilm_int8: Path) -> None:
    assert (minilm_int8 / "model.onnx").stat().st_size <= 60e6


@pytest.mark.export
@pytest.mark.parametrize("allowzero", [0, 1])
def test_shape_folding_keeps_literal_zero_reshapes(allowzero: int) -> None:
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    table = numpy_helper.from_array(np.arange(40, dtype=np.float32).reshape(10, 4), "table")
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["h"]),
        helper.make_node("Shape", ["h"], ["shape"], end=2),
        helper.make_node("Concat", ["shape", "heads"], ["target"], axis=0),
        helper.make_node("Reshape", ["h", "target"], ["out"], allowzero=allowzero),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        [table, numpy_helper.from_array(np.array([2, 2], np.int64), "heads")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    folded = fold_shape_arithmetic(model)
    # allowzero=1 reads a 0 in the target as a literal zero, so "copy this dimension" is not
    # expressible: the computed target must stay. Otherwise it becomes [0, 0, 2, 2].
    assert folded == (0 if allowzero else 1)
    ids = np.array([[1, 2, 3], [4, 5, 6]], np.int64)
    out = ort.InferenceSession(model.SerializeToString()).run(None, {"input_ids": ids})[0]
    assert out.shape == (2, 3, 2, 2)
