"""The int8 ``blocks`` layout per architecture: pattern matching, structure, parity, invariance.

Tiny models of every architecture the patterns cover (BERT, DistilBERT, MPNet with its
relative position bias, RoBERTa, XLM-RoBERTa), exported and checked against
sentence-transformers on torch by export's own parity gate; graphs altered one block at a
time must fail naming that block.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

if importlib.util.find_spec("torch") is None or importlib.util.find_spec("onnx") is None:
    pytest.skip("pattern tests need the [export] extra", allow_module_level=True)

import onnx
from _helpers import batch_invariance
from embedrt.export import ExportOptions, export_model, quantize
from embedrt.export.quantize.encoder import Encoder, match_encoder
from embedrt.export.quantize.graph import GraphView
from embedrt.export.quantize.shapes import fold_shape_arithmetic
from embedrt.runtime import Embedder, Manifest
from embedrt.runtime.pooling import row_cosines

ARCHITECTURES = ("bert", "distilbert", "mpnet", "roberta", "xlm-roberta")
TEXTS = [
    "the cat",
    "",
    "a man is playing guitar",
    "the cat sat on the road " * 8,  # over the tiny models' 24 tokens
    "dog",
    "hello world " * 3,
    "éèüöä",
    "water tree house car road music piano",
] * 4


def _source(arch: str, request: pytest.FixtureRequest) -> Path:
    fixture = "tiny_sources" if arch in ("bert", "distilbert") else "tiny_encoder_sources"
    sources: dict[str, Path] = request.getfixturevalue(fixture)
    return sources[arch]


@pytest.fixture(scope="module", params=ARCHITECTURES)
def exported(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Path, Path]:
    """(architecture, fp32 artefact, int8 artefact), each through export's parity gate."""
    arch = str(request.param)
    root = tmp_path_factory.mktemp(arch)
    source = _source(arch, request)
    export_model(source, root / "fp32", ExportOptions(variant="fp32"))
    export_model(source, root / "int8", ExportOptions(variant="int8"))
    return arch, root / "fp32", root / "int8"


def _matched(fp32: Path) -> tuple[onnx.ModelProto, Encoder]:
    model = onnx.load(str(fp32 / "model.onnx"))
    fold_shape_arithmetic(model)
    return model, match_encoder(model)


def _op_counts(model_file: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in onnx.load(str(model_file)).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


@pytest.mark.export
def test_every_block_is_matched_and_checked(exported: tuple[str, Path, Path]) -> None:
    arch, fp32, _ = exported
    model, encoder = _matched(fp32)
    assert len(encoder.attention) == len(encoder.ffn) == 2
    for a, f in zip(encoder.attention, encoder.ffn, strict=True):
        assert (a.heads, a.head_size) == (2, 16)
        assert a.scale == pytest.approx(1 / 4)  # 1/sqrt(16), however the graph applies it
        assert a.mask in a.terms
        assert f.activation == "gelu"
    g = GraphView(model)
    if arch == "mpnet":  # the relative position bias, read before its Expand over the batch
        biases = {a.position_bias for a in encoder.attention}
        assert len(biases) == 1 and None not in biases  # computed once, shared by the layers
        bias = biases.pop()
        assert bias is not None and g.producer[bias].op_type != "Expand"
    else:
        assert all(a.position_bias is None for a in encoder.attention)


@pytest.mark.export
def test_int8_structure_parity_and_invariance(exported: tuple[str, Path, Path]) -> None:
    arch, _, int8 = exported
    manifest = Manifest.load(int8)
    record = manifest.recipe.quantisation
    assert record is not None and manifest.parity is not None and manifest.parity.passed
    assert record.layout == "blocks" and record.quantised_matmuls == 12 and record.quantised_matmul_nodes == 8
    counts = _op_counts(int8 / "model.onnx")
    attention_op = "MultiHeadAttention" if arch == "mpnet" else "QAttention"  # a position bias or not
    assert counts.get(attention_op, 0) == 2
    assert counts.get("QAttention", 0) + counts.get("MultiHeadAttention", 0) == 2
    assert counts.get("MatMulIntegerToFloat", 0) == record.quantised_matmul_nodes - counts.get(
        "QAttention", 0
    )
    assert counts.get("Softmax", 0) == counts.get("SkipLayerNormalization", 0) == 0
    assert counts.get("GatherBlockQuantized", 0) == 1
    assert batch_invariance(Embedder.load(int8), TEXTS, (8, 32)) >= 0.99999


@pytest.mark.export
def test_per_token_scales_with_a_position_bias(tiny_encoder_sources: dict[str, Path], tmp_path: Path) -> None:
    fp32 = tmp_path / "fp32"
    export_model(tiny_encoder_sources["mpnet"], fp32, ExportOptions(variant="fp32"))
    out = tmp_path / "int8"
    out.mkdir()
    for name in ("tokenizer.json", "manifest.json"):
        shutil.copyfile(fp32 / name, out / name)
    recipe = quantize.recipe_for("int8", scales="per-token")
    record = quantize.quantize(fp32 / "model.onnx", out / "model.onnx", recipe)
    assert record.layout == "blocks" and record.settings["activation_scales"] == "per-token"
    graph = onnx.load(str(out / "model.onnx")).graph
    attention = [n for n in graph.node if n.op_type == "MultiHeadAttention"]
    # Q/K/V bias added by the attention op after the row scales; the position bias as input 5.
    assert len(attention) == 2 and all(n.input[3] and len(n.input) == 6 for n in attention)
    blocked = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    assert len(blocked) == 8 and all(any(a.name == "block_size" for a in n.attribute) for n in blocked)
    reference = Embedder.load(fp32).embed(TEXTS)
    int8 = Embedder.load(out, verify=False)
    assert row_cosines(reference, int8.embed(TEXTS)).min() >= 0.999
    assert batch_invariance(int8, TEXTS, (8, 32)) >= 0.99999


def _erf_to_sin(encoder: Encoder) -> None:
    next(n for n in encoder.ffn[1].activation_nodes if n.op_type == "Erf").op_type = "Sin"


def _softmax_over_queries(encoder: Encoder) -> None:
    softmax = next(n for n in encoder.attention[0].inner if n.op_type == "Softmax")
    softmax.attribute[0].i = 2


def _heads_not_merged(encoder: Encoder) -> None:
    transpose = encoder.attention[1].inner[-2]
    transpose.attribute[0].ints[:] = [0, 1, 2, 3]


@pytest.mark.export
@pytest.mark.parametrize(
    ("alter", "message"),
    [
        (_erf_to_sin, r"^layer 1 FFN: .*Sin is not an elementwise activation step"),
        (_softmax_over_queries, r"^layer 0 attention: .*the Softmax is not over the keys"),
        (_heads_not_merged, r"^layer 1 attention: .*expected perm \(0, 2, 1, 3\) after the context MatMul"),
    ],
)
def test_a_block_that_does_not_match_is_named(tiny_bert: Path, alter: object, message: str) -> None:
    model, encoder = _matched(tiny_bert)
    assert callable(alter)
    alter(encoder)
    with pytest.raises(quantize.PatternMismatchError, match=message):
        match_encoder(model)


@pytest.mark.export
def test_an_unmatched_graph_is_quantised_per_token_with_the_block_named(
    tiny_bert: Path, tmp_path: Path
) -> None:
    model, encoder = _matched(tiny_bert)
    _erf_to_sin(encoder)  # Sin instead of Erf: the FFN's activation is no longer GELU
    for name in ("tokenizer.json", "manifest.json"):
        shutil.copyfile(tiny_bert / name, tmp_path / name)
    onnx.save(model, str(tmp_path / "altered.onnx"))
    record = quantize.quantize(
        tmp_path / "altered.onnx", tmp_path / "model.onnx", quantize.recipe_for("int8")
    )
    assert record.layout == "per-token"
    assert str(record.settings["fallback_reason"]).startswith("layer 1 FFN: ")
