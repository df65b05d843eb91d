"""Fold the shape arithmetic a torch export leaves in a transformer graph.

The exported graph computes every Reshape target and the attention scale at run time from
``Shape`` nodes (``Shape -> Gather -> Unsqueeze -> Concat``, ``Sqrt(1 / Sqrt(head_dim))``):
about a hundred tiny nodes in all-MiniLM-L6-v2 that onnxruntime cannot fold because batch
and sequence length are dynamic. At batch 1 the per-node overhead of a quantised graph is
most of its latency, so :func:`fold_shape_arithmetic` replaces them with constants.

It finds the tensors computed only from shapes and constants that feed real computation,
evaluates them with onnxruntime for two input shapes, and replaces each with

* a constant, when its value is the same for both shapes (the attention scale, head counts);
* a constant Reshape target with ``0`` ("copy this input dimension") where the value tracked
  the Reshape input's own dimension in both runs (batch, sequence).

Anything else is left as it was. The values are the ones the graph computed, so the result
is numerically identical; dead nodes are then removed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from embedrt.export.quantize.graph import Tensor, evaluate_tensors, remove_dead

if TYPE_CHECKING:
    from onnx import GraphProto, ModelProto

# Two probe shapes (batch, sequence) whose sizes and products differ, so a value that is the
# same in both runs does not depend on batch or sequence length.
_PROBES = ((2, 7), (3, 11))
_SHAPE_SOURCES = ("Shape", "Constant", "Size")


def fold_shape_arithmetic(model: ModelProto) -> int:
    """Replace shape-derived tensors by constants in ``model`` (in place); returns how many.

    Returns 0 without changing anything when the graph's inputs are not all ``[batch, seq]``
    integer tensors (the probe would not know how to feed it).
    """
    from onnx import numpy_helper

    graph = model.graph
    feeds = _probe_feeds(graph)
    if feeds is None:
        return 0
    inits = {i.name for i in graph.initializer}
    derived = _shape_derived(graph, inits)
    # Foldable: a single-output node's result (removing the node loses nothing else) that is
    # not already a Constant.
    foldable = {n.output[0] for n in graph.node if len(n.output) == 1 and n.op_type != "Constant"}
    frontier = sorted(
        {
            x
            for n in graph.node
            if n.output[0] not in derived
            for x in n.input
            if x in derived and x in foldable
        }
    )
    if not frontier:
        return 0
    # Reshape's 0 means "copy this dimension" unless allowzero=1 makes it a literal zero.
    reshape_data = {
        n.input[1]: n.input[0]
        for n in graph.node
        if n.op_type == "Reshape" and not any(a.name == "allowzero" and a.i for a in n.attribute)
    }
    wanted = frontier + sorted({reshape_data[x] for x in frontier if x in reshape_data})
    runs = evaluate_tensors(model, wanted, feeds)

    constants: dict[str, Tensor] = {}
    for name in frontier:
        values = [run[name] for run in runs]
        if values[0].shape == values[1].shape and np.array_equal(values[0], values[1]):
            constants[name] = values[0]
        elif name in reshape_data:
            target = _reshape_target(values, [run[reshape_data[name]].shape for run in runs])
            if target is not None:
                constants[name] = target
    if not constants:
        return 0
    # Every folded tensor is its producer's only output: the producer goes, the value stays.
    graph.initializer.extend(numpy_helper.from_array(value, name) for name, value in constants.items())
    kept = [n for n in graph.node if n.output[0] not in constants]
    del graph.node[:]
    graph.node.extend(kept)
    remove_dead(graph)
    return len(constants)


def _probe_feeds(graph: GraphProto) -> list[dict[str, Tensor]] | None:
    from onnx import TensorProto

    dtypes = {TensorProto.INT64: np.int64, TensorProto.INT32: np.int32}
    inits = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    feeds = []
    for batch, seq in _PROBES:
        feed: dict[str, Tensor] = {}
        for value in inputs:
            tensor = value.type.tensor_type
            if tensor.elem_type not in dtypes or len(tensor.shape.dim) != 2:
                return None
            fill = 1 if "mask" in value.name else 0
            feed[value.name] = np.full((batch, seq), fill, dtypes[tensor.elem_type])
        feeds.append(feed)
    return feeds


def _shape_derived(graph: GraphProto, inits: set[str]) -> set[str]:
    """Tensors computed only from Shape/Size outputs, Constants and initialisers (no data)."""
    from onnx import AttributeProto

    subgraph = (AttributeProto.GRAPH, AttributeProto.GRAPHS)
    derived: set[str] = set()
    for node in graph.node:  # ONNX graphs are topologically sorted
        if any(a.type in subgraph for a in node.attribute):
            continue  # If/Loop/Scan may read any outer tensor: never treat them as shape-only
        if node.op_type in _SHAPE_SOURCES or (
            node.input and all(not x or x in derived or x in inits for x in node.input)
        ):
            derived.update(node.output)
    return derived


def _reshape_target(values: list[Tensor], data_shapes: list[tuple[int, ...]]) -> Tensor | None:
    """A constant Reshape target using 0 for dimensions copied from the input, or None."""
    if values[0].ndim != 1 or values[0].shape != values[1].shape:
        return None
    target = []
    for i, (a, b) in enumerate(zip(values[0].tolist(), values[1].tolist(), strict=True)):
        if a == b and a != 0:
            target.append(a)
        elif all(i < len(s) and v == s[i] for v, s in zip((a, b), data_shapes, strict=True)):
            target.append(0)  # Reshape's 0 copies the input's dimension i
        else:
            return None
    return np.array(target, dtype=values[0].dtype)
