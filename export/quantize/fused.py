"""The ``fused-bert`` int8 layout: onnxruntime's BERT fusions, then int8 kernels on their seams.

onnxruntime's transformer optimizer turns each BERT layer into ``Attention``, three MatMuls,
``BiasGelu`` and two ``SkipLayerNormalization`` nodes (the blocks :mod:`.blocks` matches).
This module quantises that graph:

* ``Attention`` becomes ``QAttention``: the Q/K/V projection runs as one int8 GEMM and the
  attention itself in the same kernel, head by head (no 100 MB score tensors between nodes).
* The attention-output and FFN-up MatMuls become ``MatMulIntegerToFloat`` with the bias fused.
* Their inputs, and the attention input, have *static* per-tensor scales from calibration: each
  is a LayerNorm output (bounded per token by construction) or attention's context (a convex
  combination of V rows), so a fixed range holds them; ``static_range_margin`` widens the
  calibrated range because clipping costs far more fidelity than resolution does.
  ``QAttention`` only takes a per-tensor input scale, so per-token scales are not an option here.
* The FFN-down input (GELU output, unbounded, with outliers) keeps *per-token* scales
  (:data:`~embedrt.export.quantize.builders.GELU_ROWS`): GELU is never below -0.17, so the
  zero point is 16 and the positive range gets 239 of the 255 steps.
* SmoothQuant factors move activation outliers into the weights: for the attention and FFN-up
  inputs as an explicit ``Mul`` (their tensor also feeds the residual), for attention's context
  folded into V's weights and bias (the context is linear in V's columns).
* ``SkipLayerNormalization`` (slow in onnxruntime's CPU kernel: 8.8 vs 3.3 ms for Add +
  LayerNormalization at 32 x 256 x 384) becomes ``Add``/``Sum`` + ``LayerNormalization``.

Every scale is static or per token, so a sentence's vector does not depend on its batch.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from embedrt.export.quantize.blocks import AttentionBlock, FFNBlock, Layer
from embedrt.export.quantize.builders import (
    GELU_ROWS,
    Const,
    FloatArray,
    int8_weights,
    matmul_integer_to_float,
    quantize_rows,
    row_constants,
    row_scale,
    smooth_input,
    smoothing_factors,
)
from embedrt.export.quantize.calibration import ActivationRange, activation_ranges
from embedrt.export.quantize.graph import Feed, GraphEdit, copy_node

if TYPE_CHECKING:
    from onnx import ModelProto, NodeProto


def fuse(fp32_model: Path) -> ModelProto:
    """Onnxruntime's BERT fusions on ``fp32_model``, embeddings left unfused.

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
        path,
        model_type="bert",
        num_heads=0,
        hidden_size=0,
        opt_level=0,
        use_gpu=False,
        optimization_options=options,
    )
    return bytes(fused.model.SerializeToString())


_RangesKey = tuple[str, int, int, tuple[str, ...], str]
_last_ranges: dict[_RangesKey, dict[str, ActivationRange]] = {}  # the last result, by its key


def calibration_ranges(
    fp32_model: Path, model: ModelProto, found: Sequence[Layer], feeds: Sequence[Feed]
) -> dict[str, ActivationRange]:
    """Ranges of the tensors :func:`rewrite` quantises with static scales (and smooths).

    Measured on the fused ``model`` of ``fp32_model``; the last result is kept per (file,
    feeds), as :func:`fuse`'s is.
    """
    tensors = {
        t
        for layer in found
        for t in (layer.attention.attention.input[0], layer.attention.out.input[0], layer.ffn.up.input[0])
    }
    names = tuple(sorted(tensors))
    digest = hashlib.sha256()
    for feed in feeds:
        for name in sorted(feed):
            digest.update(name.encode() + np.ascontiguousarray(feed[name]).tobytes())
    key = (*_file_key(fp32_model), names, digest.hexdigest())
    if key not in _last_ranges:
        _last_ranges.clear()
        _last_ranges[key] = activation_ranges(model, names, feeds)
    return _last_ranges[key]


@dataclass(frozen=True)
class FusedSettings:
    """The recipe's numbers this layout uses."""

    weight_bits: int
    weight_type: str  # "s8" or "u8"
    alpha: float | None  # smoothing of the attention and FFN-up inputs
    context_alpha: float | None  # smoothing of attention's context (folded into V)
    margin: float  # static ranges: calibrated range times this


def rewrite(
    g: GraphEdit,
    found: Sequence[Layer],
    settings: FusedSettings,
    excluded: set[str],
    stats: Mapping[str, ActivationRange],
) -> tuple[int, list[str]]:
    """Quantise the ``found`` layers of the fused graph held by ``g``.

    ``excluded`` holds unfused MatMul names to keep float: any of a layer's Q/K/V keeps its
    whole Attention float. ``stats`` come from :func:`calibration_ranges`. Returns (int8
    kernels written, names of the MatMuls quantised).
    """
    kernels, quantised = 0, list[str]()
    down_zp: str | None = None
    for index, layer in enumerate(found):
        p = f"q{index}/"
        k, names = _rewrite_attention(g, layer.attention, settings, excluded, stats, p)
        kernels, quantised = kernels + k, quantised + names
        k, names, down_zp = _rewrite_ffn(g, layer.ffn, settings, excluded, stats, p, down_zp)
        kernels, quantised = kernels + k, quantised + names
    return kernels, quantised


def _rewrite_attention(
    g: GraphEdit,
    block: AttentionBlock,
    settings: FusedSettings,
    excluded: set[str],
    stats: Mapping[str, ActivationRange],
    p: str,
) -> tuple[int, list[str]]:
    """QAttention (or the float Attention, V rescaled) and the int8 output projection."""
    kernels, quantised = 0, list[str]()
    attention, out = block.attention, block.out
    wo = g.inits[out.input[1]].astype(np.float32)
    keep_out = out.name in excluded
    s_out = smoothing_factors(stats[out.input[0]].absmax, wo, None if keep_out else settings.context_alpha)
    # Attention's context is linear in V's columns: fold 1/s_out into V's weights and bias.
    wqkv = g.inits[attention.input[1]].astype(np.float32).copy()
    bqkv = g.inits[attention.input[2]].astype(np.float32).copy()
    hidden = wo.shape[0]
    wqkv[:, 2 * hidden :] /= s_out
    bqkv[2 * hidden :] /= s_out
    if excluded & set(block.qkv_names):
        inputs = [
            attention.input[0],
            g.const(p + "wqkv", wqkv),
            g.const(p + "bqkv", bqkv),
            *attention.input[3:],
        ]
        g.replace[attention.name] = [copy_node(attention, inputs)]
    else:
        g.replace[attention.name] = _qattention(
            g, attention, wqkv, bqkv, stats[attention.input[0]], settings, p
        )
        kernels += 1
        quantised += list(block.qkv_names)
    out_bias = block.skip.input[4]
    if keep_out:
        g.replace[block.skip.name] = _add_layernorm(block.skip, [out.output[0], out_bias], p + "ln1")
    else:
        q, scale, zp, nodes = _static_quant(
            g, out.input[0], stats[out.input[0]], s_out, None, settings.margin, p + "out/"
        )
        mif = _static_matmul(
            g, q, wo * s_out[:, None], scale, zp, settings, p + "out/", out.output[0], out_bias
        )
        g.replace[out.name] = [*nodes, mif]
        g.replace[block.skip.name] = _add_layernorm(block.skip, [out.output[0]], p + "ln1")
        kernels += 1
        quantised.append(out.name)
    return kernels, quantised


def _rewrite_ffn(
    g: GraphEdit,
    block: FFNBlock,
    settings: FusedSettings,
    excluded: set[str],
    stats: Mapping[str, ActivationRange],
    p: str,
    down_zp: str | None,
) -> tuple[int, list[str], str | None]:
    """Static-scale int8 FFN-up, per-token int8 FFN-down; returns the down zero-point tensor."""
    kernels, quantised = 0, list[str]()
    up, down = block.up, block.down
    if up.name not in excluded:
        wi = g.inits[up.input[1]].astype(np.float32)
        s_in = smoothing_factors(stats[up.input[0]].absmax, wi, settings.alpha)
        q, scale, zp, nodes = _static_quant(
            g, up.input[0], stats[up.input[0]], s_in, s_in, settings.margin, p + "inter/"
        )
        mif = _static_matmul(g, q, wi * s_in[:, None], scale, zp, settings, p + "inter/", up.output[0], None)
        g.replace[up.name] = [*nodes, mif]
        kernels += 1
        quantised.append(up.name)
    if down.name not in excluded:
        g.replace[down.name], down_zp = _down(g, down, settings, p + "down/", down_zp)
        kernels += 1
        quantised.append(down.name)
    g.replace[block.skip.name] = _add_layernorm(block.skip, [down.output[0], block.skip.input[4]], p + "ln2")
    return kernels, quantised, down_zp


def _static_quant(
    g: GraphEdit,
    x: str,
    stat: ActivationRange,
    smooth: FloatArray,
    explicit: FloatArray | None,
    margin: float,
    p: str,
) -> tuple[str, str, str, list[NodeProto]]:
    """u8 quantisation of ``x / smooth`` with a static asymmetric per-tensor range.

    ``explicit`` (the smoothing factors) adds the division as a Mul; None means it is already
    folded upstream. Returns (quantised tensor, scale, zero point, nodes).
    """
    from onnx import helper

    low = min(0.0, float((stat.low / smooth).min())) * margin
    high = max(0.0, float((stat.high / smooth).max())) * margin
    scale = max(high - low, 1e-8) / 255
    zero_point = int(np.clip(round(-low / scale), 0, 255))
    nodes = []
    if explicit is not None:
        nodes.append(smooth_input(g, x, explicit, p, name=p + "smooth"))
        x = p + "xs"
    scale_name = g.const(p + "scale", np.array(scale, np.float32))
    zp_name = g.const(p + "zp", np.array(zero_point, np.uint8))
    nodes.append(helper.make_node("QuantizeLinear", [x, scale_name, zp_name], [p + "q"], name=p + "quant"))
    return p + "q", scale_name, zp_name, nodes


def _static_matmul(
    g: GraphEdit,
    q: str,
    w: FloatArray,
    a_scale: str,
    a_zp: str,
    settings: FusedSettings,
    p: str,
    out: str,
    bias: str | None,
) -> NodeProto:
    codes, scales, zps = int8_weights(w, settings.weight_bits, settings.weight_type)
    inputs: list[str | Const] = [q, (p + "w", codes), a_scale, (p + "ws", scales), a_zp, (p + "wzp", zps)]
    node: NodeProto = matmul_integer_to_float(g, inputs, out, p + "int8", bias)
    return node


def _qattention(
    g: GraphEdit,
    node: NodeProto,
    wqkv: FloatArray,
    bqkv: FloatArray,
    stat: ActivationRange,
    settings: FusedSettings,
    p: str,
) -> list[NodeProto]:
    from onnx import helper

    smooth = smoothing_factors(stat.absmax, wqkv, settings.alpha)
    q, scale, zp, nodes = _static_quant(g, node.input[0], stat, smooth, smooth, settings.margin, p + "qkv/")
    codes, scales, zps = int8_weights(wqkv * smooth[:, None], settings.weight_bits, settings.weight_type)
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
    return [
        *nodes,
        helper.make_node(
            "QAttention",
            inputs,
            list(node.output[:1]),
            name=p + "qattention",
            domain="com.microsoft",
            num_heads=heads,
        ),
    ]


def _down(
    g: GraphEdit, node: NodeProto, settings: FusedSettings, p: str, zp: str | None
) -> tuple[list[NodeProto], str]:
    """Per-token quantisation of the GELU output and the int8 MatMul, row-scaled."""
    w = g.inits[node.input[1]].astype(np.float32)
    rows = quantize_rows(g, node.input[0], w.shape[0], GELU_ROWS, p, zp)
    one, activation_zp = (g.const(*c) for c in row_constants(g, GELU_ROWS))
    codes, scales, zps = int8_weights(w, settings.weight_bits, settings.weight_type)
    mif = matmul_integer_to_float(
        g,
        [rows.q, (p + "w", codes), one, (p + "ws", scales), activation_zp, (p + "wzp", zps)],
        p + "y",
        p + "int8",
    )
    return [
        *rows.nodes,
        mif,
        row_scale(p + "y", rows.scale, node.output[0], p + "row_scale"),
    ], rows.zero_point


def _add_layernorm(skip: NodeProto, terms: list[str], name: str) -> list[NodeProto]:
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
