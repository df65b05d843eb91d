"""A model's arithmetic, read from its ONNX graph: FLOPs per token and attention's S² terms.

Two kinds of matrix products make up a transformer encoder's work:

- products with a weight matrix (Q/K/V, attention output, FFN up and down): ``2·K·N`` FLOPs
  per token for a ``K×N`` weight, whatever the sequence length;
- attention's products of activations (scores ``Q·Kᵀ`` and context ``P·V``): ``2·S·H`` FLOPs
  per token each, for a sequence of ``S`` tokens and attention width ``H``, so ``2·S²·H`` per
  sequence.

Both are counted from the graph itself (initialiser shapes, fused attention nodes), so a
different model or variant needs no table here. Integer and float products count alike: one
multiply-add is two operations.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embedrt.runtime.errors import EmbedrtError, MissingExtraError

# Products of an activation with a weight matrix (its input 1 is a 2-D initialiser).
WEIGHT_GEMM_OPS = frozenset({
    "MatMul", "Gemm", "FusedMatMul", "MatMulInteger", "MatMulIntegerToFloat",
    "DynamicQuantizeMatMul", "QGemm", "QLinearMatMul",
})
# Fused attention: a packed Q/K/V weight [K, 3H] plus scores and context inside the node.
FUSED_ATTENTION_OPS = frozenset({"Attention", "QAttention"})
# onnxruntime's int8 GEMM kernels: a graph holding any of these runs its weight products in int8.
INT8_GEMM_OPS = frozenset({
    "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QGemm", "QLinearMatMul",
    "QAttention", "ConvInteger",
})
# Weight input of each op kind (QLinearMatMul carries scales and zero points between them).
_WEIGHT_INPUT = {"QLinearMatMul": 3}


class GraphArithmeticError(EmbedrtError, ValueError):
    """The graph has a matrix product whose arithmetic cannot be read from it."""


@dataclass(frozen=True)
class ModelArithmetic:
    """FLOPs of one forward pass, as a function of each text's token count.

    Attributes:
        weight_flops_per_token: ``Σ 2·K·N`` over every weight product.
        attention_flops_per_token_sq: ``Σ 2·H`` over attention's activation products: a text of
            ``n`` tokens costs this times ``n²`` in scores and context.
        weight_products: how many weight products were counted.
        attention_products: how many activation products (two per attention layer).
        attention_widths: the attention width ``H`` found for each activation product.
        precision: ``int8`` when the weight products run in onnxruntime's integer kernels, else ``fp32``.
    """

    weight_flops_per_token: int
    attention_flops_per_token_sq: int
    weight_products: int
    attention_products: int
    attention_widths: tuple[int, ...]
    precision: str

    def text_flops(self, tokens: int) -> int:
        """FLOPs to embed one text of ``tokens`` tokens, alone and unpadded."""
        return tokens * self.weight_flops_per_token + tokens * tokens * self.attention_flops_per_token_sq

    def useful_flops(self, token_counts: Iterable[int]) -> int:
        """FLOPs the texts need: each at its own length (padding is not useful work)."""
        return sum(self.text_flops(int(n)) for n in token_counts)

    def padded_flops(self, rows: int, width: int) -> int:
        """FLOPs a batch of ``rows`` texts padded to ``width`` tokens actually executes."""
        return rows * self.text_flops(width)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields, plus the per-token FLOPs at a few lengths for a reader."""
        return {
            "weight_flops_per_token": self.weight_flops_per_token,
            "attention_flops_per_token_sq": self.attention_flops_per_token_sq,
            "weight_products": self.weight_products,
            "attention_products": self.attention_products,
            "attention_widths": sorted(set(self.attention_widths)),
            "precision": self.precision,
            "flops_per_token_at": {str(n): self.text_flops(n) / n for n in (16, 128, 256)},
        }


def _onnx() -> Any:  # the onnx module: untyped for mypy's purposes, imported on demand
    try:
        import onnx
    except ImportError as err:
        raise MissingExtraError("bench", "the profile's model arithmetic", "onnx") from err
    return onnx


def model_arithmetic(model_path: Path) -> ModelArithmetic:
    """Count the arithmetic of the ONNX graph at ``model_path`` (weights need not be loaded).

    Raises:
        MissingExtraError: the onnx package is not installed.
        GraphArithmeticError: an attention product's width cannot be traced to a weight product,
            or a fused attention node has no 2-D weight.
    """
    graph = _onnx().load(str(model_path), load_external_data=False).graph
    shapes = {init.name: tuple(int(d) for d in init.dims) for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    weight_flops = weight_count = attention = 0
    widths: list[int] = []
    integer = False
    for node in graph.node:
        integer = integer or node.op_type in INT8_GEMM_OPS
        if node.op_type in FUSED_ATTENTION_OPS:
            k, n = _weight_shape(node, shapes, 1)
            weight_flops += 2 * k * n
            weight_count += 1
            width = n // 3
            widths += [width, width]
            attention += 2 * (2 * width)  # scores and context, 2·H per token each
        elif node.op_type == "MatMulNBits":
            attrs = {a.name: a.i for a in node.attribute}
            weight_flops += 2 * attrs["K"] * attrs["N"]
            weight_count += 1
        elif node.op_type in WEIGHT_GEMM_OPS:
            index = _WEIGHT_INPUT.get(node.op_type, 1)
            if len(node.input) > index and len(shapes.get(node.input[index], ())) == 2:
                k, n = shapes[node.input[index]]
                weight_flops += 2 * k * n
                weight_count += 1
            elif node.op_type == "MatMul":
                width = _traced_width(node, producers, shapes)
                widths.append(width)
                attention += 2 * width
    return ModelArithmetic(
        weight_flops, attention, weight_count, len(widths), tuple(widths), "int8" if integer else "fp32"
    )


def _weight_shape(node: Any, shapes: dict[str, tuple[int, ...]], index: int) -> tuple[int, int]:
    shape = shapes.get(node.input[index], ()) if len(node.input) > index else ()
    if len(shape) != 2:
        raise GraphArithmeticError(
            f"{node.op_type} node {node.name!r}: input {index} is not a 2-D weight initialiser "
            f"(shape {shape}); its FLOPs cannot be counted"
        )
    return shape[0], shape[1]


def _traced_width(start: Any, producers: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> int:
    """Attention width of an activation product.

    It is the output width of the nearest weight product upstream (the Q, K or V
    projection), found breadth-first.
    """
    frontier: list[str] = list(start.input)
    seen: set[str] = set()
    while frontier:
        name = frontier.pop(0)
        node = producers.get(name)
        if node is None or name in seen:
            continue
        seen.add(name)
        if node.op_type in WEIGHT_GEMM_OPS | FUSED_ATTENTION_OPS:
            index = _WEIGHT_INPUT.get(node.op_type, 1)
            shape = shapes.get(node.input[index], ()) if len(node.input) > index else ()
            if len(shape) == 2:
                return shape[1] // (3 if node.op_type in FUSED_ATTENTION_OPS else 1)
        frontier.extend(node.input)
    raise GraphArithmeticError(
        f"MatMul node {start.name!r} multiplies two activations, but no weight product feeds it: "
        "its attention width (and so its FLOPs) cannot be read from the graph"
    )

