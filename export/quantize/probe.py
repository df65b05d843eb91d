"""Check matched blocks by what they compute, on probe inputs.

The patterns say where things are; probes say what they are. On two small padded batches
(and the same shapes with other tokens):

* a term added to the scores that is 0 on kept keys and <= -1e4 on padding, the same for
  every query and head, is the padding mask;
* a term that does not change with the tokens or the mask is a position bias (MPNet's
  relative buckets); one produced by ``Expand`` from a [1, heads, seq, seq] tensor is read
  before the Expand (``MultiHeadAttention`` broadcasts over the batch);
* the FFN activation is named by comparing its output with GELU, tanh-GELU and ReLU;
* the attention recomputed in numpy from the matched Q/K/V projections, scale, mask and bias
  must reproduce the graph's context (relative error <= 1e-4).

Anything else raises :class:`~embedrt.export.errors.PatternMismatchError` naming the block.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
from embedrt.export.quantize.blocks import mismatch
from embedrt.export.quantize.graph import Feed, GraphView, Tensor, evaluate_tensors

if TYPE_CHECKING:
    from embedrt.export.quantize.attention import AttentionBlock
    from embedrt.export.quantize.encoder import Encoder
    from embedrt.export.quantize.ffn import FFNBlock

_PROBES = ((2, 7), (3, 5))  # (batch, seq): row 0 full, row b padded on the right by b tokens
_MASKED = -1e4  # a mask term at most this leaves softmax weights of 0 in float32
_TOLERANCE = 1e-4


def _gelu(x: Tensor) -> Tensor:
    erf = np.vectorize(math.erf)
    y: Tensor = 0.5 * x * (1 + erf(x / math.sqrt(2)))
    return y


def _gelu_tanh(x: Tensor) -> Tensor:
    y: Tensor = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    return y


ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": _gelu,
    "gelu_tanh": _gelu_tanh,
    "relu": lambda x: np.maximum(x, 0),
}


def probe_feeds(g: GraphView, vocabulary: int, seed: int) -> list[dict[str, Tensor]]:
    """Two padded batches of random tokens (right padding, as embedrt pads)."""
    rng = np.random.default_rng(seed)
    feeds = []
    for batch, seq in _PROBES:
        ids = rng.integers(min(5, vocabulary - 1), vocabulary, (batch, seq)).astype(np.int64)
        mask = np.ones((batch, seq), np.int64)
        for row in range(1, batch):
            mask[row, seq - row :] = 0
            ids[row, seq - row :] = 0
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in {i.name for i in g.model.graph.input}:
            feed["token_type_ids"] = np.zeros_like(ids)
        feeds.append(feed)
    return feeds


def check(g: GraphView, encoder: Encoder) -> Encoder:
    """``encoder`` with each attention's mask and position bias and each FFN's activation set.

    Raises:
        PatternMismatchError: a score term is neither mask nor position bias, there is no
            mask, an activation is none of :data:`ACTIVATIONS`, or the recomputed attention
            differs from the graph's.
    """
    table = g.const(encoder.embeddings.word.input[0])
    vocabulary = 0 if table is None else int(table.shape[0])
    names: set[str] = set()
    expanded: dict[str, str] = {}
    for a in encoder.attention:
        names |= {a.q.bias.output, a.k.bias.output, a.v.bias.output, a.context, *a.terms}
        for term in a.terms:
            node = g.producer.get(term)
            if node is not None and node.op_type == "Expand":
                expanded[term] = str(node.input[0])
    names |= set(expanded.values())
    for f in encoder.ffn:
        names |= {f.hidden, f.activated}
    ordered = sorted(names)
    feeds = probe_feeds(g, vocabulary, 0)
    runs = evaluate_tensors(g.model, ordered, feeds)
    others = evaluate_tensors(g.model, ordered, probe_feeds(g, vocabulary, 1))
    attention = tuple(_attention(a, runs, others, feeds, expanded) for a in encoder.attention)
    ffn = tuple(_activation(f, runs) for f in encoder.ffn)
    return replace(encoder, attention=attention, ffn=ffn)


def _attention(
    a: AttentionBlock,
    runs: Sequence[Mapping[str, Tensor]],
    others: Sequence[Mapping[str, Tensor]],
    feeds: Sequence[Feed],
    expanded: Mapping[str, str],
) -> AttentionBlock:
    mask, bias = None, None
    for term in a.terms:
        if _is_mask(term, runs, feeds):
            if mask is not None:
                raise mismatch(a.name, "two padding masks are added to the scores")
            mask = term
        elif _is_position_bias(term, a.heads, runs, others, feeds):
            if bias is not None:
                raise mismatch(a.name, "two position biases are added to the scores")
            bias = term
        else:
            raise mismatch(
                a.name, f"{term}, added to the scores, is neither the padding mask nor a position bias"
            )
    if mask is None:
        raise mismatch(a.name, "no padding mask is added to the scores")
    if bias is not None and bias in expanded:
        source = expanded[bias]
        if all(run[source].ndim == 4 and run[source].shape[0] == 1 for run in runs):
            bias = source  # MultiHeadAttention broadcasts a [1, heads, seq, seq] bias
    checked = replace(a, mask=mask, position_bias=bias)
    for run, feed in zip(runs, feeds, strict=True):
        _recompute(checked, run, feed)
    return checked


def _is_mask(term: str, runs: Sequence[Mapping[str, Tensor]], feeds: Sequence[Feed]) -> bool:
    for run, feed in zip(runs, feeds, strict=True):
        value, mask = run[term], np.asarray(feed["attention_mask"])
        batch, seq = mask.shape
        if (
            value.ndim != 4
            or value.shape[0] != batch
            or value.shape[1] != 1
            or value.shape[2] not in (1, seq)
        ):
            return False
        if value.shape[3] != seq:
            return False
        kept = np.broadcast_to(mask[:, None, None, :] == 1, value.shape)
        if not (np.all(value[kept] == 0) and np.all(value[~kept] <= _MASKED)):
            return False
    return True


def _is_position_bias(
    term: str,
    heads: int,
    runs: Sequence[Mapping[str, Tensor]],
    others: Sequence[Mapping[str, Tensor]],
    feeds: Sequence[Feed],
) -> bool:
    for run, other, feed in zip(runs, others, feeds, strict=True):
        value = run[term]
        batch, seq = np.asarray(feed["attention_mask"]).shape
        if value.ndim != 4 or value.shape[0] not in (1, batch) or value.shape[1] not in (1, heads):
            return False
        if value.shape[2:] != (seq, seq) or not np.isfinite(value).all():
            return False
        if not np.array_equal(value, other[term]):  # it changed with the tokens or the mask
            return False
    return True


def _recompute(a: AttentionBlock, run: Mapping[str, Tensor], feed: Feed) -> None:
    """Raise unless softmax(Q K^T * scale + bias, masked) V reproduces the graph's context."""
    mask = np.asarray(feed["attention_mask"])
    batch, seq = mask.shape

    def heads(tensor: str) -> Tensor:
        split = run[tensor].astype(np.float64).reshape(batch, seq, a.heads, a.head_size)
        per_head: Tensor = np.transpose(split, (0, 2, 1, 3))
        return per_head

    q, k, v = heads(a.q.bias.output), heads(a.k.bias.output), heads(a.v.bias.output)
    scores = q @ k.transpose(0, 1, 3, 2) * a.scale
    if a.position_bias is not None:
        scores = scores + run[a.position_bias]
    scores = np.where(mask[:, None, None, :] == 1, scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    context = (weights @ v).transpose(0, 2, 1, 3).reshape(batch, seq, a.heads * a.head_size)
    graph = run[a.context]
    error = float(np.abs(context - graph).max())
    if error > _TOLERANCE * (1 + float(np.abs(graph).max())):
        raise mismatch(
            a.name,
            f"the matched heads, scale ({a.scale:.6g}), mask and bias do not reproduce the graph's "
            f"attention (max difference {error:.2e})",
        )


def _activation(f: FFNBlock, runs: Sequence[Mapping[str, Tensor]]) -> FFNBlock:
    x = np.concatenate([run[f.hidden].ravel() for run in runs]).astype(np.float64)
    y = np.concatenate([run[f.activated].ravel() for run in runs]).astype(np.float64)
    for name, function in ACTIVATIONS.items():
        if float(np.abs(function(x) - y).max()) <= 1e-5 * (1 + float(np.abs(x).max())):
            return replace(f, activation=name)
    raise mismatch(f.name, f"the activation is none of {', '.join(ACTIVATIONS)} (the int8 form needs one)")
