"""``embedrt export --variant auto``: build what fits this CPU, measure here, keep the fastest faithful one.

1. Build every candidate of :func:`embedrt.bench.auto_rank.candidates` with
   :func:`embedrt.export.export_model` (each passes its own variant's export gate, or is
   recorded as failed with the reason).
2. Fidelity on held-out texts (the STS-B dev sentences shipped with embedrt.bench, which
   export never calibrates on): per-text cosine to sentence-transformers on torch, min and
   mean, and batch invariance (a text alone vs inside shuffled mixed-length batches), with
   the bench's own :mod:`~embedrt.bench.quality` functions.
3. Speed with the bench's workloads and :func:`~embedrt.bench.speed.throughput`: short,
   medium and long texts at batch 32, every candidate in each round so drift on a shared
   machine hits all alike, medians of a few repeats.
4. :func:`~embedrt.bench.auto_rank.rank` keeps the fastest that passes; its artefact is
   written with the measurements in the manifest's ``selection`` record.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path

from embedrt.export import ExportOptions, export_model
from embedrt.export.errors import OutputDirectoryError, QuantizationError
from embedrt.export.quantize.recipe import detect_isa
from embedrt.export.source import resolve_source
from embedrt.export.variants import get_variant
from embedrt.runtime.cpus import cpu_flags, usable_cpus
from embedrt.runtime.errors import EmbedrtError, ParityError
from embedrt.runtime.home import AUTO_VARIANT, artefact_dir
from embedrt.runtime.manifest import MANIFEST_FILE, TOKENIZER_FILE, CandidateRecord, Manifest, SelectionRecord
from embedrt.runtime.pooling import row_cosines

from .auto_rank import (
    BASELINE,
    DECISIVE_FLAGS,
    Candidate,
    FidelityGate,
    candidates,
    gate_failures,
    rank,
    speedup,
)
from .context import run_context
from .quality import batch_invariance, cosine_stats
from .speed import throughput
from .systems import EmbedrtSystem, SystemSpec
from .workloads import Workload, build_workload, default_sts, token_counts

logger = logging.getLogger(__name__)

Report = Callable[[str], None]


class HeldOutTextsMissingError(EmbedrtError, FileNotFoundError):
    """The held-out texts the fidelity gate is measured on are not installed."""


@dataclass(frozen=True)
class AutoOptions:
    """How much to measure. The defaults take about a minute for all-MiniLM-L6-v2 on 2 cores.

    Attributes:
        threads: inference threads for every candidate; None: the CPUs this process may use.
        batch_size: texts per batch in the speed measurement (the bench's headline size).
        repeats: timed rounds per bucket (the median is kept).
        bucket_texts: texts per length bucket (short, medium, long).
        fidelity_texts: held-out sentences compared with torch; None: every one in the file.
        invariance_probes: texts embedded alone and inside mixed batches.
        invariance_batch_sizes: the mixed batches' sizes.
        sts: the held-out STS-B style file; None: the one shipped with embedrt.bench.
        gate: the fidelity gate.
    """

    threads: int | None = None
    batch_size: int = 32
    repeats: int = 3
    bucket_texts: Mapping[str, int] = field(
        default_factory=lambda: {"short": 512, "medium": 256, "long": 64}
    )
    fidelity_texts: int | None = None
    invariance_probes: int = 48
    invariance_batch_sizes: tuple[int, ...] = (8, 32)
    sts: Path | None = None
    gate: FidelityGate = FidelityGate()


@dataclass
class _Built:
    """A candidate's artefact directory and what was measured on it so far."""

    candidate: Candidate
    path: Path | None
    reason: str = ""
    figures: dict[str, float] = field(default_factory=dict)
    texts_per_s: dict[str, float] = field(default_factory=dict)


def export_auto(
    source: str | Path | None,
    out_dir: Path | None,
    options: AutoOptions = AutoOptions(),
    progress: Report | None = None,
    report: Report | None = None,
) -> Manifest:
    """Build, measure and rank the candidates; write the chosen one to ``out_dir``.

    Args:
        source: as :func:`embedrt.export.export_model`'s.
        out_dir: where to write; default ``<home>/models/<model>/auto``.
        options: how much to measure.
        progress: called as each step starts (export's steps, prefixed by the candidate).
        report: called with one line per candidate once its figures are known.

    Returns:
        The written manifest; its ``selection`` holds every candidate's figures and the reason.

    Raises:
        OutputDirectoryError: ``out_dir`` holds something that is not an artefact.
        EmbedrtError: the fp32 candidate, the baseline, cannot be exported (export's errors).
    """
    started = time.perf_counter()
    step = progress or (lambda message: logger.info("%s", message))
    say = report or (lambda line: logger.info("%s", line))
    target = out_dir if out_dir is not None else artefact_dir(resolve_source(source)[1], AUTO_VARIANT)
    _check_writable(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    threads = options.threads or usable_cpus()
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}-candidates-", dir=target.parent))
    try:
        found = candidates(cpu_flags(), find_spec("openvino") is not None, gate=options.gate)
        built = [_build(c, source, work / f"c{i}", threads, step) for i, c in enumerate(found)]
        workload = _workload(built, options)
        # quiet about the long bucket's truncation: EmbedrtSystem embeds with warn_truncation=False
        step("measuring fidelity on held-out texts")
        fidelity_texts = _measure_fidelity(built, workload, options, threads, say)
        step("measuring speed")
        _measure_speed(built, workload, options, threads)
        records = _records(built)
        chosen, reason = rank(records)
        selection = _selection(records, chosen.name, reason, options, threads, fidelity_texts, workload)
        selection = dataclasses.replace(selection, seconds=round(time.perf_counter() - started, 1))
        step(f"writing {target}")
        return _write(next(b for b in built if b.candidate.name == chosen.name), selection, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _selection(
    records: tuple[CandidateRecord, ...], chosen: str, reason: str, options: AutoOptions, threads: int,
    fidelity_texts: int, workload: Workload,
) -> SelectionRecord:
    """The manifest record of a finished selection (``seconds`` still 0)."""
    flags = cpu_flags()
    return SelectionRecord(
        chosen=chosen, reason=reason, cpu_model=str(run_context(threads, usable_cpus())["cpu"]["model"]),
        cpu_flags=tuple(f for f in DECISIVE_FLAGS if f in flags), isa=detect_isa(),
        threads=threads, batch_size=options.batch_size, repeats=options.repeats,
        gate_min_cosine=options.gate.min_cosine, gate_mean_cosine=options.gate.mean_cosine,
        gate_invariance=options.gate.invariance, fidelity_texts=fidelity_texts,
        bucket_texts={bucket: len(texts) for bucket, texts in workload.buckets.items()},
        seconds=0.0, candidates=records,
    )


def _write(chosen: _Built, selection: SelectionRecord, target: Path) -> Manifest:
    """Record ``selection`` in the chosen candidate's manifest and move it to ``target``."""
    if chosen.path is None:  # rank chooses a built candidate, or fp32, whose failure raised
        raise RuntimeError(f"{chosen.candidate.name} was chosen but not built")
    manifest = dataclasses.replace(Manifest.load(chosen.path), selection=selection)
    manifest.save(chosen.path)
    if target.exists():
        shutil.rmtree(target)
    chosen.path.rename(target)
    return manifest


def _workload(built: Sequence[_Built], options: AutoOptions) -> Workload:
    """The held-out STS sentences and the length buckets, tokenised with the fp32 artefact's tokenizer.

    Raises:
        HeldOutTextsMissingError: no ``sts`` was given and the shipped file is missing.
    """
    sts = options.sts or default_sts()
    if sts is None:
        raise HeldOutTextsMissingError(
            "the STS-B dev file shipped with embedrt.bench (its held-out texts) is missing from this "
            "install; reinstall embedrt, or export a named variant"
        )
    return build_workload(_fp32(built).path / TOKENIZER_FILE, dict(options.bucket_texts), sts, None)


def _build(candidate: Candidate, source: str | Path | None, path: Path, threads: int, step: Report) -> _Built:
    """Export ``candidate``; a failure of its own gate or recipe is recorded (fp32's raises)."""
    step(f"{candidate.name}: building")
    options = ExportOptions(variant=candidate.variant, isa=candidate.isa, threads=threads)
    try:
        export_model(source, path, options, progress=lambda message: step(f"{candidate.name}: {message}"))
    except (ParityError, QuantizationError) as err:
        if candidate.name == BASELINE:
            raise
        return _Built(candidate, None, reason=f"export failed: {err}")
    return _Built(candidate, path)


def _measure_fidelity(
    built: Sequence[_Built], workload: Workload, options: AutoOptions, threads: int, say: Report
) -> int:
    """Cosine to torch and batch invariance of each built candidate; returns the texts compared.

    The held-out texts are the workload's STS sentences; the invariance batches mix them with
    the long bucket's texts, so a probe shares its batch with texts of other lengths.
    """
    from embedrt.export.parity import reference_embeddings

    sentences = list(dict.fromkeys(text for pair in workload.sts_pairs for text in pair))
    sentences = sentences[: options.fidelity_texts]
    source = Path(Manifest.load(_fp32(built).path).source.path)
    reference = reference_embeddings(source, sentences)
    probes = sentences[:: max(1, len(sentences) // options.invariance_probes)][: options.invariance_probes]
    fillers = [*sentences[:500], *workload.buckets["long"]]
    for item in built:
        if item.path is None:
            say(f"auto: {item.candidate.name}: {item.reason}")
            continue
        system = EmbedrtSystem(SystemSpec(item.candidate.name, "embedrt", str(item.path), threads))
        stats = cosine_stats(row_cosines(system.embed(sentences, options.batch_size), reference))
        invariance = batch_invariance(system, probes, fillers, options.invariance_batch_sizes)
        item.figures = {
            "min_cosine": float(stats["min"] or 0.0),
            "mean_cosine": float(stats["mean"] or 0.0),
            "invariance": min(float(v["min"] or 0.0) for v in invariance.values()),
        }
        missed = gate_failures(**item.figures, gate=options.gate)
        item.reason = "; ".join(missed)
        say(f"auto: {item.candidate.name}: held-out min cosine {item.figures['min_cosine']:.4f}, "
            f"mean {item.figures['mean_cosine']:.5f}, invariance {item.figures['invariance']:.7f}: "
            + (f"fails the gate ({item.reason})" if missed else "passes the gate"))
    return len(sentences)


def _measure_speed(built: Sequence[_Built], workload: Workload, options: AutoOptions, threads: int) -> None:
    """Texts/s per bucket of every built candidate at the batch size, rounds interleaved."""
    tokenizer = _fp32(built).path / TOKENIZER_FILE
    ready = [b for b in built if b.path is not None]
    systems = [EmbedrtSystem(SystemSpec(b.candidate.name, "embedrt", str(b.path), threads)) for b in ready]
    for bucket, texts in workload.buckets.items():
        tokens = int(token_counts(tokenizer, texts).sum())
        speed = throughput(systems, texts, tokens, options.batch_size, options.repeats, lambda: None)
        for item in ready:
            item.texts_per_s[bucket] = speed[item.candidate.name]["texts_per_s"]


def _records(built: Sequence[_Built]) -> tuple[CandidateRecord, ...]:
    baseline = _fp32(built).texts_per_s
    records = []
    for item in built:
        measured = item.path is not None and bool(item.texts_per_s)
        records.append(CandidateRecord(
            name=item.candidate.name,
            variant=item.candidate.variant,
            target_isa=item.candidate.isa,
            backend=get_variant(item.candidate.variant).backend,
            passed=measured and not item.reason,
            reason=item.reason,
            min_cosine=item.figures.get("min_cosine"),
            mean_cosine=item.figures.get("mean_cosine"),
            invariance=item.figures.get("invariance"),
            texts_per_s=dict(item.texts_per_s),
            speedup=speedup(item.texts_per_s, baseline) if measured else None,
        ))
    return tuple(records)


@dataclass(frozen=True)
class _Baseline:
    path: Path
    texts_per_s: dict[str, float]


def _fp32(built: Sequence[_Built]) -> _Baseline:
    """The fp32 candidate, always built (a failure to export it raises in :func:`_build`)."""
    item = next(b for b in built if b.candidate.name == BASELINE)
    if item.path is None:
        raise RuntimeError(f"the {BASELINE} candidate was not built")
    return _Baseline(item.path, item.texts_per_s)


def _check_writable(target: Path) -> None:
    if target.exists() and not target.is_dir():
        raise OutputDirectoryError(f"{target}: exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not (target / MANIFEST_FILE).is_file():
        raise OutputDirectoryError(
            f"{target}: exists, is not empty and is not an embedrt artefact; "
            "choose another --out or empty it first"
        )
