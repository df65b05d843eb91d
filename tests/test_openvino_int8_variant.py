"""embedrt's int8 decisions as a QDQ graph that OpenVINO compiles (export/quantize/qdq.py).

The study form of ``bench/studies/openvino_int8.py``; not an export variant: on all-MiniLM-L6-v2 it
keeps the fidelity gate but not batch invariance on OpenVINO (bench/results/openvino-int8).
A tiny BERT built in the session: the QDQ graph's structure (which MatMul reads which
QuantizeLinear/DequantizeLinear pair), OpenVINO turning it into int8 kernels, and its vectors
against the onnxruntime int8 artefact of the same model and against fp32.
"""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from embedrt.runtime import Embedder
from embedrt.runtime.pooling import row_cosines

if importlib.util.find_spec("openvino") is None or importlib.util.find_spec("onnx") is None:
    pytest.skip("needs the [openvino] and [export] extras", allow_module_level=True)

import onnx
from embedrt.export.quantize.qdq import FFN_DOWN_WEIGHTS, write_qdq
from embedrt.export.quantize.recipe import SCALES_STATIC, recipe_for

LAYERS = 2  # the tiny BERT's


def _texts(words: list[str]) -> list[str]:
    """Mixed lengths, 1 to ~20 words, so batches pad."""
    return [" ".join(words[(i * 7 + j) % len(words)] for j in range(1 + (i * 5) % 20)) for i in range(40)]


@pytest.fixture(scope="module")
def qdq_graph(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    out = tmp_path_factory.mktemp("qdq") / "model.onnx"
    recipe = recipe_for("int8", "avx512_vnni", scales=SCALES_STATIC)
    return out, write_qdq(tiny_bert / "model.onnx", out, recipe, FFN_DOWN_WEIGHTS)


def test_every_matmul_has_the_expected_qdq_nodes(qdq_graph: tuple[Path, Any]) -> None:
    path, record = qdq_graph
    graph = onnx.load(str(path)).graph
    producer = {o: n for n in graph.node for o in n.output}
    inits = {i.name: i for i in graph.initializer}

    def made_by(tensor: str) -> str:
        node = producer.get(tensor)
        return "constant" if tensor in inits else (node.op_type if node is not None else "input")

    kinds: Counter[tuple[str, str]] = Counter()
    for node in graph.node:
        if node.op_type != "MatMul" or made_by(node.input[1]) not in ("DequantizeLinear", "constant"):
            continue  # attention's activation products (scores, context) stay float
        weight = made_by(node.input[1])
        if weight == "DequantizeLinear":
            codes = inits[producer[node.input[1]].input[0]]
            assert codes.data_type == onnx.TensorProto.INT8, node.name
            axis = [a.i for a in producer[node.input[1]].attribute if a.name == "axis"]
            assert axis == [1], f"{node.name}: weight scales are not per output channel"
        activation = made_by(node.input[0])
        if activation == "DequantizeLinear":
            assert made_by(producer[node.input[0]].input[0]) == "QuantizeLinear", node.name
        kinds[(activation, weight)] += 1
    # Per layer: Q, K, V, output projection and FFN-up on static QDQ inputs; FFN-down int8
    # weights on a float input (OpenVINO quantises it per token); fp32 neurons beside them.
    neuron_layers = kinds[("LayerNormalization", "constant")]
    assert kinds[("DequantizeLinear", "DequantizeLinear")] == 5 * LAYERS
    assert kinds[("Gelu", "DequantizeLinear")] + kinds[("Mul", "DequantizeLinear")] == LAYERS
    assert sum(kinds.values()) == 6 * LAYERS + 2 * neuron_layers
    assert (record.activation_qdq, record.weight_dq) == (5 * LAYERS, 6 * LAYERS)
    ops = Counter(n.op_type for n in graph.node)
    # One QuantizeLinear for Q|K|V, one for the context, one for FFN-up, per layer.
    assert ops["QuantizeLinear"] == 3 * LAYERS
    assert ops["DequantizeLinear"] == 3 * LAYERS + 6 * LAYERS
    assert not any(n.domain == "com.microsoft" for n in graph.node)  # standard ops only


def test_openvino_compiles_the_qdq_inputs_to_int8_kernels(qdq_graph: tuple[Path, Any]) -> None:
    from embedrt.bench.studies.openvino_int8 import int8_kernels

    path, record = qdq_graph
    int8, total = (int(x) for x in int8_kernels(path, "f32", {}).split("/"))
    assert int8 >= record.activation_qdq  # every static QDQ MatMul runs on int8 inputs
    assert total >= record.weight_dq


def test_openvino_runs_it_close_to_onnxruntime_int8_and_fp32(
    qdq_graph: tuple[Path, Any], tiny_bert_int8: Path, tiny_bert: Path, tiny_model_words: list[str]
) -> None:
    from embedrt.bench.peers import openvino_embedder

    path, _ = qdq_graph
    texts = _texts(tiny_model_words)
    embedder, session = openvino_embedder(tiny_bert, path, 2, "f32", "qdq")
    assert session.engine == "openvino f32"
    vectors = embedder.embed(texts)
    fp32 = Embedder.load(tiny_bert).embed(texts)
    to_ort_int8 = row_cosines(vectors, Embedder.load(tiny_bert_int8).embed(texts))
    to_fp32 = row_cosines(vectors, fp32)
    # The same decisions on two engines: as close to each other as each is to fp32.
    assert to_ort_int8.min() >= 0.999, to_ort_int8.min()
    assert to_fp32.min() >= 0.999, to_fp32.min()
    assert np.abs(vectors - fp32).max() > 1e-5  # not the float graph's vectors
