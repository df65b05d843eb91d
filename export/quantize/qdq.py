"""The ``blocks`` int8 decisions as a standard QDQ graph, for engines that read QDQ (OpenVINO).

The same matched blocks, calibrated ranges, smoothing factors and fp32 neurons as the
onnxruntime int8 graph (:mod:`.layout`, :mod:`.attention`, :mod:`.ffn`), written with
standard ONNX ops only:

- every quantised MatMul reads ``DequantizeLinear(QuantizeLinear(x))`` with embedrt's static
  per-tensor scale and zero point (calibrated range widened by the recipe's margin) and a
  weight ``DequantizeLinear`` of per-output-channel symmetric s8 codes;
- smoothing divides the activation by a ``Mul`` before its ``QuantizeLinear`` (the block
  input is also the residual, so the factors cannot fold into the LayerNorm) and multiplies
  the weight rows before they are quantised; the context's smoothing is folded into V;
- attention's scores, softmax and context, the activation and LayerNorms stay float as
  exported; FFN neurons with massive activations run in a float side path, their columns and
  rows zero in the int8 weights;
- the FFN-down input, which the onnxruntime graph quantises per token at run time, is one of
  :data:`FFN_DOWN_FORMS`: ``weights`` (int8 weight codes only, no activation QDQ: OpenVINO
  quantises the activation per token itself, batch-invariant), ``static`` (a calibrated
  static scale like the other inputs) or ``float`` (fp32 weights).

The engine (OpenVINO's low-precision transformations) turns each activation QDQ pair and
weight DequantizeLinear around a MatMul into an int8 kernel. onnx is imported inside functions.

Measured on all-MiniLM-L6-v2 (bench/studies/openvino_int8.py, bench/results/openvino-int8): OpenVINO
runs every static QDQ MatMul in int8 and keeps the fidelity gate, but not batch invariance
(0.9995-0.9999 against the gate's 0.99999): its float kernels round differently at some batch
shapes (the float graph at bf16 already differs by 8e-6), and a static quantiser turns such a
difference into a whole quantisation step. So this graph is a study form, not an export variant.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from embedrt.export.errors import QuantizationError
from embedrt.export.quantize import ffn
from embedrt.export.quantize.builders import FloatArray, Kernels, int8_weights, smoothing_factors
from embedrt.export.quantize.calibration import ActivationRange, default_calibration
from embedrt.export.quantize.graph import Feed, GraphEdit, Tensor, copy_node, remove_dead
from embedrt.export.quantize.layout import prepare
from embedrt.export.quantize.recipe import LAYOUT_BLOCKS, Recipe

if TYPE_CHECKING:
    from embedrt.export.quantize.attention import AttentionBlock
    from onnx import NodeProto

logger = logging.getLogger(__name__)

FFN_DOWN_WEIGHTS, FFN_DOWN_STATIC, FFN_DOWN_FLOAT = "weights", "static", "float"
FFN_DOWN_FORMS = (FFN_DOWN_WEIGHTS, FFN_DOWN_STATIC, FFN_DOWN_FLOAT)
QDQ_OPSET = 13  # per-axis QuantizeLinear/DequantizeLinear


@dataclass(frozen=True)
class QDQRecord:
    """What :func:`write_qdq` wrote.

    Attributes:
        activation_qdq: MatMuls reading a QuantizeLinear/DequantizeLinear pair (Q, K and V
            count one each).
        weight_dq: MatMuls whose weight is a DequantizeLinear of s8 codes.
        fp32_neurons: FFN neurons run in the float side path, over all layers.
        ffn_down: the FFN-down form (:data:`FFN_DOWN_FORMS`).
        size_bytes: the file written.
    """

    activation_qdq: int
    weight_dq: int
    fp32_neurons: int
    ffn_down: str
    size_bytes: int


def write_qdq(
    fp32_model: Path,
    out_model: Path,
    recipe: Recipe,
    ffn_down: str = FFN_DOWN_WEIGHTS,
    calibration: Sequence[Feed] | None = None,
) -> QDQRecord:
    """Write ``fp32_model``'s QDQ form with ``recipe``'s decisions to ``out_model``.

    ``recipe`` must be a ``blocks`` recipe with s8 weights; its static ranges are calibrated on
    ``calibration`` (None: the calibration sentences, tokenised with the tokenizer beside
    ``fp32_model``).

    Raises:
        QuantizationError: the recipe is not a ``blocks`` recipe with s8 weights, or
            ``ffn_down`` is not one of :data:`FFN_DOWN_FORMS`.
        PatternMismatchError: a block of the graph does not match its pattern.
        FileNotFoundError: the model or the tokenizer for calibration is missing.
    """
    import onnx

    if recipe.layout != LAYOUT_BLOCKS or recipe.weight_type != "s8":
        raise QuantizationError(
            f"the QDQ graph takes a blocks recipe with s8 weights, got layout {recipe.layout!r} and "
            f"weights {recipe.weight_type!r}; use recipe_for('int8', 'avx512_vnni', scales='static')"
        )
    if ffn_down not in FFN_DOWN_FORMS:
        raise QuantizationError(
            f"FFN-down form {ffn_down!r} is not known; choose one of: {', '.join(FFN_DOWN_FORMS)}"
        )
    fp32_model, out_model = Path(fp32_model), Path(out_model)
    feeds = calibration if calibration is not None else default_calibration(fp32_model)
    prepared = prepare(fp32_model, feeds)
    g = GraphEdit(prepared.model())
    kernels = Kernels(g, recipe.weight_bits, recipe.weight_type, recipe.static_range_margin or 1.0)
    counts = {"activation": 0, "weight": 0, "neurons": 0}
    for a in prepared.encoder.attention:
        _attention(kernels, a, recipe, prepared.ranges, counts)
    settings = ffn.FFNSettings(
        static=True,
        alpha=recipe.smoothing_alpha,
        neuron_ratio=recipe.fp32_neuron_ratio,
        max_neurons=recipe.fp32_neurons_max,
    )
    for f in prepared.encoder.ffn:
        _ffn(kernels, f, settings, prepared.ranges, ffn_down, counts)
    g.commit()
    model = g.model
    remove_dead(model.graph)
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = max(opset.version, QDQ_OPSET)
    out_model.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out_model))
    logger.info("wrote the QDQ graph %s (FFN-down %s)", out_model, ffn_down)
    return QDQRecord(
        counts["activation"], counts["weight"], counts["neurons"], ffn_down, out_model.stat().st_size
    )


def _codes(
    kernels: Kernels, x: str, stat: tuple[Tensor, Tensor], smooth: FloatArray | None, prefix: str
) -> tuple[list[NodeProto], str]:
    """``x / smooth`` through QuantizeLinear and DequantizeLinear at the static scale: (nodes, output)."""
    from onnx import helper

    nodes, q, scale, zp = kernels.static_codes(x, stat, smooth, prefix)
    dq = helper.make_node("DequantizeLinear", [q, scale, zp], [prefix + "dq"], name=prefix + "dequant")
    return [*nodes, dq], prefix + "dq"


def _weight(kernels: Kernels, w: FloatArray, prefix: str) -> tuple[NodeProto, str]:
    """``DequantizeLinear`` of ``w``'s per-output-channel s8 codes: (node, output)."""
    from onnx import helper

    codes, scales, zps = int8_weights(w, kernels.weight_bits, kernels.weight_type)
    g = kernels.g
    inputs = [g.const(prefix + "wq", codes), g.const(prefix + "ws", scales), g.const(prefix + "wzp", zps)]
    node = helper.make_node("DequantizeLinear", inputs, [prefix + "w"], name=prefix + "wdequant", axis=1)
    return node, prefix + "w"


def _matmul(
    kernels: Kernels, x: str, w: FloatArray, out: str, prefix: str, name: str
) -> list[NodeProto]:
    """``MatMul(x, DequantizeLinear(s8 codes of w))`` into ``out``."""
    from onnx import helper

    wdq, w_name = _weight(kernels, w, prefix)
    return [wdq, helper.make_node("MatMul", [x, w_name], [out], name=name)]


def _attention(
    kernels: Kernels,
    a: AttentionBlock,
    recipe: Recipe,
    ranges: Mapping[str, ActivationRange],
    counts: dict[str, int],
) -> None:
    """Q, K, V and the output projection on static QDQ inputs; the attention itself as exported."""
    from onnx import helper

    g = kernels.g
    p = f"l{a.index}/attention/"
    context = ranges[a.context]
    s_out = smoothing_factors(context.absmax, a.out_weight, recipe.context_smoothing_alpha)
    # The context is linear in V's columns: its smoothing divides V's weights and bias.
    weights = [a.q.weight, a.k.weight, a.v.weight / s_out[None, :]]
    s_in = smoothing_factors(ranges[a.x].absmax, np.concatenate(weights, axis=1), recipe.smoothing_alpha)
    x = ranges[a.x]
    nodes, xdq = _codes(kernels, a.x, (x.low / s_in, x.high / s_in), s_in, p + "qkv/")
    qkv = {n.name for n in (a.q.matmul, a.k.matmul, a.v.matmul)}
    first = next(n for n in g.model.graph.node if n.name in qkv)  # the pair goes before all three
    g.before[first.name] = nodes
    for part, projection, w in zip("qkv", (a.q, a.k, a.v), weights, strict=True):
        g.replace[projection.matmul.name] = _matmul(
            kernels, xdq, w * s_in[:, None], str(projection.matmul.output[0]), p + part + "/",
            projection.matmul.name,
        )
        counts["activation"] += 1
        counts["weight"] += 1
    bias = a.v.bias
    if bias.add is not None and bias.vector is not None:
        g.replace[bias.add.name] = [
            helper.make_node(
                "Add",
                [str(a.v.matmul.output[0]), g.const(p + "v/bias", (bias.vector / s_out).astype(np.float32))],
                list(bias.add.output),
                name=bias.add.name,
            )
        ]
    out_nodes, cdq = _codes(kernels, a.context, (context.low / s_out, context.high / s_out), None, p + "out/")
    g.replace[a.out.name] = [
        *out_nodes,
        *_matmul(kernels, cdq, a.out_weight * s_out[:, None], str(a.out.output[0]), p + "out/", a.out.name),
    ]
    counts["activation"] += 1
    counts["weight"] += 1


def _ffn(
    kernels: Kernels,
    f: ffn.FFNBlock,
    settings: ffn.FFNSettings,
    ranges: Mapping[str, ActivationRange],
    down_form: str,
    counts: dict[str, int],
) -> None:
    """FFN-up on a static QDQ input, FFN-down in ``down_form``, fp32 neurons beside them."""
    from onnx import helper

    g = kernels.g
    p = f"l{f.index}/ffn/"
    neurons = ffn.fp32_neurons(ranges[f.activated], settings)
    w1, w2 = f.up_weight.copy(), f.down_weight.copy()
    b1 = np.zeros(w1.shape[1], np.float32) if f.up_bias.vector is None else f.up_bias.vector.copy()
    side = (w1[:, neurons], b1[neurons], w2[neurons])
    w1[:, neurons], b1[neurons], w2[neurons] = 0, 0, 0  # act(0) = 0 for every supported activation
    x = ranges[f.x]
    s_in = smoothing_factors(x.absmax, w1, settings.alpha)
    up_nodes, xdq = _codes(kernels, f.x, (x.low / s_in, x.high / s_in), s_in, p + "up/")
    up_y = p + "up/y"
    g.replace[f.up.name] = [*up_nodes, *_matmul(kernels, xdq, w1 * s_in[:, None], up_y, p + "up/", f.up.name)]
    bias = helper.make_node("Add", [up_y, g.const(p + "up/b", b1)], [f.hidden], name=p + "up/bias")
    if f.up_bias.add is not None:
        g.replace[f.up_bias.add.name] = [bias]
    else:
        g.replace[f.up.name].append(bias)
    counts["activation"] += 1
    counts["weight"] += 1
    down_y = str(f.down.output[0]) if not len(neurons) else p + "down/y"
    if down_form == FFN_DOWN_FLOAT:
        w2_name = g.const(p + "down/w", w2)
        down = [helper.make_node("MatMul", [f.activated, w2_name], [down_y], name=f.down.name)]
    elif down_form == FFN_DOWN_WEIGHTS:
        down = _matmul(kernels, f.activated, w2, down_y, p + "down/", f.down.name)
        counts["weight"] += 1
    else:
        act = ranges[f.activated]
        codes, adq = _codes(kernels, f.activated, (act.low, act.high), None, p + "down/")
        down = [*codes, *_matmul(kernels, adq, w2, down_y, p + "down/", f.down.name)]
        counts["activation"] += 1
        counts["weight"] += 1
    if len(neurons):
        down += _neurons(g, f, side, p + "fp32/")
        total = helper.make_node("Add", [down_y, p + "fp32/y"], [str(f.down.output[0])], name=p + "fp32/sum")
        down.append(total)
        counts["neurons"] += len(neurons)
    g.replace[f.down.name] = down


def _neurons(
    g: GraphEdit, f: ffn.FFNBlock, side: tuple[FloatArray, FloatArray, FloatArray], p: str
) -> list[NodeProto]:
    """``act(x @ W1[:, n] + b1[n]) @ W2[n]`` in fp32 into ``p + "y"``, the activation as exported."""
    from onnx import helper

    w1, b1, w2 = side
    renamed = {f.hidden: p + "h"}
    nodes = [
        helper.make_node("MatMul", [f.x, g.const(p + "w1", w1)], [p + "h0"], name=p + "up"),
        helper.make_node("Add", [p + "h0", g.const(p + "b1", b1)], [p + "h"], name=p + "bias"),
    ]
    for node in f.activation_nodes:  # elementwise on scalar constants: the same nodes, renamed
        for out in node.output:
            renamed[out] = p + out
        copy = copy_node(node, [renamed.get(i, i) for i in node.input])
        copy.name = p + node.name
        del copy.output[:]
        copy.output.extend(renamed[o] for o in node.output)
        nodes.append(copy)
    w2_name = g.const(p + "w2", w2)
    nodes.append(helper.make_node("MatMul", [renamed[f.activated], w2_name], [p + "y"], name=p + "down"))
    return nodes
