"""A post-LayerNorm transformer encoder, matched block by block on the exported graph.

Embeddings (:mod:`.embedding`), then layers of attention (:mod:`.attention`) and FFN
(:mod:`.ffn`), each ending in residual Add + LayerNorm, the last LayerNorm being the graph
output. The match is structural first, then checked by what the blocks compute
(:mod:`.probe`). This covers BERT, DistilBERT, RoBERTa, XLM-RoBERTa and MPNet exports
(tested on tiny models of each) without onnxruntime's BERT fusions. A graph with another
shape (pre-LayerNorm blocks, gated FFNs, rotary attention...) raises
:class:`~embedrt.export.errors.PatternMismatchError` naming the first block that differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from embedrt.export.quantize import attention, embedding, ffn, probe
from embedrt.export.quantize.blocks import mismatch
from embedrt.export.quantize.graph import GraphView

if TYPE_CHECKING:
    from onnx import ModelProto


@dataclass(frozen=True)
class Encoder:
    """The matched blocks, in graph order."""

    embeddings: embedding.EmbeddingsBlock
    attention: tuple[attention.AttentionBlock, ...]
    ffn: tuple[ffn.FFNBlock, ...]


def match_encoder(model: ModelProto) -> Encoder:
    """Match every block of ``model`` (shape arithmetic already folded) and check it by probing.

    Raises:
        PatternMismatchError: a block differs from its pattern (the message names it).
    """
    g = GraphView(model)
    if "attention_mask" not in {i.name for i in model.graph.input}:
        raise mismatch("layer 0 attention", "the graph has no attention_mask input")
    embeddings = embedding.match(g)
    x = embeddings.output
    blocks_a: list[attention.AttentionBlock] = []
    blocks_f: list[ffn.FFNBlock] = []
    while any(n.op_type == "MatMul" for n in g.readers.get(x, [])):
        a = attention.match(g, x, len(blocks_a))
        f = ffn.match(g, a.residual.output, len(blocks_f))
        blocks_a.append(a)
        blocks_f.append(f)
        x = f.residual.output
    if not blocks_a:
        raise mismatch("layer 0 attention", f"no MatMul reads the embeddings' output {x}")
    if x not in g.outputs:
        raise mismatch(f"layer {len(blocks_a)}", f"{x} starts no attention block and is not the graph output")
    checked: Encoder = probe.check(g, Encoder(embeddings, tuple(blocks_a), tuple(blocks_f)))
    return checked
