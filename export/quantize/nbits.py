"""Block-wise low-bit weights: each weight MatMul becomes ``MatMulNBits`` (the int4-edge recipe).

With ``accuracy_level`` 4, onnxruntime computes in int8 with activations quantised per row
per block: batch-invariant, as the int8 layouts are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from embedrt.export.errors import UnsupportedModelError
from embedrt.export.quantize.graph import GraphEdit
from embedrt.export.quantize.recipe import Recipe

if TYPE_CHECKING:
    from onnx import NodeProto


def block_size(recipe: Recipe) -> int:
    """The block length along K from ``weight_granularity`` ("block-<n>").

    Raises:
        UnsupportedModelError: the granularity is not ``block-<n>``.
    """
    kind, _, size = recipe.weight_granularity.partition("-")
    if kind != "block" or not size.isdigit():
        raise UnsupportedModelError(
            f"weight_granularity {recipe.weight_granularity!r} is not block-<n>; MatMulNBits needs blocks"
        )
    return int(size)


def rewrite(g: GraphEdit, nodes: Sequence[NodeProto], recipe: Recipe) -> None:
    """Replace each of ``nodes`` by MatMulNBits (block-wise weights along K)."""
    from onnx import helper
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits, quantize_matmul_8bits

    block = block_size(recipe)
    pack = 8 // recipe.weight_bits
    for n in nodes:
        w = np.ascontiguousarray(g.inits[n.input[1]], dtype=np.float32)
        k, cols = w.shape
        k_blocks = -(-k // block)
        if k % block:
            w = np.pad(w, ((0, k_blocks * block - k), (0, 0)))
        packed = np.zeros((cols, k_blocks, block // pack), np.uint8)
        scales = np.zeros((cols, k_blocks), np.float32)
        zp = np.zeros((cols, -(-k_blocks // pack)), np.uint8)
        fn = quantize_matmul_4bits if recipe.weight_bits == 4 else quantize_matmul_8bits
        fn(packed, w, scales, zp, block, cols, k, recipe.weight_symmetric)
        base = n.input[1]
        inputs = [n.input[0], g.const(base + "_nb", packed), g.const(base + "_nb_s", scales)]
        if not recipe.weight_symmetric:
            inputs.append(g.const(base + "_nb_zp", zp))
        attrs = {"K": k, "N": cols, "bits": recipe.weight_bits, "block_size": block}
        if recipe.accuracy_level:
            attrs["accuracy_level"] = recipe.accuracy_level
        g.replace[n.name] = [
            helper.make_node(
                "MatMulNBits", inputs, list(n.output), name=n.name + "_nbits", domain="com.microsoft", **attrs
            )
        ]
