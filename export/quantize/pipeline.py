"""``quantize``: one fp32 graph in, one quantised graph and its manifest record out.

Two branches, chosen by the recipe's layout: ``blocks`` (:mod:`.layout`, falling back to
``per-token`` when a block does not match its pattern; the reason is logged and recorded)
and ``per-token`` (shape folding, then :mod:`.per_token` or, for ``MatMulNBits`` recipes,
:mod:`.nbits`). Both end the same way: the embedding table (:mod:`.embedding`), opsets,
save, record.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from embedrt.export.errors import PatternMismatchError, UnsupportedModelError
from embedrt.export.quantize import embedding, layout, nbits, per_token
from embedrt.export.quantize.accuracy import choose_scales
from embedrt.export.quantize.calibration import check_sentences, default_calibration
from embedrt.export.quantize.graph import Feed, GraphEdit, remove_dead, weight_matmuls
from embedrt.export.quantize.recipe import (
    LAYOUT_BLOCKS,
    MATMUL_INTEGER_TO_FLOAT,
    MATMUL_NBITS,
    Recipe,
    as_per_token,
)
from embedrt.export.quantize.shapes import fold_shape_arithmetic
from embedrt.runtime.manifest import QuantisationRecord

if TYPE_CHECKING:
    from onnx import ModelProto, NodeProto

logger = logging.getLogger(__name__)


@dataclass
class _Rewrite:
    """What a branch did: the edit (not yet committed) and its counts."""

    graph: GraphEdit
    recipe: Recipe
    quantised: list[str]  # exported MatMul names now int8
    kernels: int
    folded: int = 0
    word: NodeProto | None = None  # the matched word-embedding Gather


def quantizable_nodes(fp32_model: Path) -> list[str]:
    """Return the names of the MatMul nodes with a constant 2-D weight, in graph order.

    Raises:
        FileNotFoundError: the model file does not exist.
    """
    import onnx

    graph = onnx.load(str(fp32_model), load_external_data=False).graph
    return [n.name for n in weight_matmuls(graph)]


def search_candidates(
    fp32_model: Path, recipe: Recipe, calibration: Sequence[Feed] | None = None
) -> list[str]:
    """The MatMuls an accuracy search may keep float, as :func:`quantizable_nodes` names them.

    In the ``blocks`` layout the MatMuls reading one tensor (Q, K, V) are quantised or kept
    float together, so only the first of each such group is a candidate.
    """
    import onnx

    nodes = weight_matmuls(onnx.load(str(fp32_model), load_external_data=False).graph)
    if recipe.layout != LAYOUT_BLOCKS or _prepared_or_none(fp32_model, calibration) is None:
        return [n.name for n in nodes]  # the per-token layout keeps each MatMul float on its own
    first: dict[str, str] = {}
    for n in nodes:
        first.setdefault(n.input[0], n.name)
    return [n.name for n in nodes if first[n.input[0]] == n.name]


def quantize(
    fp32_model: Path,
    out_model: Path,
    recipe: Recipe,
    exclude_nodes: Sequence[str] = (),
    calibration: Sequence[Feed] | None = None,
) -> QuantisationRecord:
    """Quantise ``fp32_model`` with ``recipe`` into ``out_model`` (one file, no external data).

    ``exclude_nodes`` (and ``recipe.exclude_nodes``) name MatMuls to keep in fp32, as listed by
    :func:`quantizable_nodes`. ``calibration`` is a list of graph feeds (batch 1, unpadded) for the
    static ranges and smoothing factors; None tokenises the calibration sentences with the
    ``tokenizer.json`` beside ``fp32_model`` (:func:`.calibration.default_calibration`).

    Layout ``blocks`` rewrites the blocks embedrt's patterns match (:mod:`.layout`), falling
    back to ``per-token`` (recorded in the returned record, with the reason) when a block does
    not match; ``auto`` activation scales are resolved first (:func:`resolve_scales`).
    Excluding any of a layer's Q/K/V keeps that layer's attention float. Layout ``per-token``
    folds the graph's shape arithmetic first (:mod:`.shapes`).

    Returns the manifest record (without ``calibration_sentences``, ``built_on`` and
    ``accuracy_search``, which the caller knows).

    Raises:
        FileNotFoundError: the model, or the tokenizer needed for default calibration, is missing.
        UnsupportedModelError: an excluded name is not a quantisable MatMul, the graph has none, a
            MatMul is unnamed, or the embedding width is not a multiple of 16.
    """
    import onnx

    fp32_model, out_model = Path(fp32_model), Path(out_model)
    if not fp32_model.is_file():
        raise FileNotFoundError(f"fp32 model {fp32_model} does not exist; export it first.")
    model = onnx.load(str(fp32_model))
    eligible = weight_matmuls(model.graph)
    excluded = _checked_exclusions(fp32_model, eligible, {*exclude_nodes, *recipe.exclude_nodes})
    done = None
    if recipe.layout == LAYOUT_BLOCKS:
        feeds = calibration if calibration is not None else default_calibration(fp32_model)
        try:
            prepared = layout.prepare(fp32_model, feeds)
        except PatternMismatchError as err:
            logger.warning("%s: the per-token int8 layout instead (%s)", fp32_model, err)
            recipe = replace(as_per_token(recipe), fallback_reason=str(err))
        else:
            recipe = resolve_scales(fp32_model, recipe, feeds)
            edit = layout.rewrite(prepared, recipe, excluded)
            done = _Rewrite(
                edit.graph,
                recipe,
                edit.quantised,
                edit.kernels,
                prepared.folded,
                prepared.encoder.embeddings.word,
            )
    if done is None:
        targets = [n for n in eligible if n.name not in excluded]
        done = _rewrite_per_token(fp32_model, model, targets, recipe, calibration)
    gathers = (
        embedding.rewrite(done.graph, done.recipe, done.word) if "Gather" in done.recipe.quantised_ops else 0
    )
    done.graph.commit()
    written = done.graph.model
    remove_dead(written.graph)
    _set_opsets(written, done.recipe)
    out_model.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(written, str(out_model))
    logger.info(
        "quantised %s -> %s with recipe %s (%s)", fp32_model, out_model, done.recipe.name, done.recipe.layout
    )
    kept_float = sorted({n.name for n in eligible} - set(done.quantised))
    return QuantisationRecord(
        target_isa=done.recipe.target_isa,
        layout=done.recipe.layout,
        matmul_op=done.recipe.matmul_op,
        weight_type=done.recipe.weight_type,
        activation_granularity=done.recipe.activation_granularity,
        quantised_matmuls=len(done.quantised),
        quantised_matmul_nodes=done.kernels,
        quantised_gathers=gathers,
        fp32_matmuls=tuple(kept_float),
        folded_shape_tensors=done.folded,
        graph_nodes=len(written.graph.node),
        ort_ops=tuple(sorted({n.op_type for n in written.graph.node if n.domain == "com.microsoft"})),
        size_bytes=out_model.stat().st_size,
        settings=replace(done.recipe, exclude_nodes=tuple(kept_float)).to_dict(),
    )


def resolve_scales(fp32_model: Path, recipe: Recipe, calibration: Sequence[Feed]) -> Recipe:
    """``recipe`` with ``auto`` activation scales measured and resolved (:func:`.accuracy.choose_scales`).

    The static graph of the trial is quantised by :func:`quantize` on ``calibration``, on the
    calibration sentences and the kinds of input the parity gate checks.

    Raises:
        PatternMismatchError: a block does not match its pattern.
    """

    def quantize_with(fp32: Path, out_model: Path, tried: Recipe) -> QuantisationRecord:
        return quantize(fp32, out_model, tried, calibration=calibration)

    return choose_scales(fp32_model, recipe, check_sentences(), quantize_with)


def _checked_exclusions(fp32_model: Path, eligible: Sequence[NodeProto], excluded: set[str]) -> set[str]:
    if any(not n.name for n in eligible):
        raise UnsupportedModelError(
            f"{fp32_model} has unnamed MatMul nodes; name every node (the exporter does)."
        )
    unknown = excluded - {n.name for n in eligible}
    if unknown:
        raise UnsupportedModelError(
            f"excluded nodes {sorted(unknown)} are not quantisable MatMuls in {fp32_model}; "
            "list valid names with quantizable_nodes()."
        )
    if not eligible:
        raise UnsupportedModelError(
            f"{fp32_model} has no MatMul with a constant weight; nothing to quantise."
        )
    return excluded


def _prepared_or_none(fp32_model: Path, calibration: Sequence[Feed] | None) -> layout.Prepared | None:
    """The graph prepared for the ``blocks`` layout, or None when a block does not match."""
    try:
        return layout.prepare(
            fp32_model, calibration if calibration is not None else default_calibration(fp32_model)
        )
    except PatternMismatchError:
        return None


def _rewrite_per_token(
    fp32_model: Path,
    model: ModelProto,
    targets: list[NodeProto],
    recipe: Recipe,
    calibration: Sequence[Feed] | None,
) -> _Rewrite:
    folded = fold_shape_arithmetic(model)
    g = GraphEdit(model)
    kernels = len(targets)
    if recipe.matmul_op == MATMUL_NBITS:
        nbits.rewrite(g, targets, recipe)
    else:
        smooth = {}
        if recipe.smoothing_alpha is not None and targets:
            feeds = calibration if calibration is not None else default_calibration(fp32_model)
            smooth = per_token.smoothing(model, targets, recipe.smoothing_alpha, feeds)
        kernels = per_token.rewrite(g, targets, recipe, smooth)
    return _Rewrite(g, recipe, [n.name for n in targets], kernels, folded)


def _set_opsets(model: ModelProto, recipe: Recipe) -> None:
    """Blocked QuantizeLinear needs ai.onnx opset 21 (IR 10); contrib ops need com.microsoft."""
    from onnx import helper

    ops = {o.domain: o for o in model.opset_import}
    if recipe.matmul_op == MATMUL_INTEGER_TO_FLOAT:
        default = ops.get("") or ops.get("ai.onnx")
        if default is not None and default.version < 21:
            default.version = 21
        model.ir_version = max(model.ir_version, 10)
    if "com.microsoft" not in ops:
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
