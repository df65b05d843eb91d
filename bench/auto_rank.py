"""What ``embedrt export --variant auto`` may try on this CPU, and how it picks among them.

Pure functions over data (no measuring, no files): which candidates fit a CPU, whether a
candidate's figures pass the fidelity gate, the ranking, and the one line the command prints.
:mod:`embedrt.bench.auto_variant` measures the figures and calls these.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from embedrt.export.quantize.recipe import candidate_recipes
from embedrt.export.variants import BUILD_BF16, BUILD_QUANTISED, VARIANTS, Variant
from embedrt.runtime.backends import BF16_CPU_FLAGS, OPENVINO
from embedrt.runtime.manifest import CandidateRecord, SelectionRecord

# The fp32 export: the baseline every speed ratio is taken to, and the fallback when no
# other candidate passes (it is the exported graph as is).
BASELINE = "fp32"
# Flags the record keeps: those that pick onnxruntime's and OpenVINO's kernels.
DECISIVE_FLAGS = (
    "avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16",
    "asimddp", "i8mm", "bf16", "sve",
)
# The one flag the summary line names for int8 and for bf16 arithmetic, best first.
_INT8_FLAGS = ("amx_int8", "avx512_vnni", "avx_vnni", "i8mm", "asimddp", "avx512bw", "avx2")
_BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")


@dataclass(frozen=True)
class FidelityGate:
    """The int8 fidelity gate every candidate must pass (docs/variants.md states it).

    Attributes:
        min_cosine: lowest per-text cosine to torch on held-out texts.
        mean_cosine: lowest mean of those cosines.
        invariance: lowest cosine between a text embedded alone and inside mixed batches.
    """

    min_cosine: float = 0.99
    mean_cosine: float = 0.998
    invariance: float = 0.99999


@dataclass(frozen=True)
class Candidate:
    """An artefact to build: a variant, and for quantised ones the CPU target of its recipe.

    Attributes:
        name: the label in the record (``int8``; ``int8/avx512`` for another target's recipe).
        variant: the export variant.
        isa: the recipe's CPU target (quantised variants); None: export detects this CPU's.
    """

    name: str
    variant: str
    isa: str | None = None


def candidates(
    flags: Collection[str],
    openvino_installed: bool,
    gate: FidelityGate = FidelityGate(),
) -> list[Candidate]:
    """The candidates worth building on a CPU with ``flags``, fp32 first.

    Every variant whose own export gate is at least the int8 gate's min cosine (so not
    ``int8-edge`` or ``int4-edge``, which trade fidelity for size), that this CPU can run:
    OpenVINO variants only with the [openvino] extra, ``bf16`` only with bf16 arithmetic in
    hardware (:data:`~embedrt.runtime.backends.BF16_CPU_FLAGS`; emulated bf16 is slower than
    fp32). A quantised variant is built with each recipe
    :func:`~embedrt.export.quantize.recipe.candidate_recipes` names for these flags: on a CPU
    with VNNI (or AMX) the one s8 recipe; without it, u8 weights and 7-bit s8 weights, whose
    speed and fidelity differ by CPU.
    """
    found = [Candidate(BASELINE, BASELINE)]
    for variant in VARIANTS.values():
        if variant.name == BASELINE or variant.min_cosine < gate.min_cosine:
            continue
        if not _runs_here(variant, frozenset(flags), openvino_installed):
            continue
        if variant.build == BUILD_QUANTISED:
            found += _quantised(variant.name, frozenset(flags))
        else:
            found.append(Candidate(variant.name, variant.name))
    return found


def _runs_here(variant: Variant, flags: frozenset[str], openvino_installed: bool) -> bool:
    if variant.backend == OPENVINO and not openvino_installed:
        return False
    return variant.build != BUILD_BF16 or bool(flags & BF16_CPU_FLAGS)


def _quantised(variant: str, flags: frozenset[str]) -> list[Candidate]:
    """This CPU's recipe first (labelled ``variant``), then the others (``variant/isa``)."""
    recipes = candidate_recipes(variant, flags)
    return [
        Candidate(variant if i == 0 else f"{variant}/{r.target_isa}", variant, r.target_isa)
        for i, r in enumerate(recipes)
    ]


def gate_failures(
    min_cosine: float, mean_cosine: float, invariance: float, gate: FidelityGate
) -> list[str]:
    """What a candidate's figures miss of ``gate``, in words (empty: it passes)."""
    missed = []
    if min_cosine < gate.min_cosine:
        missed.append(f"min cosine {min_cosine:.4f} < {gate.min_cosine}")
    if mean_cosine < gate.mean_cosine:
        missed.append(f"mean cosine {mean_cosine:.5f} < {gate.mean_cosine}")
    if invariance < gate.invariance:
        missed.append(f"invariance {invariance:.6f} < {gate.invariance}")
    return missed


def speedup(texts_per_s: Mapping[str, float], baseline: Mapping[str, float]) -> float:
    """Geometric mean over the buckets of ``texts_per_s / baseline``.

    Ratios, not texts/s: short texts run ten to twenty times faster than long ones, so an
    arithmetic mean of texts/s would rank by the short bucket alone. The geometric mean of
    ratios weighs each bucket alike and ranks the same whichever candidate is the baseline.

    Raises:
        ValueError: the two name different buckets, or none.
    """
    if set(texts_per_s) != set(baseline) or not baseline:
        raise ValueError(f"buckets differ: {sorted(texts_per_s)} vs fp32's {sorted(baseline)}")
    logs = [math.log(texts_per_s[bucket] / baseline[bucket]) for bucket in baseline]
    return math.exp(sum(logs) / len(logs))


def rank(records: Sequence[CandidateRecord]) -> tuple[CandidateRecord, str]:
    """The fastest passing candidate (highest ``speedup``; ties: the earlier one) and why.

    When none passes, the fp32 candidate, the exported graph as is, whatever its figures.

    Raises:
        ValueError: no candidate is named fp32.
    """
    fallback = next((r for r in records if r.name == BASELINE), None)
    if fallback is None:
        raise ValueError(f"no {BASELINE} candidate among {[r.name for r in records]}")
    passing = sorted(
        (r for r in records if r.passed and r.speedup is not None),
        key=lambda r: -(r.speedup or 0.0),  # sorted() is stable: ties keep build order
    )
    if not passing:
        return fallback, f"no candidate passed the fidelity gate; {BASELINE} is kept as the fallback"
    best = passing[0]
    others = [f"{r.name} {r.speedup:.2f}x" for r in passing[1:]]
    failed = [r.name for r in records if not r.passed]
    reason = (
        f"{best.name} is the fastest of the {len(passing)} candidates that pass the fidelity gate: "
        f"{best.speedup:.2f}x {BASELINE} (geometric mean of the per-bucket texts/s ratios)"
        + (f"; next: {', '.join(others)}" if others else "")
        + (f"; failed the gate or the build: {', '.join(failed)}" if failed else "")
    )
    return best, reason


def summary_line(selection: SelectionRecord) -> str:
    """One line: what was chosen over what (fastest first, then the failed), on which CPU."""
    by_name = {c.name: c for c in selection.candidates}
    chosen = by_name[selection.chosen]
    figures = [f"{chosen.speedup:.2f}x {BASELINE}" if chosen.speedup is not None else "not measured"]
    if chosen.min_cosine is not None:
        figures.append(f"min cosine {chosen.min_cosine:.4f}")
    # the others fastest first, then those that failed, in build order
    rest = sorted((c for c in selection.candidates if c.name != chosen.name),
                  key=lambda c: (not c.passed, -(c.speedup or 0.0)))
    others = [_other(c) for c in rest]
    cpu_flags = [_first(selection.cpu_flags, _INT8_FLAGS), _first(selection.cpu_flags, _BF16_FLAGS)]
    named = ", ".join(flag for flag in cpu_flags if flag)
    return (
        f"auto: chose {chosen.name} ({', '.join(figures)})"
        + (f" over {', '.join(others)}" if others else "")
        + f" on {selection.cpu_model}"
        + (f" ({named})" if named else "")
    )


def _other(record: CandidateRecord) -> str:
    if not record.passed:
        return f"{record.name} (failed: {record.reason.split('; ')[0]})"
    return f"{record.name} ({record.speedup:.2f}x)" if record.speedup is not None else record.name


def _first(present: Collection[str], preference: Sequence[str]) -> str:
    return next((flag for flag in preference if flag in present), "")
