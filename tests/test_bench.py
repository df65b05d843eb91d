"""`embedrt bench --quick` on the tiny model: the report's keys, ratios, skips and chart.

Nothing here asserts a speed: only that the figures exist and the ratios are the
quotients of the figures they come from.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

_NEEDED = ("matplotlib", "sentence_transformers", "torch")
_MISSING = [name for name in _NEEDED if importlib.util.find_spec(name) is None]
if _MISSING:
    pytest.skip(f"bench tests need {', '.join(_MISSING)} ([bench] and [export] extras)",
                allow_module_level=True)

from embedrt.bench.quality import average_ranks, invariance_batches, spearman  # noqa: E402
from embedrt.cli import app  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BUCKETS = ("short", "medium", "long")


def _sts_file(path: Path, words: list[str]) -> Path:
    """A small STS-style TSV in the tiny model's vocabulary, with tied scores."""
    rng = np.random.default_rng(0)
    lines = ["sentence1\tsentence2\tscore"]
    for i in range(40):
        left = " ".join(rng.choice(words, 6))
        right = " ".join(rng.choice(words, 6)) if i % 3 else left
        lines.append(f"{left}\t{right}\t{float(i % 6)}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def report(
    tiny_bert: Path, tiny_model_words: list[str], tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], Path]:
    """One quick run with fastembed made unimportable, so it must be reported as skipped."""
    out = tmp_path_factory.mktemp("bench")
    sts = _sts_file(out / "sts.tsv", tiny_model_words)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "fastembed", None)  # import fastembed -> ImportError
        result = CliRunner().invoke(
            app, ["bench", "--quick", "--model", str(tiny_bert), "--sts", str(sts),
                     "--out", str(out / "results"), "--threads", "1"],
        )
    assert result.exit_code == 0, result.output
    return json.loads((out / "results" / "results.json").read_text()), out / "results"


def test_report_has_the_stable_keys(report: tuple[dict[str, Any], Path]) -> None:
    results, _ = report
    for key in ("schema", "context", "settings", "workloads", "systems", "baselines", "latency",
                "throughput", "quality", "cold_start", "size", "ratios"):
        assert key in results, key
    context = results["context"]
    # In-process the command is pytest's own argv; it must still be recorded, as text.
    assert context["threads"] == 1 and isinstance(context["command"], str) and context["command"]
    assert set(context["cpu"]["flags"]) >= {"avx2", "avx512f", "avx512_vnni", "avx_vnni"}
    assert context["versions"]["numpy"] and context["date"]
    steal = context["cpu_steal_percent"]
    phases = {"latency", "throughput", "quality", "cold_start", "size"}
    assert set(steal) == set(context["phase_seconds"]) == phases
    assert all(v is None or 0 <= v <= 100 for v in steal.values())
    assert results["baselines"] == {"torch": "torch", "fp32": "embedrt-tiny-bert"}
    for bucket in BUCKETS:
        stats = results["workloads"][bucket]
        assert stats["count"] > 0 and stats["token_mean"] > 0 and stats["token_std"] >= 0
    assert results["workloads"]["long"]["over_128"] > 0  # long texts cross the 128-token trap


def test_every_measured_system_has_every_figure(report: tuple[dict[str, Any], Path]) -> None:
    results, _ = report
    # Peers installed here (OpenVINO, sentence-transformers' ONNX backend, ...) are measured too.
    measured = {s["name"] for s in results["systems"] if s["status"] == "ok"}
    assert {"torch", "embedrt-tiny-bert"} <= measured and set(results["throughput"]) == measured
    for name in measured:
        for bucket in BUCKETS:
            assert set(results["latency"][name][bucket]) >= {"p50_ms", "p95_ms", "p99_ms"}
            for batch in ("1", "32"):
                figures = results["throughput"][name][bucket][batch]
                assert figures["texts_per_s"] > 0 and figures["tokens_per_s"] > 0
        assert results["cold_start"][name]["seconds"] > 0
        assert results["cold_start"][name]["peak_rss_mib"] > 0
        assert results["size"][name]["model_file_bytes"] > 0
        quality = results["quality"][name]
        assert set(quality["buckets"]) == set(BUCKETS)
        assert {"over_128", "over_256", "sts_spearman_x100", "batch_invariance"} <= set(quality)
    fp32 = results["quality"]["embedrt-tiny-bert"]
    assert fp32["buckets"]["long"]["min"] > 0.9999  # fp32 ONNX agrees with torch
    # The tiny random model scores many pairs almost alike, so float noise reorders ranks:
    # only check Spearman was computed; the real-model run is where its value means something.
    assert -100.0 <= fp32["sts_spearman_x100"] <= 100.0
    assert all(entry["min"] > 0.9999 for entry in fp32["batch_invariance"].values())


def test_ratios_are_quotients_of_the_figures(report: tuple[dict[str, Any], Path]) -> None:
    results, _ = report
    ratios = results["ratios"]["embedrt-tiny-bert"]["vs_torch"]
    mine, base = "embedrt-tiny-bert", "torch"
    for bucket in BUCKETS:
        for batch in ("1", "32"):
            expected = (results["throughput"][mine][bucket][batch]["texts_per_s"]
                        / results["throughput"][base][bucket][batch]["texts_per_s"])
            assert math.isclose(ratios["throughput"][bucket][batch], expected, rel_tol=1e-12)
        expected = results["latency"][mine][bucket]["p50_ms"] / results["latency"][base][bucket]["p50_ms"]
        assert math.isclose(ratios["latency_p50"][bucket], expected, rel_tol=1e-12)
    cold = results["cold_start"]
    assert math.isclose(ratios["cold_start_seconds"], cold[mine]["seconds"] / cold[base]["seconds"])
    assert math.isclose(ratios["cold_start_peak_rss_mib"],
                        cold[mine]["peak_rss_mib"] / cold[base]["peak_rss_mib"])
    self_ratio = results["ratios"][mine]["vs_fp32"]
    assert self_ratio["throughput"]["long"]["32"] == 1.0 and self_ratio["cold_start_seconds"] == 1.0


def test_unavailable_system_is_reported_as_skipped(report: tuple[dict[str, Any], Path]) -> None:
    results, out = report
    statuses = {s["name"]: s for s in results["systems"]}
    assert statuses["fastembed"]["status"] == "skipped"
    assert "not installed" in statuses["fastembed"]["reason"]
    assert statuses["torch"]["status"] == "ok" and statuses["embedrt-tiny-bert"]["status"] == "ok"
    assert "fastembed" not in results["throughput"]
    markdown = (out / "results.md").read_text()
    assert "| fastembed | fastembed | skipped |" in markdown and "## Throughput" in markdown


def test_chart_is_a_valid_png(report: tuple[dict[str, Any], Path]) -> None:
    import matplotlib.image

    _, out = report
    chart = out / "throughput-vs-fidelity.png"
    assert chart.read_bytes()[:8] == PNG_SIGNATURE
    pixels = matplotlib.image.imread(chart)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100


def test_spearman_matches_the_definition_with_ties() -> None:
    assert list(average_ranks(np.array([3.0, 1.0, 3.0, 2.0]))) == [3.5, 1.0, 3.5, 2.0]
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    rng = np.random.default_rng(3)
    a, b = rng.integers(0, 5, 50).astype(float), rng.normal(size=50)
    if importlib.util.find_spec("scipy") is not None:
        from scipy.stats import spearmanr

        assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)


def test_invariance_batches_hold_each_probe_once() -> None:
    probes = [f"probe {i}" for i in range(10)]
    fillers = [f"filler {i}" for i in range(50)]
    for size in (8, 32):
        seen = []
        for texts, positions in invariance_batches(probes, fillers, size):
            assert len(texts) == size
            seen += [texts[p] for p in positions]
        assert seen == probes


def test_cpu_steal_is_read_from_proc_stat(tmp_path: Path) -> None:
    from embedrt.bench.machine import cpu_times, steal_percent

    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 50 800 10 0 0 40 0 0\ncpu0 1 2 3\n")
    start = cpu_times(stat)
    assert start == (40, 1000)
    stat.write_text("cpu  200 0 100 1500 10 0 0 190 0 0\n")
    assert steal_percent(start, cpu_times(stat)) == 15.0  # 150 of 1000 jiffies
    assert cpu_times(tmp_path / "missing") is None
    assert steal_percent(None, start) is None


def test_cpu_model_and_memory_come_from_proc(tmp_path: Path) -> None:
    import os

    from embedrt.bench.machine import cpu_model, peak_rss_kib, peak_rss_mib, rss_bytes

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: avx2\n\n"
                       "processor\t: 1\nmodel name\t: Test CPU 9000\n")
    assert cpu_model(cpuinfo) == "Test CPU 9000"
    # This process's peak is at least what it holds now; a 64 MiB array held is in both.
    before = peak_rss_kib()
    held = bytearray(64 * 2**20)
    held[:: 4096] = b"x" * len(held[:: 4096])  # touch every page so it is resident
    now = rss_bytes(os.getpid()) / 1024
    assert peak_rss_kib() >= now >= 64 * 1024
    assert peak_rss_kib() >= before and abs(peak_rss_mib() - peak_rss_kib() / 1024) <= 0.05
    del held
