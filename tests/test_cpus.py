"""CPU-feature warnings at load: only where the CPU lacks what changes results or speed (issue 14).

The CPU is simulated (``cpu_flags`` and ``platform.machine`` patched), so every case runs on any
machine; the flags are the ones export writes into ``requires_cpu_flags`` for each target.
"""

from __future__ import annotations

import logging

import pytest
from embedrt.runtime import cpus

VNNI_ARTEFACT = ("avx512f", "avx512bw", "avx512_vnni")  # int8 / int8-edge exported on a VNNI x86
AVX_VNNI_ARTEFACT = ("avx2", "avx_vnni")
AVX512_ARTEFACT = ("avx512f", "avx512bw")  # u8 weights, as --isa avx512 and avx2 write
AVX2_ARTEFACT = ("avx2",)
ZEN4 = {"sse4_2", "avx2", "avx512f", "avx512bw", "avx512_vnni"}
ALDER_LAKE = {"sse4_2", "avx2", "avx_vnni"}  # AVX-VNNI, no AVX-512
SKYLAKE_X = {"sse4_2", "avx2", "avx512f", "avx512bw"}  # AVX-512 without VNNI
HASWELL = {"sse4_2", "avx2"}
CORTEX_A76 = {"fp", "asimd", "asimddp", "crc32"}
CORTEX_A72 = {"fp", "asimd", "crc32"}


def _load(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, machine: str, flags: set[str],
    required: tuple[str, ...],
) -> tuple[tuple[str, ...], list[str]]:
    monkeypatch.setattr(cpus, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(cpus.platform, "machine", lambda: machine)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="embedrt"):
        warned = cpus.warn_missing_cpu_flags(required, "/models/m/int8")
    return warned, [r.getMessage() for r in caplog.records]


@pytest.mark.parametrize("flags", [CORTEX_A76, CORTEX_A72], ids=["cortex-a76", "cortex-a72"])
@pytest.mark.parametrize("required", [VNNI_ARTEFACT, AVX_VNNI_ARTEFACT, AVX512_ARTEFACT, AVX2_ARTEFACT])
def test_arm_runs_the_x86_int8_file_without_a_warning(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    flags: set[str],
    required: tuple[str, ...],
) -> None:
    # one int8 file serves x86 with VNNI and arm64: its x86 flags say nothing about ARM kernels
    assert _load(monkeypatch, caplog, "aarch64", flags, required) == ((), [])


@pytest.mark.parametrize(
    ("flags", "required"),
    [
        (ZEN4, VNNI_ARTEFACT),
        (ALDER_LAKE, VNNI_ARTEFACT),  # AVX-VNNI: the same exact sums, 256 bits wide
        (ZEN4, AVX_VNNI_ARTEFACT),
        (HASWELL, AVX512_ARTEFACT),  # u8 weights: --isa avx2 writes the same graph
        (SKYLAKE_X, AVX2_ARTEFACT),
        (HASWELL, ()),  # fp32
    ],
)
def test_x86_with_what_matters_gets_no_warning(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    flags: set[str],
    required: tuple[str, ...],
) -> None:
    assert _load(monkeypatch, caplog, "x86_64", flags, required) == ((), [])


@pytest.mark.parametrize("flags", [SKYLAKE_X, HASWELL], ids=["avx512-no-vnni", "avx2"])
def test_x86_without_vnni_is_told_the_measured_consequence_and_the_fix(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, flags: set[str]
) -> None:
    warned, lines = _load(monkeypatch, caplog, "x86_64", flags, VNNI_ARTEFACT)
    assert warned == ("avx512_vnni",) and len(lines) == 1
    line = lines[0]
    assert line.startswith("/models/m/int8 was quantised for CPUs with an int8 dot product")
    for fact in ("saturate", "onnxruntime#6004", "1.08x without VNNI", "--isa avx2", "fp32 artefact"):
        assert fact in line, fact
    # the fix that needs torch says so
    assert "needs the [export] extra (torch)" in line and "on this machine" not in line


def test_unknown_flags_are_named(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    for machine, flags in (("x86_64", ZEN4), ("aarch64", CORTEX_A76)):
        warned, lines = _load(monkeypatch, caplog, machine, flags, ("no_such_cpu_flag_x", "avx2"))
        expected = ("no_such_cpu_flag_x",)
        assert warned == expected and len(lines) == 1, (machine, lines)
        assert "CPU features this CPU lacks (no_such_cpu_flag_x)" in lines[0]
        assert "on this machine" not in lines[0]


def test_x86_without_avx2_is_named(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    warned, lines = _load(monkeypatch, caplog, "x86_64", {"sse4_2"}, AVX2_ARTEFACT)
    assert warned == ("avx2",) and "lacks (avx2)" in lines[0]


def test_unreadable_cpu_is_not_guessed(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert _load(monkeypatch, caplog, "x86_64", set(), VNNI_ARTEFACT) == ((), [])
