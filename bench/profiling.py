r"""Where an artefact's time goes: onnxruntime's per-operator profile and a roofline line.

    python -m embedrt.bench.profiling --model models/all-MiniLM-L6-v2/fp32 \\
        --model models/all-MiniLM-L6-v2/int8 --threads 2 --out bench/results/profile

For each artefact, short and long texts at batch 32 and batch 1 run through the runtime's
own batch path (:meth:`~embedrt.runtime.Embedder.embed_encodings`) twice: once in a plain
session for the timing, once in a session with onnxruntime's profiler on for the share of
kernel time by op type and the heaviest nodes. The roofline compares each timing's
arithmetic (FLOPs counted from the graph, see :mod:`.arithmetic`) with the machine's GEMM
peak for the variant's precision, measured by :mod:`.peaks` in the same run.
Writes profile.json and profile.md to --out.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .arithmetic import ModelArithmetic, model_arithmetic
from .ort_trace import read_trace
from .peaks import DEFAULT_SHAPES, Peak, best_by_precision, measure_peaks

logger = logging.getLogger(__name__)

SCHEMA = "embedrt-profile/1"
BUCKETS = ("short", "long")
BATCH_SIZES = (32, 1)
TOP_NODES = 10


@dataclass(frozen=True)
class ProfileOptions:
    """What to profile.

    Attributes:
        artefacts: embedrt artefact directories (fp32, int8, ...).
        threads: onnxruntime intra-op threads for the model and the GEMM peaks.
        sts: STS-B style TSV the texts come from (None: generated sentences).
        repeats: timed (and profiled) passes per case, after one warm-up pass.
        batch1_texts: texts embedded one by one in the batch-1 cases.
        peak_shapes: GEMM shapes ``(m, k, n)`` the peaks are measured on.
        peak_calls: timed calls per kernel and shape (the best counts).
        argv: the command line, for the report.
    """

    artefacts: tuple[Path, ...]
    threads: int
    sts: Path | None = None
    repeats: int = 5
    batch1_texts: int = 16
    peak_shapes: tuple[tuple[int, int, int], ...] = DEFAULT_SHAPES
    peak_calls: int = 10
    argv: tuple[str, ...] = field(default_factory=tuple)


def _session(model: Path, threads: int, profile_prefix: str | None) -> Any:
    """A session set up as the runtime's own (see embedrt.runtime.embedder), profiler optional."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])


def _twin(embedder: Any, session: Any, tokenizer_file: Path) -> Any:
    """An Embedder like ``embedder`` whose batches run in ``session`` (the profiled one)."""
    from embedrt.runtime import Embedder
    from tokenizers import Tokenizer

    # embed_encodings never tokenises: the tokenizer arguments are only there to build one.
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    return Embedder(embedder.manifest, session, tokenizer, tokenizer, embedder.threads,
                    embedder.batch_size, embedder.pad_to_multiple_of, embedder.max_batch_tokens)


def _passes(embedder: Any, batches: Sequence[Sequence[Any]], passes: int) -> list[float]:
    """Seconds of each pass over ``batches`` (every batch one inference call)."""
    seconds = []
    for _ in range(passes):
        started = time.perf_counter()
        for batch in batches:
            embedder.embed_encodings(batch)
        seconds.append(time.perf_counter() - started)
    return seconds


def profile_case(
    path: Path, embedder: Any, arithmetic: ModelArithmetic, texts: Sequence[str], batch_size: int,
    repeats: int, limits: dict[str, Peak], scratch: Path,
) -> dict[str, Any]:
    """Time and profile ``texts`` in batches of ``batch_size``; the roofline figures with it.

    Raises:
        TraceError: the profiler wrote no usable trace.
    """
    encodings = embedder.tokenize(list(texts))
    batches = [encodings[i : i + batch_size] for i in range(0, len(encodings), batch_size)]
    lengths = [len(e.ids) for e in encodings]
    widths = [embedder.padded_width(max(len(e.ids) for e in batch)) for batch in batches]
    _passes(embedder, batches, 1)
    seconds = statistics.median(_passes(embedder, batches, repeats))
    session = _session(path / "model.onnx", embedder.threads, str(scratch / f"ort-{batch_size}"))
    _passes(_twin(embedder, session, path / "tokenizer.json"), batches, 1 + repeats)
    trace = read_trace(Path(session.end_profiling()), skip_runs=len(batches))
    useful = arithmetic.useful_flops(lengths)
    padded = sum(arithmetic.padded_flops(len(b), w) for b, w in zip(batches, widths, strict=True))
    limit = limits.get(arithmetic.precision)
    padded_tokens = sum(len(b) * w for b, w in zip(batches, widths, strict=True))
    result: dict[str, Any] = {
        "batch_size": batch_size, "texts": len(texts), "calls_per_pass": len(batches),
        "tokens": sum(lengths), "padded_tokens": padded_tokens,
        "tokens_mean": sum(lengths) / len(lengths), "seconds_per_pass": seconds,
        "texts_per_s": len(texts) / seconds, "tokens_per_s": sum(lengths) / seconds,
        "useful_gflop": useful / 1e9, "padded_gflop": padded / 1e9,
        "useful_gflops": useful / seconds / 1e9, "executed_gflops": padded / seconds / 1e9,
        "profiled_run_ms_per_pass": trace.run_us / 1e3 / repeats,
        "kernel_share_of_run": trace.kernel_us / trace.run_us if trace.run_us else None,
        "ops": trace.op_shares(), "top_nodes": trace.top_nodes(TOP_NODES),
    }
    if limit is not None:
        result["limit"] = {
            "precision": limit.precision, "kernel": limit.kernel, "peak_gflops": limit.gflops,
            "fraction_useful": result["useful_gflops"] / limit.gflops,
            "fraction_executed": result["executed_gflops"] / limit.gflops,
            "texts_per_s_at_limit": limit.gflops * 1e9 * len(texts) / useful,
        }
    return result


def run_profile(options: ProfileOptions) -> dict[str, Any]:
    """Measure the peaks, then profile every artefact; returns the report (see module doc).

    Raises:
        ArtefactNotFoundError: an artefact directory is missing.
        ArtefactError: an artefact is invalid.
        MissingExtraError: onnx is not installed.
        GraphArithmeticError: a graph's arithmetic cannot be counted.
        StsFileError: the STS file is malformed.
        ArtefactNotFoundError: no artefact was given.
        ValueError: ``repeats`` or ``batch1_texts`` is not positive.
        ConfigurationError: an artefact does not run on onnxruntime (the bf16 variant).
    """
    from embedrt.runtime import Embedder, Manifest
    from embedrt.runtime.backends import ONNXRUNTIME
    from embedrt.runtime.cpus import usable_cpus
    from embedrt.runtime.errors import ArtefactNotFoundError, ConfigurationError

    from .context import run_context
    from .workloads import build_workload

    if not options.artefacts:
        raise ArtefactNotFoundError(
            "no embedrt artefact found: pass --models DIR (a folder of artefact directories) "
            "or --model DIR; export one with 'embedrt export'"
        )
    if min(options.repeats, options.batch1_texts) < 1:
        raise ValueError(f"profile: repeats ({options.repeats}) and batch-1 texts "
                         f"({options.batch1_texts}) must be at least 1")
    for path in options.artefacts:  # a bad artefact fails now, not after the peaks are measured
        backend = Manifest.load(path).recipe.backend
        if backend != ONNXRUNTIME:
            raise ConfigurationError(
                f"profile: {path} runs on {backend}; the profile reads onnxruntime's profiler, "
                "so it takes onnxruntime artefacts only (fp32, int8, ...)"
            )
    peaks = measure_peaks(options.threads, options.peak_shapes, options.peak_calls)
    limits = best_by_precision(peaks)
    sizes = {"short": max(BATCH_SIZES), "medium": 1, "long": max(BATCH_SIZES)}
    workload = build_workload(options.artefacts[0] / "tokenizer.json", sizes, options.sts, None)
    variants: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="embedrt-profile-") as scratch:
        for path in options.artefacts:
            embedder = Embedder.load(path, threads=options.threads)
            arithmetic = model_arithmetic(path / "model.onnx")
            cases: dict[str, Any] = {}
            for bucket in BUCKETS:
                for batch_size in BATCH_SIZES:
                    count = batch_size if batch_size > 1 else options.batch1_texts
                    texts = workload.buckets[bucket][:count]
                    logger.info("profile %s: %s texts, batch %d", path.name, bucket, batch_size)
                    figures = profile_case(path, embedder, arithmetic, texts, batch_size,
                                           options.repeats, limits, Path(scratch))
                    cases[f"{bucket}/b{batch_size}"] = {"bucket": bucket, **figures}
            variants[path.name] = {"path": str(path), "variant": embedder.manifest.variant,
                                   "arithmetic": arithmetic.to_dict(), "cases": cases}
    return {
        "schema": SCHEMA,
        "context": run_context(options.threads, usable_cpus(), options.argv or None),
        "settings": {"repeats": options.repeats, "batch1_texts": options.batch1_texts,
                     "batch_sizes": list(BATCH_SIZES), "buckets": list(BUCKETS),
                     "texts_source": workload.source},
        "peaks": [p.to_dict() for p in peaks],
        "limits": {precision: p.to_dict() for precision, p in limits.items()},
        "variants": variants,
    }


def _shape(text: str) -> tuple[int, int, int]:
    try:
        m, k, n = (int(part) for part in text.lower().split("x"))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"GEMM shape {text!r} is not MxKxN, e.g. 2048x2048x2048") from err
    return m, k, n


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: profile the artefacts and write profile.json and profile.md to --out."""
    from embedrt.runtime.cpus import usable_cpus
    from embedrt.runtime.errors import EmbedrtError

    from .profile_report import write_reports
    from .workloads import default_sts

    parser = argparse.ArgumentParser(prog="python -m embedrt.bench.profiling",
                                     description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", type=Path, action="append", required=True,
                        help="An artefact directory (repeatable).")
    parser.add_argument("--out", type=Path, default=Path("bench-results") / "profile")
    parser.add_argument("--threads", type=int, default=None, help="Default: the CPUs this process may use.")
    parser.add_argument("--sts", type=Path, default=None, help="STS-B TSV; default: the shipped STS-B dev.")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch1-texts", type=int, default=16)
    parser.add_argument("--peak-shape", type=_shape, action="append", default=None,
                        help="GEMM shape MxKxN for the peaks (repeatable); default 2048x2048x2048 and "
                             "1024x384x1536.")
    parser.add_argument("--peak-calls", type=int, default=10)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="profile: %(message)s")
    options = ProfileOptions(
        artefacts=tuple(args.model), threads=args.threads or usable_cpus(), sts=args.sts or default_sts(),
        repeats=args.repeats, batch1_texts=args.batch1_texts,
        peak_shapes=tuple(args.peak_shape or DEFAULT_SHAPES), peak_calls=args.peak_calls,
        argv=("python", "-m", "embedrt.bench.profiling", *(argv if argv is not None else sys.argv[1:])),
    )
    try:
        paths = write_reports(run_profile(options), args.out)
    except (EmbedrtError, OSError) as err:
        sys.stderr.write(f"embedrt: error: {err}\n")
        raise SystemExit(1) from err
    logger.info("wrote %s", ", ".join(str(p) for p in paths))


if __name__ == "__main__":
    main()
