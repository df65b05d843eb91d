"""The embeddings block: its graph pattern, and the word-embedding table as ``GatherBlockQuantized``.

Pattern: ``Gather(word table, input_ids) -> Add/Mul ... -> LayerNormalization`` (the other
terms: position and token-type embeddings, however the model computes their indices).
The table becomes int8 or 4-bit blocks along the hidden axis, so only the gathered rows are
dequantised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from embedrt.export.errors import UnsupportedModelError
from embedrt.export.quantize.blocks import check_layernorm, mismatch, named
from embedrt.export.quantize.graph import GraphEdit
from embedrt.export.quantize.recipe import Recipe

if TYPE_CHECKING:
    from embedrt.export.quantize.graph import GraphView
    from onnx import NodeProto

INPUT_IDS = "input_ids"
_MAX_TERMS = 8  # Add/Mul steps between the word embedding and its LayerNorm


@dataclass(frozen=True)
class EmbeddingsBlock:
    """The word-embedding Gather and the LayerNorm that ends the embeddings."""

    word: NodeProto
    norm: NodeProto

    @property
    def output(self) -> str:
        """The first layer's input."""
        return str(self.norm.output[0])


def match(g: GraphView) -> EmbeddingsBlock:
    """The embeddings block: the one Gather of a constant 2-D table by ``input_ids``, then its sum.

    Raises:
        PatternMismatchError: no such Gather, several, or no LayerNorm after a chain of Add/Mul.
    """
    block = "embeddings"
    gathers = []
    for node in g.readers.get(INPUT_IDS, []):
        table = g.const(node.input[0]) if node.op_type == "Gather" else None
        if table is not None and table.ndim == 2 and node.input[1] == INPUT_IDS:
            gathers.append(node)
    if len(gathers) != 1:
        raise mismatch(block, f"expected one Gather of a constant table by {INPUT_IDS}, found {len(gathers)}")
    word = named(gathers[0], block)
    tensor = str(word.output[0])
    for _ in range(_MAX_TERMS):
        # A Shape of the sum (the sequence length, for position ids) is not a step of the chain.
        found = [n for n in g.readers.get(tensor, []) if n.op_type != "Shape"]
        if len(found) != 1 or found[0].op_type not in ("Add", "Mul", "LayerNormalization"):
            seen = ", ".join(f"{n.op_type} {n.name}" for n in found) or "nothing"
            raise mismatch(
                block, f"expected {tensor} to be read by one Add, Mul or LayerNormalization, found {seen}"
            )
        if found[0].op_type == "LayerNormalization":
            check_layernorm(g, found[0], block)
            return EmbeddingsBlock(word, found[0])
        tensor = str(found[0].output[0])
    raise mismatch(block, f"no LayerNormalization within {_MAX_TERMS} steps of the word embedding")


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


def rewrite(g: GraphEdit, recipe: Recipe, word: NodeProto | None = None) -> int:
    """Turn the word-embedding Gather into GatherBlockQuantized.

    ``word`` is the matched Gather (:func:`match`); None takes the Gather of the largest
    constant table (a graph no pattern matched). Returns how many Gathers were quantised
    (0 or 1; 0 when ``recipe.embedding_bits`` is None).

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
    n = word if word is not None else max(gathers, key=lambda node: g.inits[node.input[0]].size)
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
