"""This machine's GEMM peaks, measured with onnxruntime itself.

One-node graphs built in-process with ``onnx.helper``: an fp32 ``MatMul``, an int8
``MatMulInteger`` (uint8 activations × int8 weights, int32 out: the VNNI/AMX kernel) and
``MatMulIntegerToFloat`` (the same product scaled back to float, as embedrt's int8 graphs use
it). Each runs in a session with the thread budget of the run; the best of several timed
calls is the peak, since any other work on the machine can only slow a call down.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .arithmetic import _onnx

logger = logging.getLogger(__name__)

# 2048³: large enough for every kernel to reach its steady rate. 1024 × 384 × 1536: the FFN
# up-projection of all-MiniLM-L6-v2 for 32 texts of 32 tokens, a shape the model really runs.
DEFAULT_SHAPES: tuple[tuple[int, int, int], ...] = ((2048, 2048, 2048), (1024, 384, 1536))
KERNELS = ("fp32 MatMul", "int8 MatMulInteger", "int8 MatMulIntegerToFloat")


@dataclass(frozen=True)
class Peak:
    """The best rate one kernel reached on one shape."""

    kernel: str
    m: int
    k: int
    n: int
    best_seconds: float
    median_seconds: float
    calls: int

    @property
    def precision(self) -> str:
        """``fp32`` or ``int8``."""
        return self.kernel.split()[0]

    @property
    def gflops(self) -> float:
        """Operations per second at the best call, in 10⁹ (one multiply-add is two)."""
        return 2 * self.m * self.k * self.n / self.best_seconds / 1e9

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {"kernel": self.kernel, "precision": self.precision, "shape": [self.m, self.k, self.n],
                "best_seconds": self.best_seconds, "median_seconds": self.median_seconds,
                "calls": self.calls, "gflops": self.gflops}


def _graph_bytes(kernel: str, m: int, k: int, n: int, rng: np.random.Generator) -> bytes:
    """A one-node model computing ``A[m,k] · W[k,n]``; ``W`` is an initialiser, as weights are."""
    onnx = _onnx()
    helper, numpy_helper, tp = onnx.helper, onnx.numpy_helper, onnx.TensorProto
    opsets = [helper.make_opsetid("", 17)]
    if kernel == "fp32 MatMul":
        weights = [numpy_helper.from_array(rng.standard_normal((k, n), dtype=np.float32), "W")]
        node = helper.make_node("MatMul", ["A", "W"], ["Y"])
        a_type, y_type = tp.FLOAT, tp.FLOAT
    else:
        weights = [numpy_helper.from_array(rng.integers(-127, 128, (k, n), dtype=np.int8), "W"),
                   numpy_helper.from_array(np.array(128, dtype=np.uint8), "a_zero")]
        a_type = tp.UINT8
        if kernel == "int8 MatMulInteger":
            node = helper.make_node("MatMulInteger", ["A", "W", "a_zero"], ["Y"])
            y_type = tp.INT32
        else:
            weights += [numpy_helper.from_array(np.array(0.01, dtype=np.float32), "a_scale"),
                        numpy_helper.from_array(np.full(n, 0.02, dtype=np.float32), "w_scale")]
            node = helper.make_node("MatMulIntegerToFloat", ["A", "W", "a_scale", "w_scale", "a_zero"],
                                    ["Y"], domain="com.microsoft")
            opsets.append(helper.make_opsetid("com.microsoft", 1))
            y_type = tp.FLOAT
    graph = helper.make_graph(
        [node], "gemm_peak", [helper.make_tensor_value_info("A", a_type, [m, k])],
        [helper.make_tensor_value_info("Y", y_type, [m, n])], initializer=weights,
    )
    model = helper.make_model(graph, opset_imports=opsets)
    return bytes(model.SerializeToString())


def measure_peak(kernel: str, shape: tuple[int, int, int], threads: int, calls: int) -> Peak:
    """Time ``calls`` runs of ``kernel`` on ``shape`` (after two warm-up runs).

    Raises:
        MissingExtraError: the onnx package is not installed.
        ValueError: ``kernel`` is not one of :data:`KERNELS`, or a dimension or ``calls`` is
            not positive.
    """
    import onnxruntime as ort

    if kernel not in KERNELS:
        raise ValueError(f"GEMM kernel {kernel!r} is not one of {', '.join(KERNELS)}")
    if min(*shape, calls) < 1:
        raise ValueError(f"GEMM shape {shape} and calls {calls} must be positive")
    m, k, n = shape
    rng = np.random.default_rng(0)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        _graph_bytes(kernel, m, k, n, rng), sess_options=options, providers=["CPUExecutionProvider"]
    )
    activations: npt.NDArray[Any] = (
        rng.standard_normal((m, k), dtype=np.float32) if kernel == "fp32 MatMul"
        else rng.integers(0, 256, (m, k), dtype=np.uint8)
    )
    feed = {"A": activations}
    for _ in range(2):
        session.run(None, feed)
    seconds = []
    for _ in range(calls):
        started = time.perf_counter()
        session.run(None, feed)
        seconds.append(time.perf_counter() - started)
    peak = Peak(kernel, m, k, n, min(seconds), float(np.median(seconds)), calls)
    logger.info("%s %dx%dx%d: %.0f GFLOP/s", kernel, m, k, n, peak.gflops)
    return peak


def measure_peaks(
    threads: int, shapes: Sequence[tuple[int, int, int]] = DEFAULT_SHAPES, calls: int = 10
) -> list[Peak]:
    """Every kernel of :data:`KERNELS` on every shape.

    Raises:
        MissingExtraError: the onnx package is not installed.
    """
    return [measure_peak(kernel, shape, threads, calls) for shape in shapes for kernel in KERNELS]


def best_by_precision(peaks: Sequence[Peak]) -> dict[str, Peak]:
    """The fastest measured kernel of each precision (``fp32``, ``int8``).

    It is the limit a variant whose weight products run in that precision is compared with.
    """
    best: dict[str, Peak] = {}
    for peak in peaks:
        if peak.precision not in best or peak.gflops > best[peak.precision].gflops:
            best[peak.precision] = peak
    return best
