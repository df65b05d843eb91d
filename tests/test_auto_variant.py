"""``embedrt export --variant auto``: the candidates for a CPU, the gate, the ranking, the record.

The ranking and the candidate list are checked on given figures and flags; one real run on the
tiny BERT (every candidate this CPU fits, a small measurement) checks the record, the written
artefact, ``embedrt info`` and the command's one line against values recomputed here.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from embedrt.runtime.errors import ArtefactError
from embedrt.runtime.manifest import CandidateRecord, Manifest, SelectionRecord

pytest.importorskip("typer")
from embedrt.bench.auto_rank import (  # noqa: E402
    BASELINE,
    FidelityGate,
    candidates,
    gate_failures,
    rank,
    speedup,
    summary_line,
)
from embedrt.cli import app  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

AMX_FLAGS = {"avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16"}
BROKEN = "fp32-optimised"  # the candidate whose export the real run makes fail
SMALL = {"repeats": 1, "bucket_texts": {"short": 32, "medium": 16, "long": 8}, "fidelity_texts": 120,
         "invariance_probes": 12}


def _record(name: str, ratio: float | None, passed: bool = True, reason: str = "") -> CandidateRecord:
    speeds = {} if ratio is None else {"short": 1000 * ratio, "medium": 400 * ratio, "long": 50 * ratio}
    return CandidateRecord(name=name, variant=name.split("/")[0], target_isa=None, backend="onnxruntime",
                           passed=passed, reason=reason, min_cosine=0.995, mean_cosine=0.999,
                           invariance=1.0, texts_per_s=speeds, speedup=ratio)


# --- the ranking, on given figures ----------------------------------------------------------

def test_the_fastest_passing_candidate_is_chosen_and_a_faster_failing_one_is_not() -> None:
    records = [_record("fp32", 1.0), _record("fp32-optimised", 1.12), _record("bf16", 1.41),
               _record("int8", 2.3, passed=False, reason="min cosine 0.9712 < 0.99"),
               _record("int8/avx512", 1.9)]
    chosen, reason = rank(records)
    assert chosen.name == "int8/avx512"
    assert reason.startswith(
        "int8/avx512 is the fastest of the 4 candidates that pass the fidelity gate: 1.90x fp32")
    assert "next: bf16 1.41x, fp32-optimised 1.12x, fp32 1.00x" in reason
    assert reason.endswith("failed the gate or the build: int8")


def test_when_nothing_but_fp32_passes_fp32_is_chosen() -> None:
    records = [_record("fp32", 1.0),
               _record("bf16", 1.4, passed=False, reason="invariance 0.99990 < 0.99999"),
               _record("int8", 2.0, passed=False, reason="mean cosine 0.99700 < 0.998")]
    chosen, reason = rank(records)
    assert chosen.name == "fp32" and "fastest of the 1 candidates" in reason
    failing_fp32 = [_record("fp32", 1.0, passed=False, reason="min cosine 0.98 < 0.99"), records[2]]
    chosen, reason = rank(failing_fp32)
    assert chosen.name == "fp32"
    assert reason == "no candidate passed the fidelity gate; fp32 is kept as the fallback"


def test_ties_keep_build_order_and_fp32_must_be_there() -> None:
    chosen, _ = rank([_record("fp32", 1.0), _record("int8", 1.5), _record("int8/avx512", 1.5)])
    assert chosen.name == "int8"
    with pytest.raises(ValueError, match="no fp32 candidate"):
        rank([_record("int8", 1.5)])


def test_speedup_is_the_geometric_mean_of_the_bucket_ratios() -> None:
    fp32 = {"short": 600.0, "medium": 200.0, "long": 25.0}
    # 2x on short, 1x on medium, 0.5x on long: an arithmetic mean of texts/s would call this a win
    assert speedup({"short": 1200.0, "medium": 200.0, "long": 12.5}, fp32) == pytest.approx(1.0)
    assert speedup({"short": 1200.0, "medium": 400.0, "long": 50.0}, fp32) == pytest.approx(2.0)
    a, b = {"short": 900.0, "medium": 500.0, "long": 40.0}, {"short": 1100.0, "medium": 300.0, "long": 45.0}
    # the ranking does not depend on the baseline
    assert (speedup(a, fp32) > speedup(b, fp32)) == (speedup(a, b) > 1.0)
    with pytest.raises(ValueError, match="buckets differ"):
        speedup({"short": 1.0}, fp32)


def test_gate_failures_name_each_missed_figure() -> None:
    gate = FidelityGate()
    assert gate_failures(0.9951, 0.9990, 1.0, gate) == []
    assert gate_failures(0.9899, 0.9979, 0.99998, gate) == [
        "min cosine 0.9899 < 0.99", "mean cosine 0.99790 < 0.998", "invariance 0.999980 < 0.99999"]


# --- which candidates a CPU gets -------------------------------------------------------------

def test_an_amx_cpu_with_openvino_gets_bf16_and_the_one_s8_int8() -> None:
    from embedrt.export.quantize.recipe import recipe_for

    found = candidates(AMX_FLAGS, openvino_installed=True)
    names = [c.name for c in found]
    # int8-edge and int4-edge: their gates are below 0.99. With VNNI the s8 recipe is the one
    # int8 worth building: u8 weights ran at fp32 speed there and 7-bit weights lose fidelity.
    assert names == ["fp32", "fp32-optimised", "bf16", "int8"]
    assert found[3].isa == "avx512_vnni" and recipe_for("int8", "avx512_vnni").weight_type == "s8"
    assert "bf16" not in [c.name for c in candidates(AMX_FLAGS, openvino_installed=False)]


def test_an_avx2_only_cpu_gets_no_bf16_and_both_avx2_int8_weight_forms() -> None:
    from embedrt.export.quantize.recipe import recipe_for, required_cpu_flags

    found = candidates({"avx2", "fma"}, openvino_installed=True)
    assert [c.name for c in found] == ["fp32", "fp32-optimised", "int8", "int8/avx2_reduced"]
    assert found[2].isa == "avx2" and recipe_for("int8", "avx2").weight_type == "u8"
    assert recipe_for("int8", "avx2_reduced").weight_type == "s8"
    assert all(set(required_cpu_flags(c.isa)) <= {"avx2", "fma"} for c in found if c.isa is not None)


# --- the manifest record -------------------------------------------------------------------

def _selection(records: tuple[CandidateRecord, ...], chosen: str = "int8") -> SelectionRecord:
    return SelectionRecord(
        chosen=chosen, reason="why", cpu_model="Test CPU", cpu_flags=("avx2", "amx_int8"), isa="avx512_vnni",
        threads=2, batch_size=32, repeats=3, gate_min_cosine=0.99, gate_mean_cosine=0.998,
        gate_invariance=0.99999, fidelity_texts=100, bucket_texts={"short": 8, "medium": 4, "long": 2},
        seconds=12.5, candidates=records,
    )


def test_the_selection_round_trips_and_an_old_manifest_still_loads(tiny_bert: Path, tmp_path: Path) -> None:
    old = json.loads((tiny_bert / "manifest.json").read_text())
    assert "selection" not in old  # a manifest of a named variant has no selection key
    assert Manifest.from_dict(old).selection is None
    records = (_record("fp32", 1.0), _record("int8", 1.8),
               _record("bf16", None, passed=False, reason="export failed"))
    manifest = dataclasses.replace(Manifest.from_dict(old), selection=_selection(records))
    manifest.save(tmp_path)
    loaded = Manifest.load(tmp_path)
    assert loaded == manifest and loaded.selection is not None
    assert loaded.selection.candidates[2].speedup is None
    assert loaded.selection.candidates[1].texts_per_s["long"] == 90.0


def test_a_bad_selection_is_refused_naming_the_field(tiny_bert: Path) -> None:
    data = json.loads((tiny_bert / "manifest.json").read_text())
    records = (_record("fp32", 1.0), _record("int8", 1.8))
    data["selection"] = json.loads(json.dumps(dataclasses.asdict(_selection(records, chosen="int4"))))
    with pytest.raises(ArtefactError, match=r"manifest: selection.chosen: 'int4' is not one of its"):
        Manifest.from_dict(data)
    data["selection"]["chosen"] = "int8"
    data["selection"]["candidates"][1]["speedup"] = "fast"
    expected = r"manifest: selection.candidates\[1\].speedup: expected float or null, got 'fast'"
    with pytest.raises(ArtefactError, match=expected):
        Manifest.from_dict(data)


def test_the_summary_line_names_the_choice_the_others_and_the_cpu() -> None:
    records = (_record("fp32", 1.0), _record("bf16", 1.4), _record("int8", 1.93),
               _record("int8/avx512", None, passed=False,
                       reason="min cosine 0.9871 < 0.99; mean cosine 0.99700 < 0.998"))
    line = summary_line(_selection(records))
    assert line == ("auto: chose int8 (1.93x fp32, min cosine 0.9950) over bf16 (1.40x), fp32 (1.00x), "
                    "int8/avx512 (failed: min cosine 0.9871 < 0.99) on Test CPU (amx_int8)")


def test_the_default_model_prefers_auto(tiny_bert: Path, tiny_distilbert: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from embedrt.runtime import home

    monkeypatch.setenv(home.HOME_ENV, str(tmp_path))
    monkeypatch.delenv(home.MODEL_ENV, raising=False)
    folder = tmp_path / "models" / home.default_model_name()
    shutil.copytree(tiny_distilbert, folder / "int8")
    assert home.default_model_dir() == folder / "int8"
    shutil.copytree(tiny_bert, folder / "auto")
    assert home.default_model_dir() == folder / "auto"


# --- one real run on the tiny BERT ---------------------------------------------------------

@pytest.fixture(scope="module")
def auto_run(
    tiny_sources: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, str]]:
    """``embedrt export TINY --variant auto --out DIR`` with a small measurement: (DIR, stdout).

    The fp32-optimised export is made to fail its parity gate, as a candidate whose build fails.
    """
    from embedrt.bench import auto_variant
    from embedrt.runtime.errors import ParityError

    def export_model(source: Path, out: Path, options: Any, progress: Any = None) -> Manifest:
        if options.variant == BROKEN:
            raise ParityError(f"{BROKEN} export disagrees with torch: injected by the test")
        return real_export(source, out, options, progress=progress)

    real_export = auto_variant.export_model
    out = tmp_path_factory.mktemp("auto") / "auto"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(auto_variant, "AutoOptions", functools.partial(auto_variant.AutoOptions, **SMALL))
        patch.setattr(auto_variant, "export_model", export_model)
        result = CliRunner().invoke(
            app, ["export", str(tiny_sources["bert"]), "--variant", "auto", "--out", str(out)])
    assert result.exit_code == 0, result.output
    yield out, result.stdout


def test_every_candidate_is_recorded_with_its_figures(auto_run: tuple[Path, str]) -> None:
    from embedrt.runtime.cpus import cpu_flags

    selection = Manifest.load(auto_run[0]).selection
    assert selection is not None
    expected = candidates(cpu_flags(), importlib.util.find_spec("openvino") is not None)
    assert [(c.name, c.variant, c.target_isa) for c in selection.candidates] == [
        (c.name, c.variant, c.isa) for c in expected]
    assert selection.fidelity_texts == SMALL["fidelity_texts"]
    assert selection.bucket_texts == SMALL["bucket_texts"]
    fp32 = selection.candidates[0]
    assert fp32.name == BASELINE and fp32.passed and fp32.speedup == 1.0
    assert fp32.min_cosine is not None and fp32.min_cosine >= 0.99999 and fp32.invariance is not None
    broken = next(c for c in selection.candidates if c.name == BROKEN)
    assert not broken.passed and broken.reason == f"export failed: {BROKEN} export disagrees with torch: " \
        "injected by the test"
    assert broken.min_cosine is None and broken.texts_per_s == {} and broken.speedup is None
    for c in selection.candidates:
        if c is broken:
            continue
        assert c.min_cosine is not None and c.mean_cosine is not None and c.invariance is not None, c
        assert set(c.texts_per_s) == {"short", "medium", "long"} and min(c.texts_per_s.values()) > 0, c
        missed = gate_failures(c.min_cosine, c.mean_cosine, c.invariance, FidelityGate())
        assert c.passed == (not missed) and c.reason == "; ".join(missed), c
        ratios = [c.texts_per_s[b] / fp32.texts_per_s[b] for b in ("short", "medium", "long")]
        assert c.speedup == pytest.approx(math.prod(ratios) ** (1 / 3), rel=1e-9)


def test_the_written_artefact_is_the_fastest_passing_candidate(auto_run: tuple[Path, str]) -> None:
    import numpy as np
    from embedrt.bench.workloads import SHIPPED_STS, read_sts
    from embedrt.export.parity import reference_embeddings
    from embedrt.runtime import Embedder
    from embedrt.runtime.pooling import row_cosines

    manifest = Manifest.load(auto_run[0])
    selection = manifest.selection
    assert selection is not None
    chosen = next(c for c in selection.candidates if c.name == selection.chosen)
    assert rank(selection.candidates)[0] == chosen
    assert chosen.speedup == max(c.speedup or 0.0 for c in selection.candidates if c.passed)
    assert manifest.variant == chosen.variant
    if chosen.target_isa is not None:
        assert manifest.recipe.quantisation is not None
        assert manifest.recipe.quantisation.target_isa == chosen.target_isa
    # the recorded fidelity is this artefact's, recomputed on the same held-out sentences
    pairs, _ = read_sts(SHIPPED_STS)
    sentences = list(dict.fromkeys(t for pair in pairs for t in pair))[: SMALL["fidelity_texts"]]
    reference = reference_embeddings(Path(manifest.source.path), sentences)
    cosines = row_cosines(Embedder.load(auto_run[0]).embed(sentences, batch_size=32), reference)
    assert float(np.min(cosines)) == pytest.approx(chosen.min_cosine, abs=1e-6)
    assert float(np.mean(cosines)) == pytest.approx(chosen.mean_cosine, abs=1e-6)


def test_the_command_prints_one_line_and_info_shows_the_selection(auto_run: tuple[Path, str]) -> None:
    out, stdout = auto_run
    selection = Manifest.load(out).selection
    assert selection is not None
    lines = stdout.strip().splitlines()
    assert lines[0] == summary_line(selection) and lines[0].startswith(f"auto: chose {selection.chosen} (")
    assert lines[1].startswith(f"wrote {out} ({Manifest.load(out).variant}) in ")
    info = CliRunner().invoke(app, ["info", str(out)])
    assert info.exit_code == 0, info.output
    assert f"auto choice     {selection.chosen}: {selection.reason}" in info.stdout
    for c in selection.candidates:
        assert f"{c.name}: {'passed' if c.passed else 'failed: '}" in info.stdout
        if c.name != BROKEN:
            rate = c.texts_per_s["short"]
            assert (f"short {rate:.0f}/s" if rate >= 100 else f"short {rate:.3g}/s") in info.stdout
    assert f"{BROKEN}: failed: export failed: {BROKEN} export disagrees" in info.stdout
    assert f"{BROKEN} (failed: export failed: {BROKEN} export disagrees" in lines[0]


def test_auto_refuses_options_it_sets_itself(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["export", "--variant", "auto", "--isa", "avx2", "--no-check",
                                      "--out", str(tmp_path / "x")])
    assert result.exit_code == 1
    assert "--no-check, --isa cannot be combined with --variant auto" in result.output
    assert not (tmp_path / "x").exists()
