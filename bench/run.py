"""One benchmark run: find the systems, build the texts, measure, and collect the results.

Measurement lives in :mod:`.speed` and :mod:`.quality`; turning results into files lives
in :mod:`.report` and :mod:`.chart`. This module only sequences them.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from embedrt.runtime.errors import ArtefactNotFoundError

from . import quality, speed
from .peers import KIND_OPENVINO, KIND_OPENVINO_NNCF, KIND_ST_ONNX
from .registry import load_systems
from .systems import KIND_EMBEDRT, KIND_FASTEMBED, KIND_TORCH, System, SystemSpec, SystemStatus
from .workloads import BUCKETS, THRESHOLDS, Workload, build_workload, length_stats, token_counts

logger = logging.getLogger(__name__)

SCHEMA = "embedrt-bench/1"
MIN_THROUGHPUT_TEXTS = 64


@dataclass(frozen=True)
class Settings:
    """How much to measure: the presets :data:`QUICK`, :data:`LITE` and :data:`FULL`."""

    bucket_sizes: dict[str, int]
    latency_texts: int
    warmup: int
    batch_sizes: tuple[int, ...]
    repeats: int
    cold_start_runs: int
    sts_pairs: int | None
    invariance_probes: int
    invariance_batch_sizes: tuple[int, ...]
    latency_rounds: int


QUICK = Settings({"short": 32, "medium": 16, "long": 8}, 8, 2, (1, 32), 1, 1, 100, 6, (8, 32), 1)
# For large models (all-mpnet-base-v2 on torch takes minutes per long bucket): half the texts,
# batch sizes 1 and 32 only, one cold start and one latency round; still 3 interleaved repeats.
LITE = Settings(
    {"short": 256, "medium": 128, "long": 64}, 20, 2, (1, 32), 3, 1, None, 12, (8, 32, 128), 1
)
FULL = Settings(
    {"short": 512, "medium": 256, "long": 128}, 60, 5, (1, 8, 32, 128), 3, 3, None, 30, (8, 32, 128), 3
)


@dataclass(frozen=True)
class BenchOptions:
    """What to benchmark and where to write it.

    Attributes:
        artefacts: embedrt artefact directories, one system each.
        threads: thread budget given to every system.
        sts: STS-B style TSV, or None to generate texts.
        quick: the short preset (CI, development) instead of the full one.
        lite: the :data:`LITE` preset (large models) instead of the full one.
        skip: kinds (``embedrt``, ``sentence-transformers``, ``fastembed``, ``openvino``,
            ``openvino-nncf``, ``sentence-transformers-onnx``) or system names to leave out; the
            report lists them as skipped.
    """

    artefacts: tuple[Path, ...]
    threads: int
    sts: Path | None = None
    quick: bool = False
    lite: bool = False
    skip: tuple[str, ...] = ()
    argv: tuple[str, ...] = field(default_factory=tuple)

    @property
    def settings(self) -> Settings:
        """The preset this run uses."""
        return QUICK if self.quick else LITE if self.lite else FULL

    @property
    def preset(self) -> str:
        """The preset's name, for the report."""
        return "quick" if self.quick else "lite" if self.lite else "full"


class Progress(Protocol):
    """What a run reports its progress to (the CLI draws a bar)."""

    def start(self, total: int) -> None:
        """The run has ``total`` steps."""

    def describe(self, label: str) -> None:
        """Say what runs now."""

    def advance(self) -> None:
        """One step is done."""


class _Silent:
    def start(self, total: int) -> None:
        """Ignore."""

    def describe(self, label: str) -> None:
        """Ignore."""

    def advance(self) -> None:
        """Ignore."""


def discover_artefacts(models_dir: Path | None, named: Sequence[Path]) -> list[Path]:
    """``named`` directories, else ``models_dir`` itself or its subdirectories with a manifest."""
    if named:
        return [Path(p) for p in named]
    if models_dir is None:
        return []
    if (models_dir / "manifest.json").is_file():
        return [models_dir]
    return sorted(p for p in models_dir.iterdir() if (p / "manifest.json").is_file())


def system_specs(artefacts: Sequence[Path], threads: int) -> list[SystemSpec]:
    """One spec per artefact, plus torch, fastembed and the peers of :mod:`.peers`.

    The peers run the fp32 artefact's model (without one they are reported as skipped).
    Libraries called batch by batch get their batches in the order embedrt forms them, from
    the fp32 artefact's tokenizer (the first artefact's without one).
    """
    from embedrt.runtime import Manifest

    manifests = [(path, Manifest.load(path)) for path in artefacts]
    specs = [SystemSpec(f"embedrt-{path.name}", KIND_EMBEDRT, str(path), threads) for path, _ in manifests]
    fp32 = next((item for item in manifests if item[1].variant == "fp32"), None)
    reference = fp32 or (manifests[0] if manifests else None)
    source = reference[1].source.path if reference else ""
    order = str(reference[0]) if reference else ""
    fp32_dir = str(fp32[0]) if fp32 else ""
    specs.insert(0, SystemSpec("torch", KIND_TORCH, source, threads, order_by=order))
    specs += [
        SystemSpec("fastembed", KIND_FASTEMBED, fp32_dir, threads, source, order_by=order),
        SystemSpec("openvino-f32", KIND_OPENVINO, fp32_dir, threads, option="f32"),
        SystemSpec("openvino-bf16", KIND_OPENVINO, fp32_dir, threads, option="bf16"),
        SystemSpec("openvino-nncf-int8", KIND_OPENVINO_NNCF, fp32_dir, threads, option="bf16"),
        SystemSpec("st-onnx-int8", KIND_ST_ONNX, source, threads, source, order_by=order),
    ]
    return specs


def run_bench(options: BenchOptions, progress: Progress | None = None) -> dict[str, Any]:
    """Measure every system on every bucket and return the results (see :mod:`.report`).

    Raises:
        ArtefactNotFoundError: no artefact was found, or a named one is missing.
        ArtefactError: an artefact's manifest is invalid.
        StsFileError: the STS file is malformed.
    """
    if not options.artefacts:
        raise ArtefactNotFoundError(
            "no embedrt artefact found: pass --models DIR (a folder of artefact directories) "
            "or --model DIR; export one with 'embedrt export'"
        )
    progress = progress or _Silent()
    settings = options.settings
    specs = system_specs(options.artefacts, options.threads)
    tokenizer = Path(options.artefacts[0]) / "tokenizer.json"
    workload = build_workload(tokenizer, settings.bucket_sizes, options.sts, settings.sts_pairs)
    with tempfile.TemporaryDirectory(prefix="embedrt-bench-peers-") as workdir:
        systems, statuses = load_systems(specs, options.skip, Path(workdir))
        progress.start(_total_steps(settings, len(systems)))
        return _measure(options, workload, tokenizer, systems, statuses, progress)


def _total_steps(settings: Settings, systems: int) -> int:
    latency = len(BUCKETS) * settings.latency_texts * systems
    throughput = len(BUCKETS) * len(settings.batch_sizes) * settings.repeats * systems
    return latency + throughput + systems * 2  # + one quality and one cold-start step each


def _measure(
    options: BenchOptions,
    workload: Workload,
    tokenizer: Path,
    systems: list[System],
    statuses: list[SystemStatus],
    progress: Progress,
) -> dict[str, Any]:
    from embedrt.runtime.cpus import usable_cpus

    from .context import run_context
    from .machine import cpu_times, steal_percent

    settings = options.settings
    counts = {b: token_counts(tokenizer, texts) for b, texts in workload.buckets.items()}
    results: dict[str, Any] = {
        "schema": SCHEMA,
        "context": run_context(options.threads, usable_cpus(), options.argv or None),
        "settings": {"quick": options.quick, "preset": options.preset, **_settings_dict(settings)},
        "workloads": {b: {**length_stats(c), "source": workload.source} for b, c in counts.items()},
        "systems": [_status_dict(s) for s in statuses],
        "baselines": _baselines(statuses),
    }
    torch_name = results["baselines"]["torch"]
    phases: dict[str, Callable[[], Any]] = {
        "latency": lambda: _latency(systems, workload, settings, progress),
        "throughput": lambda: _throughput(systems, workload, counts, statuses, settings, progress),
        "quality": lambda: _quality(systems, workload, counts, torch_name, settings, progress),
        "cold_start": lambda: _cold_starts(systems, settings, progress),
        "size": lambda: {s.spec.name: speed.size_on_disk(s.spec) for s in systems},
    }
    seconds, steal = {}, {}
    for phase, measure in phases.items():
        started, cpu_before = time.perf_counter(), cpu_times()
        results[phase] = measure()
        seconds[phase] = round(time.perf_counter() - started, 1)
        steal[phase] = steal_percent(cpu_before, cpu_times())
        logger.info("%s took %.1f s", phase, seconds[phase])
    results["context"]["phase_seconds"] = seconds
    results["context"]["cpu_steal_percent"] = steal
    results["context"]["load_average_end"] = list(os.getloadavg())
    return results


def _settings_dict(settings: Settings) -> dict[str, Any]:
    data = dict(settings.__dict__)
    data["batch_sizes"] = list(settings.batch_sizes)
    data["invariance_batch_sizes"] = list(settings.invariance_batch_sizes)
    return data


def _status_dict(status: SystemStatus) -> dict[str, Any]:
    spec = status.spec
    return {"name": spec.name, "kind": spec.kind, "path": spec.path, "status": status.status,
            "reason": status.reason, "threads": spec.threads, "metadata": status.metadata}


def _baselines(statuses: Sequence[SystemStatus]) -> dict[str, str | None]:
    """The torch system and the embedrt fp32 system every ratio is taken against."""
    ok = [s for s in statuses if s.status == "ok"]
    torch = next((s.spec.name for s in ok if s.spec.kind == KIND_TORCH), None)
    fp32 = next((s.spec.name for s in ok if s.spec.kind == KIND_EMBEDRT
                 and s.metadata.get("variant") == "fp32"), None)
    return {"torch": torch, "fp32": fp32}


def _latency(
    systems: list[System], workload: Workload, settings: Settings, progress: Progress
) -> dict[str, dict[str, Any]]:
    by_system: dict[str, dict[str, Any]] = {s.spec.name: {} for s in systems}
    for bucket in BUCKETS:
        progress.describe(f"batch-1 latency, {bucket}")
        texts = workload.buckets[bucket][: settings.latency_texts]
        for name, figures in speed.latency(
            systems, texts, settings.warmup, settings.latency_rounds, progress.advance
        ).items():
            by_system[name][bucket] = figures
    return by_system


def _throughput(
    systems: list[System],
    workload: Workload,
    counts: dict[str, np.ndarray],
    statuses: Sequence[SystemStatus],
    settings: Settings,
    progress: Progress,
) -> dict[str, dict[str, Any]]:
    by_system: dict[str, dict[str, Any]] = {s.spec.name: {} for s in systems}
    limits = [s.metadata.get("max_seq_length") for s in statuses if s.spec.kind == KIND_EMBEDRT]
    max_tokens = next((m for m in limits if m), None)
    for bucket in BUCKETS:
        capped = np.minimum(counts[bucket], max_tokens or counts[bucket].max())
        for batch_size in settings.batch_sizes:
            progress.describe(f"throughput, {bucket}, batch {batch_size}")
            size = throughput_texts(len(capped), batch_size)
            texts = workload.buckets[bucket][:size]
            figures = speed.throughput(
                systems, texts, int(capped[:size].sum()), batch_size, settings.repeats, progress.advance
            )
            for name, values in figures.items():
                by_system[name].setdefault(bucket, {})[str(batch_size)] = {**values, "texts": size}
    return by_system


def throughput_texts(available: int, batch_size: int) -> int:
    """Texts per throughput call: at least 64 and eight batches, at most the whole bucket.

    Small batch sizes reach a steady rate within a few dozen texts; embedding the whole
    bucket one text at a time would only lengthen the run.
    """
    return min(available, max(MIN_THROUGHPUT_TEXTS, 8 * batch_size))


def _quality(
    systems: list[System],
    workload: Workload,
    counts: dict[str, np.ndarray],
    torch_name: str | None,
    settings: Settings,
    progress: Progress,
) -> dict[str, dict[str, Any]]:
    vectors = {s.spec.name: {b: s.embed(t, None) for b, t in workload.buckets.items()} for s in systems}
    probes, fillers = _invariance_texts(workload, settings.invariance_probes)
    every_count = np.concatenate([counts[b] for b in BUCKETS])
    results: dict[str, dict[str, Any]] = {}
    for system in systems:
        progress.describe(f"quality, {system.spec.name}")
        name = system.spec.name
        entry: dict[str, Any] = {"reference": torch_name, "buckets": {}}
        if torch_name is not None:
            for bucket in BUCKETS:
                entry["buckets"][bucket] = quality.fidelity(
                    vectors[name][bucket], vectors[torch_name][bucket], counts[bucket], ())["all"]
            union = quality.fidelity(
                np.concatenate([vectors[name][b] for b in BUCKETS]),
                np.concatenate([vectors[torch_name][b] for b in BUCKETS]), every_count, THRESHOLDS)
            entry.update({k: v for k, v in union.items() if k != "all"})
        entry["sts_spearman_x100"] = quality.sts_spearman(
            system, workload.sts_pairs, workload.sts_scores, None)
        entry["batch_invariance"] = quality.batch_invariance(
            system, probes, fillers, settings.invariance_batch_sizes
        )
        results[name] = entry
        progress.advance()
    return results


def _invariance_texts(workload: Workload, probes: int) -> tuple[list[str], list[str]]:
    """Probes drawn from every bucket; fillers are all the texts, so batches mix lengths."""
    per_bucket = max(1, probes // len(BUCKETS))
    chosen = [t for b in BUCKETS for t in workload.buckets[b][:per_bucket]]
    fillers = [t for b in BUCKETS for t in workload.buckets[b]]
    return chosen, fillers


def _cold_starts(
    systems: list[System], settings: Settings, progress: Progress
) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for system in systems:
        progress.describe(f"cold start, {system.spec.name}")
        try:
            results[system.spec.name] = speed.cold_start(system.spec, settings.cold_start_runs)
        except RuntimeError as err:
            logger.warning("cold start of %s failed: %s", system.spec.name, err)
            results[system.spec.name] = {"seconds": None, "peak_rss_mib": None, "error": str(err)}
        progress.advance()
    return results

