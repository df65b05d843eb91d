"""The attention block: its graph pattern, and its int8 form.

Pattern (from the block input ``x``, a LayerNorm output)::

    3 x  MatMul(x, W) [+ b] -> Reshape [.., .., heads, head] -> Transpose [-> scalar Mul/Div]
    MatMul(Q, K^T) [-> scalar Mul/Div] -> Add(term)... -> Softmax -> MatMul(., V)
    -> Transpose (0, 2, 1, 3) -> Reshape [.., .., hidden] -> MatMul(Wo) [+ bo] -> Add(x) -> LayerNorm

Which projection is Q, K or V follows from where it ends (left or right of the scores,
right of the context). The terms added to the scores are classified by :mod:`.probe` (the
padding mask; a position bias, as MPNet's relative buckets); the eager form (scale after
the scores) and the SDPA form (``sqrt(scale)`` on Q and on K) both match.

int8 form: one ``MatMulIntegerToFloat`` for Q|K|V (smoothed input, V's columns divided by
the context's smoothing factors), then ``MultiHeadAttention`` (fp32 attention with the key
padding mask and the position bias), or ``QAttention`` (Q/K/V and attention in one int8
kernel) where activations are static and there is no position bias; the context into an
int8 output projection; the residual ``Add`` as a ``Sum`` (onnxruntime would fuse Add +
LayerNorm into its slower ``SkipLayerNormalization``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from embedrt.export.quantize.blocks import (
    Bias,
    Residual,
    bias_after,
    match_residual,
    mismatch,
    only_reader,
    other_input,
    residual_sum,
    weight,
)
from embedrt.export.quantize.builders import (
    SYMMETRIC_ROWS,
    FloatArray,
    Kernels,
    int8_weights,
    smoothing_factors,
)

if TYPE_CHECKING:
    from embedrt.export.quantize.calibration import ActivationRange
    from embedrt.export.quantize.graph import GraphView
    from onnx import NodeProto

_BNSH = (0, 2, 1, 3)  # [batch, seq, heads, head] -> [batch, heads, seq, head]
_BNHS = (0, 2, 3, 1)  # ... -> [batch, heads, head, seq] (K transposed)
_MERGED = ([0, 0], [0, -1], [-1, 0])  # Reshape targets' leading dims that keep batch and seq


@dataclass(frozen=True)
class Projection:
    """One of Q, K, V: ``MatMul(x, W) [+ b]``, split into heads, maybe scaled.

    Attributes:
        matmul: the weight MatMul; weight: its [hidden, hidden] weight; bias: the bias Add.
        nodes: the nodes from the MatMul to ``end``, in order.
        layout: ``bnsh`` or ``bnhs`` (K transposed) at ``end``.
        end: the tensor that enters the score or context MatMul.
        factor: the scalar multiplied in on the way (SDPA's sqrt of the scale).
    """

    matmul: NodeProto
    weight: FloatArray
    bias: Bias
    nodes: tuple[NodeProto, ...]
    layout: str
    end: str
    factor: float


@dataclass(frozen=True)
class AttentionBlock:
    """A matched attention block (see the module docstring).

    Attributes:
        index: the layer; x: the block input; q, k, v: the projections.
        heads, head_size: the head split; scale: what the scores are multiplied by.
        terms: tensors added to the scores; :mod:`.probe` sets ``mask`` and ``position_bias``.
        inner: the nodes from the score MatMul to the context Reshape, in order.
        context: the [batch, seq, hidden] tensor entering the output projection.
        out, out_weight, out_bias: the output projection; residual: Add + LayerNorm after it.
        mask: the padding-mask term; position_bias: the tensor to feed as attention bias
            (None without one).
    """

    index: int
    x: str
    q: Projection
    k: Projection
    v: Projection
    heads: int
    head_size: int
    scale: float
    terms: tuple[str, ...]
    inner: tuple[NodeProto, ...]
    context: str
    out: NodeProto
    out_weight: FloatArray
    out_bias: Bias
    residual: Residual
    mask: str = ""
    position_bias: str | None = None

    @property
    def name(self) -> str:
        """How errors name the block."""
        return f"layer {self.index} attention"

    @property
    def qkv_names(self) -> tuple[str, str, str]:
        """The Q, K and V MatMuls' names (quantised or kept float together)."""
        return (self.q.matmul.name, self.k.matmul.name, self.v.matmul.name)


def match(g: GraphView, x: str, index: int) -> AttentionBlock:
    """The attention block reading ``x`` in layer ``index``.

    Raises:
        PatternMismatchError: the graph differs from the pattern (the message says where).
    """
    block = f"layer {index} attention"
    matmuls = [n for n in g.readers.get(x, []) if n.op_type == "MatMul"]
    if len(matmuls) != 3:
        raise mismatch(block, f"expected 3 MatMuls (Q, K, V) reading {x}, found {len(matmuls)}")
    split = [_projection(g, mm, x, block) for mm in matmuls]
    if len({(h, d) for _, h, d in split}) != 1:
        raise mismatch(block, f"Q, K and V split into different heads: {[(h, d) for _, h, d in split]}")
    projections, heads, head = [p for p, _, _ in split], split[0][1], split[0][2]
    ends = {p.end: p for p in projections}
    scores = {
        n.name: n
        for p in projections
        for n in g.readers.get(p.end, [])
        if n.op_type == "MatMul" and n.input[0] in ends and n.input[1] in ends
    }
    if len(scores) != 1:
        raise mismatch(block, f"expected one MatMul of two projections (the scores), found {len(scores)}")
    score = next(iter(scores.values()))
    q, k = ends[score.input[0]], ends[score.input[1]]
    if q.layout != "bnsh" or k.layout != "bnhs":
        raise mismatch(block, f"{score.name}: expected Q [b, h, s, d] times K^T [b, h, d, s]")
    v = next(p for p in projections if p is not q and p is not k)
    if v.layout != "bnsh" or v.factor != 1.0:
        raise mismatch(block, "V is not [batch, heads, seq, head] or is scaled")
    scale, terms, inner, probabilities = _scores(g, score, q.factor * k.factor, block)
    context_mm = only_reader(g, probabilities, ("MatMul",), block)
    if list(context_mm.input) != [probabilities, v.end]:
        raise mismatch(block, f"{context_mm.name}: expected MatMul(probabilities, V)")
    transpose = only_reader(g, str(context_mm.output[0]), ("Transpose",), block)
    if tuple(g.attribute(transpose, "perm", ())) != _BNSH:
        raise mismatch(block, f"{transpose.name}: expected perm (0, 2, 1, 3) after the context MatMul")
    reshape = only_reader(g, str(transpose.output[0]), ("Reshape",), block)
    target = g.const(reshape.input[1])
    if (
        target is None
        or target.shape != (3,)
        or int(target[2]) != heads * head
        or list(target[:2]) not in _MERGED
    ):
        raise mismatch(block, f"{reshape.name}: target {target} does not merge {heads} heads of {head}")
    inner_nodes = (*inner, context_mm, transpose, reshape)
    context = str(reshape.output[0])
    out = only_reader(g, context, ("MatMul",), block)
    wo = weight(g, out, context, block)
    out_bias = bias_after(g, str(out.output[0]), wo.shape[1], block)
    residual = match_residual(g, out_bias.output, x, block)
    found = AttentionBlock(
        index, x, q, k, v, heads, head, scale, tuple(terms), inner_nodes, context, out, wo, out_bias, residual
    )
    _check_enclosed(g, found, block)
    return found


def _projection(g: GraphView, mm: NodeProto, x: str, block: str) -> tuple[Projection, int, int]:
    w = weight(g, mm, x, block)
    bias = bias_after(g, str(mm.output[0]), w.shape[1], block)
    reshape = only_reader(g, bias.output, ("Reshape",), block)
    target = g.const(reshape.input[1])
    if target is None or target.shape != (4,) or min(target[2:]) <= 0 or list(target[:2]) not in _MERGED:
        raise mismatch(block, f"{reshape.name}: target {target} is not a constant [batch, seq, heads, head]")
    if g.attribute(reshape, "allowzero", 0):
        raise mismatch(block, f"{reshape.name}: allowzero=1 cannot be the head split")
    heads, head = int(target[2]), int(target[3])
    if heads * head != w.shape[1]:
        raise mismatch(block, f"{reshape.name}: {heads} heads of {head} do not split {w.shape[1]} columns")
    transpose = only_reader(g, str(reshape.output[0]), ("Transpose",), block)
    perm = tuple(g.attribute(transpose, "perm", ()))
    if perm not in (_BNSH, _BNHS):
        raise mismatch(block, f"{transpose.name}: perm {perm} is not a head transpose")
    layout = "bnsh" if perm == _BNSH else "bnhs"
    nodes = [mm, *([bias.add] if bias.add is not None else []), reshape, transpose]
    end, factor = str(transpose.output[0]), 1.0
    while len(g.readers.get(end, [])) == 1 and end not in g.outputs:
        node = g.readers[end][0]
        if node.op_type in ("Mul", "Div") and node.input[0] == end and g.scalar(node.input[1]) is not None:
            value = g.scalar(node.input[1]) or 0.0
            factor *= value if node.op_type == "Mul" else 1 / value
        elif node.op_type == "Mul" and node.input[1] == end and g.scalar(node.input[0]) is not None:
            factor *= g.scalar(node.input[0]) or 0.0
        elif (
            node.op_type == "Transpose"
            and layout == "bnsh"
            and tuple(g.attribute(node, "perm", ())) == (0, 1, 3, 2)
        ):
            layout = "bnhs"
        else:
            break
        nodes.append(node)
        end = str(node.output[0])
    return Projection(mm, w, bias, tuple(nodes), layout, end, factor), heads, head


def _scores(
    g: GraphView, score: NodeProto, scale: float, block: str
) -> tuple[float, list[str], list[NodeProto], str]:
    """From the score MatMul to the Softmax: (scale, added terms, nodes, probabilities)."""
    nodes, terms = [score], list[str]()
    t = str(score.output[0])
    while True:
        node = only_reader(g, t, ("Mul", "Div", "Add", "Softmax"), block)
        nodes.append(node)
        if node.op_type == "Softmax":
            if g.attribute(node, "axis", -1) not in (-1, 3):
                raise mismatch(block, f"{node.name}: the Softmax is not over the keys (last axis)")
            return scale, terms, nodes, str(node.output[0])
        other = other_input(node, t, block)
        if node.op_type == "Add":
            if g.const(other) is not None:
                raise mismatch(block, f"{node.name}: a constant is added to the scores")
            terms.append(other)
        else:
            value = g.scalar(other)
            if value is None or (node.op_type == "Div" and node.input[0] != t):
                raise mismatch(
                    block, f"{node.name}: the scores are scaled by something not a constant scalar"
                )
            scale *= value if node.op_type == "Mul" else 1 / value
        t = str(node.output[0])


def _check_enclosed(g: GraphView, found: AttentionBlock, block: str) -> None:
    """Every tensor the rewrite removes must be read only inside the block."""
    inside = {n.name for p in (found.q, found.k, found.v) for n in p.nodes} | {n.name for n in found.inner}
    for node in [*found.q.nodes, *found.k.nodes, *found.v.nodes, *found.inner[:-1]]:
        for tensor in node.output:
            outside = [r.name for r in g.readers.get(tensor, []) if r.name not in inside]
            if outside or tensor in g.outputs:
                raise mismatch(
                    block, f"{tensor} is also read outside the block ({outside or 'graph output'})"
                )


@dataclass(frozen=True)
class AttentionSettings:
    """How the layout quantises attention blocks.

    Attributes:
        static: static activation ranges (else per-token scales).
        qattention: write ``QAttention`` (static and no position bias only).
        alpha: smoothing of the block input; context_alpha: of the context (folded into V).
    """

    static: bool
    qattention: bool
    alpha: float | None
    context_alpha: float | None


def rewrite(
    kernels: Kernels,
    block: AttentionBlock,
    settings: AttentionSettings,
    ranges: Mapping[str, ActivationRange],
    mask: str,
    excluded: set[str],
) -> list[str]:
    """Quantise ``block`` through ``kernels``' graph edit; returns the MatMul names made int8.

    ``mask`` is the key padding mask ([batch, seq] int32) or, for ``QAttention``, the lengths.
    Excluding any of Q, K, V keeps the block's attention as exported (its context is then not
    smoothed); excluding the output projection keeps it float.
    """
    g = kernels.g
    p = f"l{block.index}/attention/"
    keep_qkv = bool(excluded & set(block.qkv_names))
    keep_out = block.out.name in excluded
    wo = block.out_weight
    context_range = ranges[block.context]
    s_out = smoothing_factors(
        context_range.absmax, wo, None if keep_out or keep_qkv else settings.context_alpha
    )
    quantised: list[str] = []
    if not keep_qkv:
        g.replace[block.inner[-1].name] = _qkv(kernels, block, settings, ranges[block.x], s_out, mask, p)
        for node in (*block.q.nodes, *block.k.nodes, *block.v.nodes, *block.inner[:-1]):
            g.replace[node.name] = []
        quantised += block.qkv_names
    terms = [block.out_bias.output]  # the output projection kept float: its bias Add stays
    if not keep_out:
        y = p + "out/y"
        w = wo * s_out[:, None]
        if settings.static:
            stat = (context_range.low / s_out, context_range.high / s_out)
            nodes = kernels.static_matmul(block.context, stat, None, w, p + "out/", y, block.out_bias.vector)
            terms = [y]
        else:  # the bias after the row scales: a term of the residual Sum
            nodes = kernels.row_matmul(block.context, None, w, SYMMETRIC_ROWS, p + "out/", y)
            vector = block.out_bias.vector
            terms = [y, *([g.const(p + "out/bias", vector)] if vector is not None else [])]
        g.replace[block.out.name] = nodes
        if block.out_bias.add is not None:
            g.replace[block.out_bias.add.name] = []
        quantised.append(block.out.name)
    g.replace[block.residual.add.name] = [residual_sum([*terms, block.x], block.residual.add, p + "residual")]
    return quantised


def _qkv(
    kernels: Kernels,
    block: AttentionBlock,
    settings: AttentionSettings,
    x_range: ActivationRange,
    s_out: FloatArray,
    mask: str,
    p: str,
) -> list[NodeProto]:
    """The int8 Q|K|V projection and the attention, ending in ``block.context``."""
    from onnx import helper

    g = kernels.g
    hidden = block.q.weight.shape[1]
    zeros = np.zeros(hidden, np.float32)
    biases = [b.vector if b.vector is not None else zeros for b in (block.q.bias, block.k.bias, block.v.bias)]
    # The context is linear in V's columns: its smoothing divides V's weights and bias.
    w = np.concatenate([block.q.weight, block.k.weight, block.v.weight / s_out[None, :]], axis=1)
    b = np.concatenate([biases[0], biases[1], biases[2] / s_out]).astype(np.float32)
    s_in = smoothing_factors(x_range.absmax, w, settings.alpha)
    if settings.static:
        stat = (x_range.low / s_in, x_range.high / s_in)
        if settings.qattention:
            nodes, q, scale, zp = kernels.static_codes(block.x, stat, s_in, p + "qkv/")
            codes, scales, zps = int8_weights(w * s_in[:, None], kernels.weight_bits, kernels.weight_type)
            inputs = [
                q,
                g.const(p + "qkv/w", codes),
                g.const(p + "qkv/b", b),
                scale,
                g.const(p + "qkv/ws", scales),
                mask,
                zp,
                g.const(p + "qkv/wzp", zps),
            ]
            attention = helper.make_node(
                "QAttention",
                inputs,
                [block.context],
                name=p + "qattention",
                domain="com.microsoft",
                num_heads=block.heads,
                scale=float(block.scale),
            )
            return [*nodes, attention]
        nodes = kernels.static_matmul(block.x, stat, s_in, w * s_in[:, None], p + "qkv/", p + "qkv", b)
        bias_input = ""
    else:
        nodes = kernels.row_matmul(block.x, s_in, w * s_in[:, None], SYMMETRIC_ROWS, p + "qkv/", p + "qkv")
        bias_input = g.const(p + "qkv/bias", b)  # after the row scales: MultiHeadAttention adds it
    widths = g.const(p + "widths", np.array([hidden] * 3, np.int64))
    parts = [p + "q", p + "k", p + "v"]
    inputs = [*parts, bias_input, mask, *([block.position_bias] if block.position_bias else [])]
    return [
        *nodes,
        helper.make_node("Split", [p + "qkv", widths], parts, name=p + "split", axis=-1),
        helper.make_node(
            "MultiHeadAttention",
            inputs,
            [block.context],
            name=p + "mha",
            domain="com.microsoft",
            num_heads=block.heads,
            scale=float(block.scale),
        ),
    ]
