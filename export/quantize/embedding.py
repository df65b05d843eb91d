"""The word-embedding table as ``GatherBlockQuantized``.

int8 or 4-bit blocks along the hidden axis, so only the gathered rows are dequantised.
"""

from __future__ import annotations

import numpy as np
from embedrt.export.errors import UnsupportedModelError
from embedrt.export.quantize.graph import GraphEdit
from embedrt.export.quantize.recipe import Recipe

_BLOCKS = (128, 64, 32, 16)  # GatherBlockQuantized needs blocks of at least 16


def block_for(dim: int, preferred: int) -> int:
    """The recipe's block size, or the largest smaller power of two (>= 16) dividing ``dim``.

    Narrow models get finer blocks.

    Raises:
        UnsupportedModelError: ``dim`` is not a multiple of 16.
    """
    for block in (preferred, *(b for b in _BLOCKS if b < preferred)):
        if dim % block == 0:
            return block
    raise UnsupportedModelError(
        f"embedding width {dim} is not a multiple of 16; GatherBlockQuantized cannot hold it. "
        "Use a variant that keeps the embedding table fp32."
    )


def rewrite(g: GraphEdit, recipe: Recipe) -> int:
    """Turn the largest constant-table Gather (the word embeddings) into GatherBlockQuantized.

    Returns how many Gathers were quantised (0 or 1; 0 when ``recipe.embedding_bits`` is None).

    Raises:
        UnsupportedModelError: the table's width is not a multiple of 16.
    """
    from onnx import helper

    gathers = [
        n
        for n in g.model.graph.node
        if n.op_type == "Gather" and n.input[0] in g.inits and g.inits[n.input[0]].ndim == 2
    ]
    if not gathers or recipe.embedding_bits is None:
        return 0
    n = max(gathers, key=lambda node: g.inits[node.input[0]].size)
    table = g.inits[n.input[0]].astype(np.float32)
    bits = recipe.embedding_bits
    rows, dim = table.shape
    block = block_for(dim, recipe.embedding_block_size)
    qmax = 2 ** (bits - 1) - 1
    blocks = table.reshape(rows, dim // block, block)
    scales = np.maximum(np.abs(blocks).max(-1), 1e-12) / qmax
    q = (
        (np.clip(np.round(blocks / scales[..., None]), -qmax, qmax) + 2 ** (bits - 1))
        .astype(np.uint8)
        .reshape(rows, dim)
    )
    if bits == 4:  # two codes per byte, low nibble first, along the last axis
        q = (q[:, 0::2] | (q[:, 1::2] << 4)).astype(np.uint8)
    name = n.input[0]
    g.replace[n.name] = [
        helper.make_node(
            "GatherBlockQuantized",
            [g.const(name + "_q", q), n.input[1], g.const(name + "_scales", scales.astype(np.float32))],
            list(n.output),
            name=n.name + "_quantized",
            domain="com.microsoft",
            bits=bits,
            block_size=block,
            gather_axis=0,
            quantize_axis=1,
        )
    ]
    return 1
