"""The inference engines an artefact can name, behind the one call the Embedder makes.

- ``onnxruntime`` (the default, in the base install): every variant but ``bf16``.
- ``openvino`` (the ``[openvino]`` extra): the ``bf16`` variant, the float32 graph run by
  OpenVINO's CPU plugin at bfloat16 inference precision. OpenVINO computes bf16 natively with
  AMX or AVX-512 BF16, emulates it on other AVX-512 CPUs, and falls back to float32 elsewhere;
  embedrt warns in the last two cases. OpenVINO is imported only when such an artefact is
  loaded.

A session is anything with ``run(output_names, feeds) -> list[array]`` and the graph's input
and output names; the Embedder calls nothing else.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from .cpus import cpu_flags
from .errors import ArtefactError, MissingExtraError

logger = logging.getLogger(__name__)

ONNXRUNTIME = "onnxruntime"
OPENVINO = "openvino"
BACKENDS = (ONNXRUNTIME, OPENVINO)
# OpenVINO's names for the inference precisions a manifest may ask for.
OPENVINO_PRECISIONS = {"bfloat16": "bf16", "float32": "f32"}

# x86 flags with bf16 arithmetic in hardware (OpenVINO's native bf16 kernels).
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
_NO_BF16 = (
    "%s asks OpenVINO for bfloat16 inference, which this CPU cannot do: OpenVINO runs it in "
    "float32 instead. The vectors are the fp32 artefact's; on such a CPU the fp32 or int8 "
    "artefact on onnxruntime is the faster choice."
)
_EMULATED_BF16 = (
    "%s: this CPU has no bf16 instructions (AMX or AVX-512 BF16), so OpenVINO emulates "
    "bfloat16 with conversions: bf16's answers, likely slower than float32 here. Measure with "
    "'embedrt bench', or use the fp32 or int8 artefact."
)


def import_openvino(feature: str) -> Any:
    """The openvino module, or MissingExtraError naming ``feature`` and the [openvino] extra."""
    try:
        import openvino
    except ImportError as err:
        raise MissingExtraError("openvino", feature, "openvino") from err
    return openvino


class Session(Protocol):
    """What the Embedder needs from an engine.

    ``engine`` says what runs the graph, e.g. ``onnxruntime`` or ``openvino bf16`` (the
    precision OpenVINO actually chose on this CPU).
    """

    engine: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    def run(
        self, output_names: Sequence[str], feeds: Mapping[str, npt.NDArray[np.int64]]
    ) -> list[npt.NDArray[Any]]:
        """Run the graph on ``feeds`` and return the named outputs."""
        ...


class OnnxRuntimeSession:
    """An onnxruntime CPU session."""

    def __init__(self, model_path: Path, threads: int, spin: bool) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        try:
            self._session = ort.InferenceSession(
                str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # onnxruntime raises its own untyped errors for bad files
            raise ArtefactError(f"{model_path}: onnxruntime cannot load it ({err})") from err
        self.engine = ONNXRUNTIME
        self.input_names = tuple(i.name for i in self._session.get_inputs())
        self.output_names = tuple(o.name for o in self._session.get_outputs())

    def run(
        self, output_names: Sequence[str], feeds: Mapping[str, npt.NDArray[np.int64]]
    ) -> list[npt.NDArray[Any]]:
        """Run the graph (onnxruntime sessions are safe to call from several threads)."""
        outputs: list[npt.NDArray[Any]] = self._session.run(list(output_names), dict(feeds))
        return outputs


class OpenVINOSession:
    """OpenVINO's CPU plugin on the artefact's ONNX graph, at the manifest's precision.

    One inference request per calling thread (a request is not safe to share), so the
    Embedder stays safe to call from several threads. ``spin`` has no OpenVINO equivalent
    and is ignored. ``precision`` is the one OpenVINO actually runs at (``bf16`` or ``f32``);
    a warning says when that is float32 instead of the bf16 asked for, or bf16 emulated on a
    CPU without bf16 instructions. OpenVINO's thread pinning is off: several embedrt
    processes on one machine (the corpus job's workers, Ray actors) would otherwise pin their
    threads to the same cores.
    """

    def __init__(
        self,
        model_path: Path,
        threads: int,
        precision: str,
        origin: str,
        extra_config: Mapping[str, Any] | None = None,
    ) -> None:
        openvino = import_openvino(f"{origin} (an OpenVINO artefact)")
        hint = OPENVINO_PRECISIONS.get(precision)
        if hint is None:
            raise ArtefactError(
                f"{origin}: the manifest asks for inference precision {precision!r}; this embedrt "
                f"runs OpenVINO at {', '.join(OPENVINO_PRECISIONS)}"
            )
        config = {
            "INFERENCE_PRECISION_HINT": hint,
            "INFERENCE_NUM_THREADS": threads,
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
            "ENABLE_CPU_PINNING": False,
            **(extra_config or {}),  # OpenVINO properties (the benchmark's experiments)
        }
        try:
            self._compiled = openvino.Core().compile_model(str(model_path), "CPU", config)
        except Exception as err:  # OpenVINO raises RuntimeError subclasses of its own
            raise ArtefactError(f"{model_path}: OpenVINO cannot load it ({err})") from err
        self.precision: str = self._compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        if hint == "bf16" and self.precision != "bf16":
            logger.warning(_NO_BF16, origin)
        elif hint == "bf16" and not cpu_flags() & BF16_CPU_FLAGS:
            logger.warning(_EMULATED_BF16, origin)
        self.engine = f"{OPENVINO} {self.precision}"
        self.input_names = tuple(port.get_any_name() for port in self._compiled.inputs)
        self.output_names = tuple(port.get_any_name() for port in self._compiled.outputs)
        self._local = threading.local()

    def run(
        self, output_names: Sequence[str], feeds: Mapping[str, npt.NDArray[np.int64]]
    ) -> list[npt.NDArray[Any]]:
        """Run the graph on this thread's inference request; outputs are copied out of it."""
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        result = request.infer(dict(feeds))
        # infer() returns copies (share_outputs is off): the next call does not overwrite them.
        return [np.asarray(result[self._compiled.output(name)]) for name in output_names]


def open_session(
    model_path: Path, backend: str, threads: int, *, spin: bool, precision: str | None, origin: str
) -> Session:
    """Open ``model_path`` on ``backend`` (a name from :data:`BACKENDS`).

    Raises:
        ArtefactError: the engine cannot load the file, or the backend is unknown.
        MissingExtraError: the backend's package is not installed.
    """
    if backend == ONNXRUNTIME:
        return OnnxRuntimeSession(model_path, threads, spin)
    if backend == OPENVINO:
        return OpenVINOSession(model_path, threads, precision or "float32", origin)
    raise ArtefactError(
        f"{origin}: backend {backend!r} is not one this embedrt knows ({', '.join(BACKENDS)}); "
        "upgrade embedrt or re-export the model"
    )
