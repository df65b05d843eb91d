"""A sequence-classification head as float32 ONNX nodes, appended to an exported encoder.

The encoder (``last_hidden_state``) is exported and quantised as for embeddings; the head that
turns it into logits is small and stays float32. Each supported family's head is read from the
transformers model into a list of :class:`HeadStep` (data), then written as nodes:

==================================  ==============================================================
family (``config.model_type``)      head
==================================  ==============================================================
bert                                [CLS] -> pooler dense -> tanh -> classifier
roberta, xlm-roberta                [CLS] -> classifier.dense -> tanh -> classifier.out_proj
distilbert                          [CLS] -> pre_classifier -> relu -> classifier
modernbert                          [CLS] or masked mean -> head dense -> act -> LayerNorm -> classifier
==================================  ==============================================================

Dropout is off at inference and has no node.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from embedrt.runtime.errors import SourceModelError

if TYPE_CHECKING:
    from onnx import ModelProto

LOGITS = "logits"
FloatArray = npt.NDArray[np.float32]
SUPPORTED = ("bert", "roberta", "xlm-roberta", "distilbert", "modernbert")


@dataclass(frozen=True)
class HeadStep:
    """One step of a head: ``pool`` (cls/mean), ``linear``, ``act`` (tanh/relu/gelu) or ``layernorm``."""

    kind: str
    name: str = ""
    weight: FloatArray | None = None  # linear: (out, in); layernorm: scale
    bias: FloatArray | None = None
    eps: float = 0.0


def read_head(model: Any) -> list[HeadStep]:
    """The head of a transformers ``*ForSequenceClassification`` model, as steps.

    Raises:
        SourceModelError: the family is not one of :data:`SUPPORTED`.
    """
    family = model.config.model_type
    if family == "bert":
        return [
            HeadStep("pool", "cls"),
            _linear("pooler", model.bert.pooler.dense),
            HeadStep("act", "tanh"),
            _linear("classifier", model.classifier),
        ]
    if family in ("roberta", "xlm-roberta"):
        return [
            HeadStep("pool", "cls"),
            _linear("head_dense", model.classifier.dense),
            HeadStep("act", "tanh"),
            _linear("classifier", model.classifier.out_proj),
        ]
    if family == "distilbert":
        return [
            HeadStep("pool", "cls"),
            _linear("pre_classifier", model.pre_classifier),
            HeadStep("act", "relu"),
            _linear("classifier", model.classifier),
        ]
    if family == "modernbert":
        activation = model.config.classifier_activation
        if activation not in ("gelu", "tanh", "relu"):
            raise SourceModelError(f"ModernBERT classifier_activation {activation!r} is not supported")
        norm = model.head.norm
        return [
            HeadStep("pool", model.config.classifier_pooling),
            _linear("head_dense", model.head.dense),
            HeadStep("act", activation),
            HeadStep("layernorm", "head_norm", _array(norm.weight), _bias(norm), float(norm.eps)),
            _linear("classifier", model.classifier),
        ]
    raise SourceModelError(
        f"cross-encoder family {family!r} is not supported; embedrt exports the heads of "
        f"{', '.join(SUPPORTED)}"
    )


def append_head(model: ModelProto, steps: list[HeadStep]) -> ModelProto:
    """Append ``steps`` after the graph's hidden-state output; the graph then outputs ``logits``.

    Raises:
        SourceModelError: the graph has not exactly one output.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    if len(graph.output) != 1:
        raise SourceModelError(f"the encoder graph has {len(graph.output)} outputs, expected one")
    x = graph.output[0].name
    nodes: list[Any] = []
    inits: list[Any] = []

    def const(name: str, value: npt.ArrayLike, dtype: Any = np.float32) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), f"head/{name}"))
        return f"head/{name}"

    def node(op: str, inputs: list[str], name: str, **attrs: Any) -> str:
        out = f"head/{name}_out"
        nodes.append(helper.make_node(op, inputs, [out], name=f"head/{name}", **attrs))
        return out

    for i, step in enumerate(steps):
        tag = f"{i}_{step.name or step.kind}"
        if step.kind == "pool" and step.name == "cls":
            x = node("Gather", [x, const(f"{tag}_index", 0, np.int64)], tag, axis=1)
        elif step.kind == "pool" and step.name == "mean":
            mask = node("Cast", ["attention_mask"], f"{tag}_mask", to=TensorProto.FLOAT)
            mask3 = node("Unsqueeze", [mask, const(f"{tag}_axis2", [2], np.int64)], f"{tag}_mask3")
            summed = node(
                "ReduceSum",
                [node("Mul", [x, mask3], f"{tag}_masked"), const(f"{tag}_axis1", [1], np.int64)],
                f"{tag}_sum",
                keepdims=0,
            )
            count = node(
                "ReduceSum", [mask, const(f"{tag}_axis1b", [1], np.int64)], f"{tag}_count", keepdims=1
            )
            x = node("Div", [summed, node("Max", [count, const(f"{tag}_one", 1e-9)], f"{tag}_clip")], tag)
        elif step.kind == "linear" and step.weight is not None:
            x = node("MatMul", [x, const(f"{tag}_w", step.weight.T)], f"{tag}_matmul")
            if step.bias is not None:
                x = node("Add", [x, const(f"{tag}_b", step.bias)], f"{tag}_add")
        elif step.kind == "act" and step.name in ("tanh", "relu"):
            x = node(step.name.capitalize(), [x], tag)
        elif step.kind == "act" and step.name == "gelu":  # exact (erf) GELU, as torch's default
            erf = node(
                "Erf", [node("Mul", [x, const(f"{tag}_rsqrt2", 2**-0.5)], f"{tag}_scaled")], f"{tag}_erf"
            )
            half = node("Mul", [x, const(f"{tag}_half", 0.5)], f"{tag}_half")
            x = node("Mul", [half, node("Add", [erf, const(f"{tag}_one", 1.0)], f"{tag}_plus1")], tag)
        elif step.kind == "layernorm" and step.weight is not None:
            bias = step.bias if step.bias is not None else np.zeros_like(step.weight)
            x = node(
                "LayerNormalization",
                [x, const(f"{tag}_scale", step.weight), const(f"{tag}_bias", bias)],
                tag,
                axis=-1,
                epsilon=step.eps,
            )
        else:
            raise SourceModelError(f"head step {step.kind} {step.name!r} cannot be written as ONNX")
    if nodes and nodes[-1].output[0] == x:  # the last step writes ``logits`` itself: an Identity
        nodes[-1].output[0] = LOGITS  # would give the tensor two names, and OpenVINO reports either
    else:
        nodes.append(helper.make_node("Identity", [x], [LOGITS], name="head/logits"))
    graph.node.extend(nodes)
    graph.initializer.extend(inits)
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, ["batch", "labels"]))
    _ensure_opset(model, 17)  # LayerNormalization
    onnx.checker.check_model(model)
    return model


def _ensure_opset(model: ModelProto, version: int) -> None:
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version < version:
            opset.version = version


def _linear(name: str, layer: Any) -> HeadStep:
    return HeadStep("linear", name, _array(layer.weight), _bias(layer))


def _bias(layer: Any) -> FloatArray | None:
    return None if getattr(layer, "bias", None) is None else _array(layer.bias)


def _array(tensor: Any) -> FloatArray:
    return np.asarray(tensor.detach().cpu().float().numpy(), dtype=np.float32)
