"""Editing an ONNX graph: the container every layout rewrites through, and graph queries.

Layouts never edit ``model.graph`` directly. They register constants with
:meth:`GraphEdit.const`, and say which nodes to emit before a node (:attr:`GraphEdit.before`)
or instead of it (:attr:`GraphEdit.replace`); :meth:`GraphEdit.commit` writes the result in
the original node order, so the graph stays topologically sorted.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from onnx import GraphProto, ModelProto, NodeProto

# Initialisers hold any dtype (float weights, int64 shapes, uint8 codes): Any is the element type.
Tensor = npt.NDArray[Any]
Feed = Mapping[str, npt.NDArray[Any]]


class GraphEdit:
    """Collects new nodes and initialisers while a layout rewrites ``model``.

    Attributes:
        model: the model being rewritten (changed in place by :meth:`commit`).
        inits: the model's initialisers as arrays, by name.
        before: node name -> nodes to emit before that node.
        replace: node name -> nodes to emit instead of it (an empty list drops it).
    """

    def __init__(self, model: ModelProto) -> None:
        from onnx import numpy_helper

        self.model = model
        self.inits: dict[str, Tensor] = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        self.new_inits: dict[str, Tensor] = {}
        self.before: dict[str, list[NodeProto]] = {}
        self.replace: dict[str, list[NodeProto]] = {}

    def const(self, name: str, value: Tensor) -> str:
        """Register initialiser ``name`` (again: same position, new value); returns the name.

        Initialisers are written in the order their names were first registered.
        """
        self.new_inits[name] = value
        return name

    def readers(self) -> dict[str, list[NodeProto]]:
        """Tensor name -> the nodes reading it, in graph order."""
        return readers(self.model.graph)

    def commit(self) -> None:
        """Write the edits into the model; initialisers nothing reads any more are dropped."""
        from onnx import numpy_helper

        graph = self.model.graph
        nodes: list[NodeProto] = []
        for n in graph.node:
            nodes += self.before.get(n.name, [])
            nodes += self.replace.get(n.name, [n])
        used = {i for n in nodes for i in n.input}
        kept = [i for i in graph.initializer if i.name in used]
        del graph.node[:]
        graph.node.extend(nodes)
        del graph.initializer[:]
        graph.initializer.extend(
            kept + [numpy_helper.from_array(v, k) for k, v in self.new_inits.items() if k in used]
        )


def readers(graph: GraphProto) -> dict[str, list[NodeProto]]:
    """Tensor name -> the nodes reading it, in graph order."""
    found: dict[str, list[NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            found[name].append(node)
    return found


def weight_matmuls(graph: GraphProto) -> list[NodeProto]:
    """The MatMul nodes whose second input is a constant (a weight), in graph order."""
    inits = {i.name for i in graph.initializer}
    return [n for n in graph.node if n.op_type == "MatMul" and n.input[1] in inits]


def copy_node(node: NodeProto, inputs: Sequence[str]) -> NodeProto:
    """``node`` (same type, name, domain, outputs and attributes) reading ``inputs``."""
    from onnx import helper

    copy = helper.make_node(node.op_type, list(inputs), list(node.output), name=node.name, domain=node.domain)
    copy.attribute.extend(node.attribute)
    return copy


def evaluate_tensors(
    model: ModelProto, names: Sequence[str], feeds: Sequence[Feed]
) -> list[dict[str, Tensor]]:
    """The values of the graph tensors ``names`` for each feed (one onnxruntime session).

    onnxruntime keeps every requested tensor, so its fusions cannot remove it. Feed entries
    the graph does not take are ignored.
    """
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {o.name for o in probe.graph.output}
    for name in names:
        if name not in existing:
            probe.graph.output.append(onnx.ValueInfoProto(name=name))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    graph_inputs = {i.name for i in session.get_inputs()}
    results = []
    for feed in feeds:
        values = session.run(list(names), {k: v for k, v in feed.items() if k in graph_inputs})
        results.append({name: np.asarray(value) for name, value in zip(names, values, strict=True)})
    return results


class GraphView:
    """A read-only index of a graph for pattern matching: producers, readers and constants.

    Attributes:
        model: the model indexed (not changed).
        producer: tensor name -> the node writing it.
        readers: tensor name -> the nodes reading it, in graph order.
        outputs: the graph's output names.
    """

    def __init__(self, model: ModelProto) -> None:
        self.model = model
        graph = model.graph
        self._inits = {i.name: i for i in graph.initializer}
        self.producer: dict[str, NodeProto] = {o: n for n in graph.node for o in n.output}
        self.readers = readers(graph)
        self.outputs = {o.name for o in graph.output}
        self._values: dict[str, Tensor | None] = {}

    def const(self, name: str) -> Tensor | None:
        """The value of ``name`` when it is a constant, else None.

        A constant is an initialiser, a ``Constant`` node's output or an ``Identity`` of one.
        """
        from onnx import numpy_helper

        if name not in self._values:
            value: Tensor | None = None
            node = self.producer.get(name)
            if name in self._inits:
                value = numpy_helper.to_array(self._inits[name])
            elif node is not None and node.op_type == "Constant":
                attr = next((a for a in node.attribute if a.name == "value"), None)
                value = None if attr is None else numpy_helper.to_array(attr.t)
            elif node is not None and node.op_type == "Identity":
                value = self.const(node.input[0])
            self._values[name] = value
        return self._values[name]

    def scalar(self, name: str) -> float | None:
        """The value of a constant float scalar (any shape of one element), else None."""
        value = self.const(name)
        if value is None or value.size != 1 or value.dtype.kind != "f":
            return None
        return float(value.reshape(()))

    def attribute(self, node: NodeProto, name: str, default: Any = None) -> Any:  # any attribute type
        """The value of ``node``'s attribute ``name`` (``default`` when absent)."""
        from onnx import helper

        for a in node.attribute:
            if a.name == name:
                return helper.get_attribute_value(a)
        return default


def remove_dead(graph: GraphProto) -> None:
    """Drop nodes whose outputs nothing reads, and initialisers nothing uses."""
    outputs = {o.name for o in graph.output}
    while True:
        used = outputs | {x for n in graph.node for x in n.input}
        kept = [n for n in graph.node if any(o in used for o in n.output)]
        if len(kept) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(kept)
    used = outputs | {x for n in graph.node for x in n.input}
    inits = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(inits)
