"""Graph patterns, one per block kind, matched in onnxruntime's fused BERT graph.

A transformer layer is an attention block and an FFN block. Each ``match_*`` function
finds its block's nodes from where the block starts and checks every assumption the
rewrite makes; a mismatch raises :class:`PatternMismatchError` naming the block and what
differed (the ``fused-bert`` layout then falls back to ``per-token``). A new architecture's
pattern is one more ``match_*`` function and its rewrite, not a change to the others.

Patterns (after ``onnxruntime.transformers`` fusions, embeddings left unfused):

* attention: ``Attention(x, Wqkv, bqkv, mask) -> MatMul(Wo) -> SkipLayerNormalization``
* FFN: ``MatMul(Wi) -> BiasGelu -> MatMul(Wd) -> SkipLayerNormalization``
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from embedrt.export.errors import PatternMismatchError
from embedrt.export.quantize.graph import readers as graph_readers

if TYPE_CHECKING:
    from onnx import ModelProto, NodeProto, TensorProto

# Attention attributes QAttention reproduces: num_heads; the mask value only as "masked
# weights are exactly 0", which its default of -10000 also gives; unidirectional only when 0.
_ATTENTION_ATTRIBUTES = {"num_heads", "mask_filter_value", "unidirectional"}


@dataclass(frozen=True)
class AttentionBlock:
    """Fused attention, its output projection and the residual LayerNorm after it.

    Attributes:
        attention: the ``Attention`` node (Q/K/V projection and attention in one).
        out: the attention-output dense MatMul.
        skip: the ``SkipLayerNormalization`` reading ``out``.
        qkv_names: the unfused graph's Q/K/V MatMul names (what an exclusion list names).
    """

    attention: NodeProto
    out: NodeProto
    skip: NodeProto
    qkv_names: tuple[str, ...]


@dataclass(frozen=True)
class FFNBlock:
    """FFN-up MatMul, ``BiasGelu``, FFN-down MatMul and the residual LayerNorm after it."""

    up: NodeProto
    gelu: NodeProto
    down: NodeProto
    skip: NodeProto


@dataclass(frozen=True)
class Layer:
    """One transformer layer of the fused graph."""

    attention: AttentionBlock
    ffn: FFNBlock


class _Graph:
    """What the matchers look nodes up in."""

    def __init__(self, model: ModelProto, unfused_matmuls: Mapping[str, str]) -> None:
        self.readers = graph_readers(model.graph)
        self.inits: dict[str, TensorProto] = {i.name: i for i in model.graph.initializer}
        self.unfused = unfused_matmuls

    def only(self, block: str, tensor: str, op: str) -> NodeProto:
        found: list[NodeProto] = [n for n in self.readers[tensor] if n.op_type == op]
        if len(found) != 1:
            raise PatternMismatchError(f"{block}: expected one {op} reading {tensor}, found {len(found)}")
        return found[0]

    def check_weight_matmul(self, block: str, matmul: NodeProto) -> None:
        if matmul.name not in self.unfused or matmul.input[1] not in self.inits:
            raise PatternMismatchError(
                f"{block}: {matmul.name} is not one of the unfused graph's weight MatMuls"
            )

    def check_skip(self, block: str, matmul: NodeProto, skip: NodeProto) -> None:
        outputs = [o for o in skip.output if o]
        if len(skip.input) < 5 or skip.input[0] != matmul.output[0] or len(outputs) != 1:
            raise PatternMismatchError(
                f"{block}: {skip.name} is not SkipLayerNormalization(MatMul output, skip, bias)"
            )


def match_layers(model: ModelProto, unfused_matmuls: Mapping[str, str]) -> list[Layer]:
    """The fused graph's transformer layers, in order.

    ``unfused_matmuls`` maps each unfused weight MatMul's name to the tensor it reads; the
    three that read an ``Attention`` node's input are that layer's Q/K/V.

    Raises:
        PatternMismatchError: no Attention node, or a block that does not match its pattern.
    """
    graph = _Graph(model, unfused_matmuls)
    found = []
    for attention in (n for n in model.graph.node if n.op_type == "Attention"):
        block = match_attention(graph, attention)
        found.append(Layer(block, match_ffn(graph, block.skip.output[0], attention.name)))
    if not found:
        raise PatternMismatchError("onnxruntime's optimizer fused no Attention node")
    return found


def match_attention(graph: _Graph, attention: NodeProto) -> AttentionBlock:
    """The attention block starting at ``attention``, checked as QAttention can reproduce it.

    Raises:
        PatternMismatchError: the block differs from the pattern (the message says how).
    """
    from onnx import helper

    where = f"attention block {attention.name or '(unnamed)'}"
    out = graph.only(where, attention.output[0], "MatMul")
    skip = graph.only(where, out.output[0], "SkipLayerNormalization")
    qkv = tuple(name for name, x in graph.unfused.items() if x == attention.input[0])
    if len(qkv) != 3:
        raise PatternMismatchError(f"{where}: cannot tell which MatMuls were its Q/K/V")
    if not all(n.name for n in (attention, out, skip)):
        raise PatternMismatchError(f"{where}: a node of the block has no name")
    attributes = {x.name: helper.get_attribute_value(x) for x in attention.attribute}
    if set(attributes) - _ATTENTION_ATTRIBUTES or attributes.get("unidirectional", 0) != 0:
        raise PatternMismatchError(
            f"{where}: attributes {sorted(attributes)} are more than QAttention reproduces"
        )
    if attributes.get("mask_filter_value", -10000.0) > -10000.0:
        raise PatternMismatchError(f"{where}: a mask value above -10000 leaves masked weights non-zero")
    inits = graph.inits
    if len(attention.input) != 4 or attention.input[1] not in inits or attention.input[2] not in inits:
        raise PatternMismatchError(f"{where}: expected (input, constant weights, constant bias, mask) only")
    width = inits[out.input[1]].dims[0] if out.input[1] in inits else -1
    if inits[attention.input[1]].dims[1] != 3 * width:
        raise PatternMismatchError(f"{where}: Q, K and V widths differ from the attention output's input")
    graph.check_skip(where, out, skip)
    graph.check_weight_matmul(where, out)
    return AttentionBlock(attention, out, skip, qkv)


def match_ffn(graph: _Graph, x: str, layer: str) -> FFNBlock:
    """The FFN block reading tensor ``x`` (the attention block's output) in ``layer``.

    Raises:
        PatternMismatchError: the block differs from the pattern (the message says how).
    """
    where = f"FFN block after {layer}"
    up = graph.only(where, x, "MatMul")
    gelu = graph.only(where, up.output[0], "BiasGelu")
    down = graph.only(where, gelu.output[0], "MatMul")
    skip = graph.only(where, down.output[0], "SkipLayerNormalization")
    if not all(n.name for n in (up, gelu, down, skip)):
        raise PatternMismatchError(f"{where}: a node of the block has no name")
    graph.check_skip(where, down, skip)
    for matmul in (up, down):
        graph.check_weight_matmul(where, matmul)
    return FFNBlock(up, gelu, down, skip)
