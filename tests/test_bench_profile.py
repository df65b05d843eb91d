"""The profile tool (`python -m embedrt.bench.profiling`) on the tiny model's fp32 and int8 artefacts.

Checks the report's structure, that the arithmetic is counted from the graph (against the tiny
model's known sizes), that shares and roofline fractions are the quotients they claim to be,
and the trace reading's warm-up logic. No timing is asserted.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

if importlib.util.find_spec("torch") is None or importlib.util.find_spec("onnx") is None:
    pytest.skip("profile tests need the [export] extra (tiny models, onnx)", allow_module_level=True)

import onnx  # noqa: E402
from embedrt.bench import profiling as profile  # noqa: E402
from embedrt.bench.arithmetic import GraphArithmeticError, model_arithmetic  # noqa: E402
from embedrt.bench.ort_trace import TraceError, read_trace  # noqa: E402
from embedrt.bench.peaks import KERNELS  # noqa: E402
from embedrt.export import ExportOptions, export_model  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

# The tiny BERT of tests/_tiny_models.py: 2 layers, width 32, FFN 64.
LAYERS, HIDDEN, FFN = 2, 32, 64
CASES = {"short/b32", "short/b1", "long/b32", "long/b1"}


@pytest.fixture(scope="module")
def tiny_int8(tiny_sources: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("profile-int8") / "tiny-int8"
    export_model(tiny_sources["bert"], target, ExportOptions(variant="int8"))
    return target


@pytest.fixture(scope="module")
def report(
    tiny_bert: Path, tiny_int8: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("profile-out")
    profile.main(["--model", str(tiny_bert), "--model", str(tiny_int8), "--threads", "1", "--repeats", "1",
                  "--batch1-texts", "3", "--peak-shape", "64x64x64", "--peak-calls", "2", "--out", str(out)])
    return json.loads((out / "profile.json").read_text()), out


def test_arithmetic_is_counted_from_the_graph(tiny_bert: Path, tiny_int8: Path) -> None:
    weights = LAYERS * 2 * (4 * HIDDEN * HIDDEN + 2 * HIDDEN * FFN)  # Q, K, V, out; FFN up, down
    attention = LAYERS * 2 * 2 * HIDDEN  # scores and context: 2·H per token each, times n
    fp32, int8 = model_arithmetic(tiny_bert / "model.onnx"), model_arithmetic(tiny_int8 / "model.onnx")
    for arithmetic in (fp32, int8):
        assert arithmetic.weight_flops_per_token == weights
        assert arithmetic.attention_flops_per_token_sq == attention
        assert arithmetic.attention_products == 2 * LAYERS and set(arithmetic.attention_widths) == {HIDDEN}
    assert (fp32.precision, int8.precision) == ("fp32", "int8")
    assert fp32.text_flops(10) == 10 * weights + 100 * attention
    assert fp32.padded_flops(3, 10) == 3 * fp32.text_flops(10) > fp32.useful_flops([10, 4, 2])


def test_report_structure_and_quotients(report: tuple[dict[str, Any], Path], tiny_bert: Path) -> None:
    results, out = report
    assert results["schema"] == "embedrt-profile/1" and results["context"]["threads"] == 1
    assert {p["kernel"] for p in results["peaks"]} == set(KERNELS)
    for peak in results["peaks"]:
        m, k, n = peak["shape"]
        assert math.isclose(peak["gflops"], 2 * m * k * n / peak["best_seconds"] / 1e9)
        assert peak["best_seconds"] <= peak["median_seconds"]
    assert set(results["limits"]) == {"fp32", "int8"}
    variants = results["variants"]
    assert set(variants) == {tiny_bert.name, "tiny-int8"}
    for name, variant in variants.items():
        precision = variant["arithmetic"]["precision"]
        assert set(variant["cases"]) == CASES
        for case_name, case in variant["cases"].items():
            assert math.isclose(sum(op["share"] for op in case["ops"]), 1.0, rel_tol=1e-9)
            assert case["top_nodes"] and case["top_nodes"][0]["share"] >= case["top_nodes"][-1]["share"]
            assert 0 < case["useful_gflop"] <= case["padded_gflop"]
            if case["batch_size"] == 1:  # one text per call: nothing padded
                assert case["useful_gflop"] == case["padded_gflop"] and case["calls_per_pass"] == 3
            limit = case["limit"]
            assert limit["precision"] == precision
            assert limit["peak_gflops"] == results["limits"][precision]["gflops"]
            assert math.isclose(limit["fraction_useful"], case["useful_gflops"] / limit["peak_gflops"])
            assert math.isclose(case["useful_gflops"], case["useful_gflop"] / case["seconds_per_pass"])
            ops = {op["op"] for op in case["ops"]}
            expected = {"MatMul"} if precision == "fp32" else {"MatMulIntegerToFloat", "QAttention"}
            assert expected & ops, (name, case_name, ops)
    markdown = (out / "profile.md").read_text()
    for heading in ("## GEMM peaks", "## Roofline", "## Share of kernel time by op type"):
        assert heading in markdown
    assert "tiny-int8" in markdown and "of limit (useful)" in markdown


def _trace(path: Path, runs: list[tuple[int, int]], nodes: list[tuple[str, str, int, int]]) -> Path:
    events: list[dict[str, Any]] = [{"cat": "Session", "name": "model_run", "ts": ts, "dur": dur}
                                    for ts, dur in runs]
    events += [{"cat": "Node", "name": f"{node}_kernel_time", "ts": ts, "dur": dur, "args": {"op_name": op}}
               for node, op, ts, dur in nodes]
    events.append({"cat": "Node", "name": "a_fence_before", "ts": 250, "dur": 999, "args": {"op_name": "X"}})
    path.write_text(json.dumps(events))
    return path


def test_trace_skips_warm_up_runs(tmp_path: Path) -> None:
    path = _trace(tmp_path / "t.json", [(0, 100), (200, 100), (400, 100)],
                  [("a", "MatMul", 10, 50), ("a", "MatMul", 210, 30), ("b", "Add", 220, 10),
                   ("a", "MatMul", 410, 30), ("b", "Add", 420, 30)])
    times = read_trace(path, skip_runs=1)
    assert times.runs == 2 and times.run_us == 200
    assert times.by_op == {"MatMul": 60, "Add": 40}  # the warm-up's 50 and the fence are left out
    assert times.by_node == {"a": ("MatMul", 60), "b": ("Add", 40)}
    assert [o["op"] for o in times.op_shares()] == ["MatMul", "Add"]
    assert times.op_shares()[0]["share"] == pytest.approx(0.6) and times.op_shares()[0]["us_per_run"] == 30
    with pytest.raises(TraceError, match="3 runs recorded, none after the 3 warm-up runs"):
        read_trace(path, skip_runs=3)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(TraceError, match="expected a JSON list"):
        read_trace(tmp_path / "bad.json", skip_runs=0)


def test_untraceable_activation_product_is_an_error(tmp_path: Path) -> None:
    node = helper.make_node("MatMul", ["A", "B"], ["Y"], name="lonely")
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4, 4]) for n in "AB"],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [4, 4])],
    )
    onnx.save(helper.make_model(graph), str(tmp_path / "m.onnx"))
    with pytest.raises(GraphArithmeticError, match="'lonely' multiplies two activations"):
        model_arithmetic(tmp_path / "m.onnx")
    weight = numpy_helper.from_array(np.ones((4, 8), dtype=np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["A", "W"], ["Y"])], "g",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, [4, 4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [4, 8])], initializer=[weight],
    )
    onnx.save(helper.make_model(graph), str(tmp_path / "w.onnx"))
    assert model_arithmetic(tmp_path / "w.onnx").weight_flops_per_token == 2 * 4 * 8


def test_bad_peak_shape_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        profile.main(["--model", "x", "--peak-shape", "2048x2048"])
    assert exit_info.value.code == 2
    assert "GEMM shape '2048x2048' is not MxKxN" in capsys.readouterr().err


def test_missing_artefact_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        profile.main(["--model", str(tmp_path / "nope"), "--peak-shape", "8x8x8", "--peak-calls", "1",
                      "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("embedrt: error:") and "nope" in err[0]
