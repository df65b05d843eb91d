"""Pattern pieces every block kind shares: weight MatMuls, bias Adds, residual + LayerNorm.

The block kinds have a module each (:mod:`.embedding`, :mod:`.attention`, :mod:`.ffn`);
:mod:`.encoder` walks an exported graph through them. Every check raises
:class:`~embedrt.export.errors.PatternMismatchError` whose message starts with the block
(``layer 3 attention: ...``), so a graph the layout cannot rewrite says where and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from embedrt.export.errors import PatternMismatchError
from embedrt.export.quantize.builders import FloatArray

if TYPE_CHECKING:
    from embedrt.export.quantize.graph import GraphView
    from onnx import NodeProto


def mismatch(block: str, detail: str) -> PatternMismatchError:
    """The error for ``block`` (``layer 3 attention``) not matching: ``detail`` says how."""
    return PatternMismatchError(f"{block}: {detail}")


def only_reader(g: GraphView, tensor: str, ops: tuple[str, ...], block: str) -> NodeProto:
    """The one node reading ``tensor``, which must be one of ``ops`` and have a name.

    Raises:
        PatternMismatchError: ``tensor`` has no reader, several, another op, or is a graph output.
    """
    found = g.readers.get(tensor, [])
    if len(found) != 1 or found[0].op_type not in ops or tensor in g.outputs:
        seen = ", ".join(f"{n.op_type} {n.name}" for n in found) or "nothing"
        raise mismatch(block, f"expected {tensor} to be read by one {'/'.join(ops)}, found {seen}")
    return named(found[0], block)


def named(node: NodeProto, block: str) -> NodeProto:
    """``node``, which must have a name (the rewrite replaces nodes by name).

    Raises:
        PatternMismatchError: it has none.
    """
    if not node.name:
        raise mismatch(block, f"a {node.op_type} node has no name; name every node (the exporter does)")
    return node


def other_input(node: NodeProto, tensor: str, block: str) -> str:
    """The input of a two-input ``node`` that is not ``tensor``.

    Raises:
        PatternMismatchError: ``node`` does not read ``tensor`` and exactly one other tensor.
    """
    others: list[str] = [x for x in node.input if x != tensor]
    if len(node.input) != 2 or len(others) != 1:
        raise mismatch(block, f"{node.name}: expected {node.op_type} of {tensor} and one other tensor")
    return others[0]


def weight(g: GraphView, node: NodeProto, x: str, block: str) -> FloatArray:
    """The constant [K, N] float32 weight of ``MatMul(x, W)``.

    Raises:
        PatternMismatchError: ``node`` is not a MatMul reading ``x`` with such a weight.
    """
    if node.op_type != "MatMul" or node.input[0] != x:
        raise mismatch(block, f"expected a MatMul reading {x}, found {node.op_type} {node.name}")
    w = g.const(node.input[1])
    if w is None or w.ndim != 2 or w.dtype != np.float32:
        raise mismatch(block, f"{node.name}: the weight is not a constant 2-D float32 matrix")
    named(node, block)
    return w.astype(np.float32)


@dataclass(frozen=True)
class Bias:
    """The optional ``Add(y, b)`` after a weight MatMul: the vector, the node, the output."""

    vector: FloatArray | None
    add: NodeProto | None
    output: str


def bias_after(g: GraphView, y: str, width: int, block: str) -> Bias:
    """The ``Add`` of a constant [width] vector that is ``y``'s only reader, if there is one.

    Raises:
        PatternMismatchError: that Add's constant has another shape.
    """
    found = g.readers.get(y, [])
    if len(found) == 1 and found[0].op_type == "Add" and y not in g.outputs:
        add = found[0]
        value = g.const(other_input(add, y, block))
        if value is not None:
            if value.shape != (width,):
                raise mismatch(block, f"{add.name}: a bias of shape {value.shape}, expected ({width},)")
            return Bias(value.astype(np.float32), named(add, block), str(add.output[0]))
    return Bias(None, None, y)


def check_layernorm(g: GraphView, node: NodeProto, block: str) -> None:
    """``node`` must be a LayerNormalization over the last axis with constant scale and bias.

    Raises:
        PatternMismatchError: it is not.
    """
    if node.op_type != "LayerNormalization":
        raise mismatch(block, f"expected LayerNormalization, found {node.op_type} {node.name}")
    if g.attribute(node, "axis", -1) != -1 or len([o for o in node.output if o]) != 1:
        raise mismatch(block, f"{node.name}: not a LayerNormalization over the last axis only")
    if any(g.const(x) is None for x in node.input[1:] if x):
        raise mismatch(block, f"{node.name}: its scale or bias is not a constant")
    named(node, block)


@dataclass(frozen=True)
class Residual:
    """``Add(y, x) -> LayerNormalization``: the end of every block (post-LayerNorm encoders)."""

    add: NodeProto
    norm: NodeProto
    skip: str  # x, the block's input

    @property
    def output(self) -> str:
        """The block's output: the LayerNorm's."""
        return str(self.norm.output[0])


def match_residual(g: GraphView, y: str, x: str, block: str) -> Residual:
    """The residual ``Add(y, x)`` reading the block's result ``y`` and the LayerNorm after it.

    Raises:
        PatternMismatchError: ``y`` is not added to ``x`` and normalised.
    """
    add = only_reader(g, y, ("Add",), block)
    if other_input(add, y, block) != x:
        raise mismatch(block, f"{add.name}: expected the residual Add of {y} and the block input {x}")
    norm = only_reader(g, str(add.output[0]), ("LayerNormalization",), block)
    check_layernorm(g, norm, block)
    return Residual(add, norm, x)


def residual_sum(terms: list[str], add: NodeProto, name: str) -> NodeProto:
    """``Sum(terms)`` into the residual ``add``'s output.

    A ``Sum``, not an ``Add``: onnxruntime would fuse an Add and the LayerNorm after it into
    ``SkipLayerNormalization``, whose CPU kernel measured 2-3x slower than the two apart.
    """
    from onnx import helper

    return helper.make_node("Sum", terms, list(add.output), name=name)
