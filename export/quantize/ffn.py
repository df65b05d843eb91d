"""The feed-forward block: its graph pattern, and its int8 form.

Pattern (from the block input ``x``, the attention block's LayerNorm output)::

    MatMul(x, W1) [+ b1] -> activation -> MatMul(W2) [+ b2] -> Add(x) -> LayerNorm

The activation is any chain of elementwise nodes on scalar constants; :mod:`.probe` names it
by what it computes (GELU, tanh-GELU or ReLU) or refuses it.

int8 form: FFN-up as ``MatMulIntegerToFloat`` on a smoothed input (static or per-token
scales); the activation as exported; FFN-down on per-token scales with zero point 16 (every
supported activation is >= -0.17). The few neurons whose calibrated activation is far above
the others' (massive activations: MPNet's layer-7 neuron 288 reaches ~100, only at the
sequence-boundary tokens, and writes a residual channel through a weight of 8.6) run in fp32
beside the int8 kernels: their FFN-up columns, biases and FFN-down rows are zero in the int8
weights, so neither their quantisation nor their share of a column's weight scale costs the
other tokens precision. The residual ``Add`` becomes a ``Sum`` of the terms.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from embedrt.export.quantize.blocks import (
    Bias,
    Residual,
    bias_after,
    match_residual,
    mismatch,
    named,
    residual_sum,
    weight,
)
from embedrt.export.quantize.builders import (
    GELU_ROWS,
    SYMMETRIC_ROWS,
    FloatArray,
    Kernels,
    smoothing_factors,
)

if TYPE_CHECKING:
    from embedrt.export.quantize.calibration import ActivationRange
    from embedrt.export.quantize.graph import GraphView
    from onnx import NodeProto

_ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Pow", "Erf", "Tanh", "Sigmoid", "Relu", "Gelu", "FastGelu"}
# The activations the layout knows, as one onnxruntime op each (for the fp32 neurons).
ACTIVATION_OPS = {
    "gelu": ("Gelu", "com.microsoft"),
    "gelu_tanh": ("FastGelu", "com.microsoft"),
    "relu": ("Relu", ""),
}


@dataclass(frozen=True)
class FFNBlock:
    """A matched feed-forward block (see the module docstring).

    Attributes:
        index: the layer; x: the block input.
        up, up_weight, up_bias: FFN-up; hidden: the activation's input (after the bias).
        activation_nodes: the activation as exported; activated: its output.
        down, down_weight, down_bias: FFN-down; residual: Add + LayerNorm after it.
        activation: what :mod:`.probe` found the activation computes (``gelu``...).
    """

    index: int
    x: str
    up: NodeProto
    up_weight: FloatArray
    up_bias: Bias
    hidden: str
    activation_nodes: tuple[NodeProto, ...]
    activated: str
    down: NodeProto
    down_weight: FloatArray
    down_bias: Bias
    residual: Residual
    activation: str = ""

    @property
    def name(self) -> str:
        """How errors name the block."""
        return f"layer {self.index} FFN"


def match(g: GraphView, x: str, index: int) -> FFNBlock:
    """The FFN block reading ``x`` in layer ``index``.

    Raises:
        PatternMismatchError: the graph differs from the pattern (the message says where).
    """
    block = f"layer {index} FFN"
    matmuls = [n for n in g.readers.get(x, []) if n.op_type == "MatMul"]
    if len(matmuls) != 1:
        raise mismatch(block, f"expected one MatMul reading {x}, found {len(matmuls)}")
    up = matmuls[0]
    w1 = weight(g, up, x, block)
    up_bias = bias_after(g, str(up.output[0]), w1.shape[1], block)
    nodes, down = _activation(g, up_bias.output, block)
    activated = str(down.input[0])
    w2 = weight(g, down, activated, block)
    if w2.shape != (w1.shape[1], w1.shape[0]):
        raise mismatch(
            block, f"{down.name}: weight {w2.shape} does not map {w1.shape[1]} back to {w1.shape[0]}"
        )
    down_bias = bias_after(g, str(down.output[0]), w2.shape[1], block)
    residual = match_residual(g, down_bias.output, x, block)
    return FFNBlock(
        index, x, up, w1, up_bias, up_bias.output, nodes, activated, down, w2, down_bias, residual
    )


def _activation(g: GraphView, hidden: str, block: str) -> tuple[tuple[NodeProto, ...], NodeProto]:
    """The elementwise nodes from ``hidden`` to the FFN-down MatMul, and that MatMul."""
    nodes: dict[str, NodeProto] = {}
    downs: dict[str, NodeProto] = {}
    frontier = [hidden]
    while frontier:
        tensor = frontier.pop()
        if tensor in g.outputs:
            raise mismatch(block, f"{tensor} inside the activation is a graph output")
        for node in g.readers.get(tensor, []):
            if node.op_type == "MatMul":
                downs[node.name] = node
            elif node.op_type not in _ELEMENTWISE:
                raise mismatch(block, f"{node.name}: {node.op_type} is not an elementwise activation step")
            elif node.name not in nodes:
                nodes[named(node, block).name] = node
                frontier += list(node.output)
    if len(downs) != 1:
        raise mismatch(block, f"expected the activation to feed one MatMul, found {len(downs)}")
    produced = {hidden} | {o for n in nodes.values() for o in n.output}
    for node in nodes.values():
        for tensor in node.input:
            if tensor not in produced and g.scalar(tensor) is None:
                raise mismatch(block, f"{node.name}: the activation also reads {tensor}")
    if not nodes:
        raise mismatch(block, "no activation between FFN-up and FFN-down")
    order = {n.name: i for i, n in enumerate(g.model.graph.node)}
    return tuple(sorted(nodes.values(), key=lambda n: order[n.name])), next(iter(downs.values()))


@dataclass(frozen=True)
class FFNSettings:
    """How the layout quantises FFN blocks.

    Attributes:
        static: static activation ranges for the FFN-up input (else per-token scales).
        alpha: smoothing of the FFN-up input.
        neuron_ratio: neurons whose calibrated max activation exceeds this many times the
            median neuron's run in fp32 (None: none).
        max_neurons: at most this many per layer (the largest).
    """

    static: bool
    alpha: float | None
    neuron_ratio: float | None
    max_neurons: int


def fp32_neurons(activated: ActivationRange, settings: FFNSettings) -> npt.NDArray[np.int64]:
    """The neurons to keep in fp32, from the activation's calibrated range (sorted)."""
    if settings.neuron_ratio is None or settings.max_neurons <= 0:
        return np.zeros(0, np.int64)
    peak = activated.absmax
    largest = np.argsort(-peak)[: settings.max_neurons]
    return np.sort(largest[peak[largest] > settings.neuron_ratio * np.median(peak)]).astype(np.int64)


def rewrite(
    kernels: Kernels,
    block: FFNBlock,
    settings: FFNSettings,
    ranges: Mapping[str, ActivationRange],
    excluded: set[str],
) -> tuple[list[str], int]:
    """Quantise ``block`` through ``kernels``' graph edit.

    Returns the MatMul names made int8 and how many neurons run in fp32. Excluding FFN-down
    keeps it float (and no neuron apart); excluding FFN-up keeps it float.
    """
    g = kernels.g
    p = f"l{block.index}/ffn/"
    keep_up, keep_down = block.up.name in excluded, block.down.name in excluded
    neurons = np.zeros(0, np.int64) if keep_down else fp32_neurons(ranges[block.activated], settings)
    w1, w2 = block.up_weight.copy(), block.down_weight.copy()
    b1 = np.zeros(w1.shape[1], np.float32) if block.up_bias.vector is None else block.up_bias.vector.copy()
    side = (w1[:, neurons], b1[neurons], w2[neurons])
    w1[:, neurons], b1[neurons], w2[neurons] = 0, 0, 0  # act(0) = 0 for every supported activation
    quantised: list[str] = []
    if not keep_up or len(neurons):
        g.replace[block.up.name] = _up(kernels, block, settings, ranges[block.x], w1, b1, keep_up, p)
        if block.up_bias.add is not None:
            g.replace[block.up_bias.add.name] = []
        quantised += [] if keep_up else [block.up.name]
    terms = [block.down_bias.output]  # FFN-down kept float: its bias Add stays
    if not keep_down:
        y = p + "down/y"
        nodes = kernels.row_matmul(block.activated, None, w2, GELU_ROWS, p + "down/", y)
        terms = [y]
        if block.down_bias.vector is not None:
            terms.append(g.const(p + "down/bias", block.down_bias.vector))
        if len(neurons):
            nodes += _neurons(kernels, block, side, p + "fp32/")
            terms.append(p + "fp32/y")
        g.replace[block.down.name] = nodes
        if block.down_bias.add is not None:
            g.replace[block.down_bias.add.name] = []
        quantised.append(block.down.name)
    g.replace[block.residual.add.name] = [residual_sum([*terms, block.x], block.residual.add, p + "residual")]
    return quantised, len(neurons)


def _up(
    kernels: Kernels,
    block: FFNBlock,
    settings: FFNSettings,
    x_range: ActivationRange,
    w1: FloatArray,
    b1: FloatArray,
    keep: bool,
    p: str,
) -> list[NodeProto]:
    """FFN-up into ``block.hidden``: int8 (static or per-token), or float when ``keep``."""
    from onnx import helper

    g = kernels.g
    if keep:  # float, with the fp32 neurons' columns zeroed
        matmul = helper.make_node("MatMul", [block.x, g.const(p + "up/w", w1)], [p + "up/y"], name=p + "up")
        return [
            matmul,
            helper.make_node(
                "Add", [p + "up/y", g.const(p + "up/b", b1)], [block.hidden], name=p + "up/bias"
            ),
        ]
    s_in = smoothing_factors(x_range.absmax, w1, settings.alpha)
    if settings.static:
        stat = (x_range.low / s_in, x_range.high / s_in)
        static: list[NodeProto] = kernels.static_matmul(
            block.x, stat, s_in, w1 * s_in[:, None], p + "up/", block.hidden, b1
        )
        return static
    nodes = kernels.row_matmul(block.x, s_in, w1 * s_in[:, None], SYMMETRIC_ROWS, p + "up/", p + "up/y")
    bias = helper.make_node("Add", [p + "up/y", g.const(p + "up/b", b1)], [block.hidden], name=p + "up/bias")
    return [*nodes, bias]


def _neurons(
    kernels: Kernels, block: FFNBlock, side: tuple[FloatArray, FloatArray, FloatArray], p: str
) -> list[NodeProto]:
    """``act(x @ W1[:, n] + b1[n]) @ W2[n]`` in fp32 into ``p + "y"``."""
    from onnx import helper

    g = kernels.g
    w1, b1, w2 = side
    op, domain = ACTIVATION_OPS[block.activation]
    return [
        helper.make_node("MatMul", [block.x, g.const(p + "w1", w1)], [p + "h0"], name=p + "up"),
        helper.make_node("Add", [p + "h0", g.const(p + "b1", b1)], [p + "h"], name=p + "bias"),
        helper.make_node(op, [p + "h"], [p + "a"], name=p + "activation", domain=domain),
        helper.make_node("MatMul", [p + "a", g.const(p + "w2", w2)], [p + "y"], name=p + "down"),
    ]
