"""The ``fused-bert`` int8 layout: onnxruntime's BERT fusions, then int8 kernels on their seams.

onnxruntime's transformer optimizer turns each BERT layer into ``Attention``, three MatMuls,
``BiasGelu`` and two ``SkipLayerNormalization`` nodes. This module quantises that graph:

* ``Attention`` becomes ``QAttention``: the Q/K/V projection runs as one int8 GEMM and the
  attention itself in the same kernel, head by head (no 100 MB score tensors between nodes).
* The attention-output and FFN-up MatMuls become ``MatMulIntegerToFloat`` with the bias fused.
* Their inputs, and the attention input, have *static* per-tensor scales from calibration: each
  is a LayerNorm output (bounded per token by construction) or attention's context (a convex
  combination of V rows), so a fixed range holds them; ``static_range_margin`` widens the
  calibrated range because clipping costs far more fidelity than resolution does.
  ``QAttention`` only takes a per-tensor input scale, so per-token scales are not an option here.
* The FFN-down input (GELU output, unbounded, with outliers) keeps *per-token* scales:
  ``ReduceMax -> Mul -> Max`` and a blocked ``QuantizeLinear``. GELU is never below -0.17, so
  the zero point is 16 and the positive range gets 239 of the 255 steps.
* SmoothQuant factors move activation outliers into the weights: for the attention and FFN-up
  inputs as an explicit ``Mul`` (their tensor also feeds the residual), for attention's context
  folded into V's weights and bias (the context is linear in V's columns).
* ``SkipLayerNormalization`` (slow in onnxruntime's CPU kernel: 8.8 vs 3.3 ms for Add +
  LayerNormalization at 32 x 256 x 384) becomes ``Add``/``Sum`` + ``LayerNormalization``.

Every scale is static or per token, so a sentence's vector does not depend on its batch.
A graph the optimizer does not fuse (no ``Attention`` nodes) raises :class:`NotFusable`; the
caller falls back to the per-token layout.
"""

from __future__ import annotations

import collections
import functools
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from embedrt.export._qmath import ActivationRange, activation_ranges, int8_weights, smoothing_factors

GELU_MIN = 0.17  # min over x of x * Phi(x) is -0.16997, at x = -0.7518
DOWN_ZERO_POINT = 16  # 16 steps hold [-0.17, 0] whenever the scale is >= 0.17 / 16


class NotFusable(Exception):
    """onnxruntime's optimizer did not produce the BERT layer pattern this layout needs."""


@dataclass
class _Layer:
    attention: Any
    out: Any  # attention-output dense MatMul
    skip1: Any  # SkipLayerNormalization after it
    inter: Any  # FFN-up MatMul
    gelu: Any  # BiasGelu
    down: Any  # FFN-down MatMul
    skip2: Any
    qkv_names: tuple[str, ...]  # the unfused graph's Q/K/V MatMul names


def fuse(fp32_model: Path) -> Any:
    """onnxruntime's BERT fusions on ``fp32_model``, embeddings left unfused; returns a ModelProto.

    The word-embedding Gather stays a Gather so it can be quantised; the attention mask becomes
    per-sequence lengths (``ReduceSum``), which holds because embedrt always pads on the right.
    The optimizer's result is kept per file (path, size, mtime) and each call parses its own
    copy: an accuracy search quantises the same graph dozens of times.
    """
    import onnx

    return onnx.load_from_string(_fused_bytes(*_file_key(fp32_model)))


def _file_key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


@functools.lru_cache(maxsize=2)
def _fused_bytes(path: str, size: int, mtime_ns: int) -> bytes:
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    options.enable_embed_layer_norm = False
    # num_heads/hidden_size 0: read from the graph. opt_level 0: onnxruntime's own graph
    # optimisations run at load, not baked into the file.
    fused = optimize_model(
        path, model_type="bert", num_heads=0, hidden_size=0, opt_level=0, use_gpu=False,
        optimization_options=options,
    )
    return bytes(fused.model.SerializeToString())


def calibration_ranges(
    fp32_model: Path, model: Any, found: Sequence[_Layer], feeds: Sequence[Mapping[str, np.ndarray]]
) -> dict[str, ActivationRange]:
    """Ranges of the tensors :func:`rewrite` quantises with static scales (and smooths), on the
    fused ``model`` of ``fp32_model``; kept per (file, feeds), as :func:`fuse` is."""
    tensors = {t for L in found for t in (L.attention.input[0], L.out.input[0], L.inter.input[0])}
    names = tuple(sorted(tensors))
    digest = hashlib.sha256()
    for feed in feeds:
        for key in sorted(feed):
            digest.update(key.encode() + np.ascontiguousarray(feed[key]).tobytes())
    key = (*_file_key(fp32_model), names, digest.hexdigest())
    if _RANGES.get("key") != key:
        _RANGES.clear()
        _RANGES.update(key=key, ranges=activation_ranges(model, names, feeds))
    ranges: dict[str, ActivationRange] = _RANGES["ranges"]
    return ranges


_RANGES: dict[str, Any] = {}  # the last calibration_ranges() result and its key


def layers(model: Any, unfused_matmuls: Mapping[str, str]) -> list[_Layer]:
    """The fused graph's BERT layers, in order.

    ``unfused_matmuls`` maps each unfused weight MatMul's name to the tensor it reads; the
    three that read an ``Attention`` node's input are that layer's Q/K/V.

    Raises:
        NotFusable: no Attention node, or a layer that is not Attention -> MatMul ->
            SkipLayerNormalization -> MatMul -> BiasGelu -> MatMul -> SkipLayerNormalization.
    """
    readers: dict[str, list[Any]] = collections.defaultdict(list)
    for node in model.graph.node:
        for name in node.input:
            readers[name].append(node)

    def only(tensor: str, op: str) -> Any:
        found = [n for n in readers[tensor] if n.op_type == op]
        if len(found) != 1:
            raise NotFusable(f"expected one {op} reading {tensor}, found {len(found)}")
        return found[0]

    inits = {i.name: i for i in model.graph.initializer}
    found = []
    for attention in (n for n in model.graph.node if n.op_type == "Attention"):
        out = only(attention.output[0], "MatMul")
        skip1 = only(out.output[0], "SkipLayerNormalization")
        inter = only(skip1.output[0], "MatMul")
        gelu = only(inter.output[0], "BiasGelu")
        down = only(gelu.output[0], "MatMul")
        skip2 = only(down.output[0], "SkipLayerNormalization")
        qkv = _qkv_names(attention, unfused_matmuls)
        layer = _Layer(attention, out, skip1, inter, gelu, down, skip2, qkv)
        _check(layer, inits, unfused_matmuls)
        found.append(layer)
    if not found:
        raise NotFusable("onnxruntime's optimizer fused no Attention node")
    return found


# Attention attributes QAttention reproduces: num_heads; the mask value only as "masked
# weights are exactly 0", which its default of -10000 also gives; unidirectional only when 0.
_ATTENTION_ATTRIBUTES = {"num_heads", "mask_filter_value", "unidirectional"}


def _qkv_names(attention: Any, unfused_matmuls: Mapping[str, str]) -> tuple[str, ...]:
    qkv = tuple(name for name, x in unfused_matmuls.items() if x == attention.input[0])
    if len(qkv) != 3:
        raise NotFusable(f"{attention.name}: cannot tell which MatMuls were its Q/K/V")
    return qkv


def _check(layer: _Layer, inits: Mapping[str, Any], unfused_matmuls: Mapping[str, str]) -> None:
    """Raise NotFusable unless ``layer`` is exactly what :func:`rewrite` knows how to quantise."""
    from onnx import helper

    a = layer.attention
    nodes = (a, layer.out, layer.skip1, layer.inter, layer.gelu, layer.down, layer.skip2)
    if not all(n.name for n in nodes):
        raise NotFusable(f"{a.name or 'an Attention'}: a node of its layer has no name")
    attributes = {x.name: helper.get_attribute_value(x) for x in a.attribute}
    if set(attributes) - _ATTENTION_ATTRIBUTES or attributes.get("unidirectional", 0) != 0:
        raise NotFusable(f"{a.name}: attributes {sorted(attributes)} are more than QAttention reproduces")
    if attributes.get("mask_filter_value", -10000.0) > -10000.0:
        raise NotFusable(f"{a.name}: a mask value above -10000 leaves masked weights non-zero")
    if len(a.input) != 4 or a.input[1] not in inits or a.input[2] not in inits:
        raise NotFusable(f"{a.name}: expected (input, constant weights, constant bias, mask) only")
    width = inits[layer.out.input[1]].dims[0] if layer.out.input[1] in inits else -1
    if inits[a.input[1]].dims[1] != 3 * width:
        raise NotFusable(f"{a.name}: Q, K and V widths differ from the attention output's input")
    for matmul, skip in ((layer.out, layer.skip1), (layer.down, layer.skip2)):
        outputs = [o for o in skip.output if o]
        if len(skip.input) < 5 or skip.input[0] != matmul.output[0] or len(outputs) != 1:
            raise NotFusable(f"{skip.name}: not SkipLayerNormalization(MatMul output, skip, bias)")
    for matmul in (layer.out, layer.inter, layer.down):
        if matmul.name not in unfused_matmuls or matmul.input[1] not in inits:
            raise NotFusable(f"{matmul.name}: not one of the unfused graph's weight MatMuls")


@dataclass(frozen=True)
class FusedSettings:
    """The recipe's numbers this layout uses."""

    weight_bits: int
    weight_type: str  # "s8" or "u8"
    alpha: float | None  # smoothing of the attention and FFN-up inputs
    context_alpha: float | None  # smoothing of attention's context (folded into V)
    margin: float  # static ranges: calibrated range times this


def rewrite(
    g: Any,
    found: Sequence[_Layer],
    settings: FusedSettings,
    excluded: set[str],
    stats: Mapping[str, ActivationRange],
) -> tuple[int, list[str]]:
    """Quantise ``found`` layers of the fused graph held by ``g`` (an ``_quantize._Graph``).

    ``excluded`` holds unfused MatMul names to keep float: any of a layer's Q/K/V keeps its
    whole Attention float. ``stats`` come from :func:`calibration_ranges`. Returns (int8
    kernels written, names of the MatMuls quantised).
    """
    kernels, quantised = 0, []
    down_zp: str | None = None
    for index, layer in enumerate(found):
        p = f"q{index}/"
        keep_attention = bool(excluded & set(layer.qkv_names))
        keep = {n for n in (layer.out.name, layer.inter.name, layer.down.name) if n in excluded}
        wo = g.inits[layer.out.input[1]].astype(np.float32)
        context_alpha = None if layer.out.name in keep else settings.context_alpha
        s_out = _smoothing(stats[layer.out.input[0]], wo, context_alpha)
        # Attention's context is linear in V's columns: fold 1/s_out into V's weights and bias.
        wqkv = g.inits[layer.attention.input[1]].astype(np.float32).copy()
        bqkv = g.inits[layer.attention.input[2]].astype(np.float32).copy()
        hidden = wo.shape[0]
        wqkv[:, 2 * hidden :] /= s_out
        bqkv[2 * hidden :] /= s_out
        if keep_attention:
            g.replace[layer.attention.name] = [
                _copy(
                    layer.attention,
                    [
                        layer.attention.input[0],
                        g.const(p + "wqkv", wqkv),
                        g.const(p + "bqkv", bqkv),
                        *layer.attention.input[3:],
                    ],
                )
            ]
        else:
            g.replace[layer.attention.name] = _qattention(
                g, layer.attention, wqkv, bqkv, stats[layer.attention.input[0]], settings, p
            )
            kernels += 1
            quantised += list(layer.qkv_names)
        out_bias = layer.skip1.input[4]
        if layer.out.name in keep:
            g.replace[layer.skip1.name] = _add_layernorm(
                layer.skip1, [layer.out.output[0], out_bias], p + "ln1"
            )
        else:
            q, scale, zp, nodes = _static_quant(
                g, layer.out.input[0], stats[layer.out.input[0]], s_out, None, settings.margin, p + "out/"
            )
            g.replace[layer.out.name] = nodes + [
                _mif(
                    g, q, wo * s_out[:, None], scale, zp, settings, p + "out/", layer.out.output[0], out_bias
                )
            ]
            g.replace[layer.skip1.name] = _add_layernorm(layer.skip1, [layer.out.output[0]], p + "ln1")
            kernels += 1
            quantised.append(layer.out.name)
        if layer.inter.name not in keep:
            wi = g.inits[layer.inter.input[1]].astype(np.float32)
            s_in = _smoothing(stats[layer.inter.input[0]], wi, settings.alpha)
            q, scale, zp, nodes = _static_quant(
                g,
                layer.inter.input[0],
                stats[layer.inter.input[0]],
                s_in,
                s_in,
                settings.margin,
                p + "inter/",
            )
            g.replace[layer.inter.name] = nodes + [
                _mif(g, q, wi * s_in[:, None], scale, zp, settings, p + "inter/", layer.inter.output[0], None)
            ]
            kernels += 1
            quantised.append(layer.inter.name)
        if layer.down.name not in keep:
            g.replace[layer.down.name], down_zp = _down(g, layer.down, settings, p + "down/", down_zp)
            kernels += 1
            quantised.append(layer.down.name)
        g.replace[layer.skip2.name] = _add_layernorm(
            layer.skip2, [layer.down.output[0], layer.skip2.input[4]], p + "ln2"
        )
    return kernels, quantised


def _smoothing(stat: ActivationRange, weight: np.ndarray, alpha: float | None) -> np.ndarray:
    """SmoothQuant factors for ``weight``'s input (ones when alpha is None)."""
    if alpha is None:
        return np.ones(weight.shape[0], np.float32)
    return smoothing_factors(stat.absmax, np.abs(weight).max(1), alpha)


def _static_quant(
    g: Any,
    x: str,
    stat: ActivationRange,
    smooth: np.ndarray,
    explicit: np.ndarray | None,
    margin: float,
    p: str,
) -> tuple[str, str, str, list[Any]]:
    """u8 quantisation of ``x / smooth`` with a static asymmetric per-tensor range.

    ``explicit`` (the smoothing factors) adds the division as a Mul; None means it is already
    folded upstream. Returns (quantised tensor, scale, zero point, nodes).
    """
    from onnx import helper

    assert stat.low is not None and stat.high is not None
    low = min(0.0, float((stat.low / smooth).min())) * margin
    high = max(0.0, float((stat.high / smooth).max())) * margin
    scale = max(high - low, 1e-8) / 255
    zero_point = int(np.clip(round(-low / scale), 0, 255))
    nodes = []
    if explicit is not None:
        nodes.append(
            helper.make_node(
                "Mul",
                [x, g.const(p + "inv_smooth", (1 / explicit).astype(np.float32))],
                [p + "xs"],
                name=p + "smooth",
            )
        )
        x = p + "xs"
    scale_name = g.const(p + "scale", np.array(scale, np.float32))
    zp_name = g.const(p + "zp", np.array(zero_point, np.uint8))
    nodes.append(helper.make_node("QuantizeLinear", [x, scale_name, zp_name], [p + "q"], name=p + "quant"))
    return p + "q", scale_name, zp_name, nodes


def _weights(w: np.ndarray, settings: FusedSettings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return int8_weights(w, settings.weight_bits, settings.weight_type)


def _mif(
    g: Any,
    q: str,
    w: np.ndarray,
    a_scale: str,
    a_zp: str,
    settings: FusedSettings,
    p: str,
    out: str,
    bias: str | None,
) -> Any:
    from onnx import helper

    codes, scales, zps = _weights(w, settings)
    inputs = [q, g.const(p + "w", codes), a_scale, g.const(p + "ws", scales), a_zp, g.const(p + "wzp", zps)]
    if bias is not None:
        inputs.append(bias)
    return helper.make_node("MatMulIntegerToFloat", inputs, [out], name=p + "int8", domain="com.microsoft")


def _qattention(
    g: Any,
    node: Any,
    wqkv: np.ndarray,
    bqkv: np.ndarray,
    stat: ActivationRange,
    settings: FusedSettings,
    p: str,
) -> list[Any]:
    from onnx import helper

    smooth = _smoothing(stat, wqkv, settings.alpha)
    q, scale, zp, nodes = _static_quant(g, node.input[0], stat, smooth, smooth, settings.margin, p + "qkv/")
    codes, scales, zps = _weights(wqkv * smooth[:, None], settings)
    heads = next(a.i for a in node.attribute if a.name == "num_heads")
    inputs = [
        q,
        g.const(p + "wqkv_q", codes),
        g.const(p + "bqkv", bqkv),
        scale,
        g.const(p + "wqkv_s", scales),
        node.input[3],
        zp,
        g.const(p + "wqkv_zp", zps),
    ]
    return nodes + [
        helper.make_node(
            "QAttention",
            inputs,
            list(node.output[:1]),
            name=p + "qattention",
            domain="com.microsoft",
            num_heads=heads,
        )
    ]


def _down(g: Any, node: Any, settings: FusedSettings, p: str, zp: str | None) -> tuple[list[Any], str]:
    """Per-token quantisation of the GELU output (zero point 16) and the int8 MatMul, row-scaled."""
    from onnx import helper

    k = g.inits[node.input[1]].shape[0]
    x = node.input[0]
    nodes = [
        helper.make_node(
            "ReduceMax", [x, g.const("down_axes", np.array([-1], np.int64))], [p + "max"], name=p + "max"
        ),
        helper.make_node(
            "Mul",
            [p + "max", g.const("down_inv", np.array(1 / (255 - DOWN_ZERO_POINT), np.float32))],
            [p + "scale0"],
            name=p + "scale0",
        ),
        helper.make_node(
            "Max",
            [p + "scale0", g.const("down_floor", np.array(GELU_MIN / DOWN_ZERO_POINT, np.float32))],
            [p + "scale"],
            name=p + "scale",
        ),
    ]
    if zp is None:  # a blocked QuantizeLinear wants a zero point shaped like its scale
        zp = "down_zp"
        nodes += [
            helper.make_node("Shape", [p + "scale"], ["down_scale_shape"], name="down_scale_shape"),
            helper.make_node(
                "Expand",
                [g.const("down_zp_value", np.array([DOWN_ZERO_POINT], np.uint8)), "down_scale_shape"],
                [zp],
                name="down_zp",
            ),
        ]
    nodes.append(
        helper.make_node(
            "QuantizeLinear", [x, p + "scale", zp], [p + "q"], name=p + "quant", axis=-1, block_size=k
        )
    )
    one = g.const("down_one", np.array(1.0, np.float32))
    a_zp = g.const("down_azp", np.array(DOWN_ZERO_POINT, np.uint8))
    mif = _mif(g, p + "q", g.inits[node.input[1]].astype(np.float32), one, a_zp, settings, p, p + "y", None)
    nodes += [mif, helper.make_node("Mul", [p + "y", p + "scale"], list(node.output), name=p + "row_scale")]
    return nodes, zp


def _add_layernorm(skip: Any, terms: list[str], name: str) -> list[Any]:
    """SkipLayerNormalization(input, skip, gamma, beta[, bias]) as Add/Sum + LayerNormalization."""
    from onnx import helper

    eps = next((a.f for a in skip.attribute if a.name == "epsilon"), 1e-12)
    summed = name + "_sum"
    add = helper.make_node(
        "Sum" if len(terms) > 1 else "Add", [*terms, skip.input[1]], [summed], name=name + "_add"
    )
    return [
        add,
        helper.make_node(
            "LayerNormalization",
            [summed, skip.input[2], skip.input[3]],
            [skip.output[0]],
            name=name,
            axis=-1,
            epsilon=eps,
        ),
    ]


def _copy(node: Any, inputs: list[str]) -> Any:
    from onnx import helper

    copy = helper.make_node(node.op_type, inputs, list(node.output), name=node.name, domain=node.domain)
    copy.attribute.extend(node.attribute)
    return copy
