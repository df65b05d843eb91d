"""``embedrt bench``: the benchmark ([bench] extra); embedrt.bench is imported only when it runs."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Annotated, Any

import typer
from embedrt.runtime.home import default_model_name, models_dir

from ._common import require

DEFAULT_OUT = Path("bench-results")


class _Bar:
    """A rich progress bar on stderr, for :class:`embedrt.bench.run.Progress`."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._console = Console(stderr=True)
        self._progress = Progress(
            TextColumn("[bold]bench[/bold] {task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), console=self._console,
        )
        self._task: Any = None  # a rich TaskID, known once start() runs

    def __enter__(self) -> _Bar:
        self._progress.__enter__()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._progress.__exit__(kind, error, trace)

    def start(self, total: int) -> None:
        """Show a bar of ``total`` steps."""
        self._task = self._progress.add_task("loading", total=total)

    def describe(self, label: str) -> None:
        """Say what runs now."""
        if self._task is None:
            return
        self._progress.update(self._task, description=label)
        if not self._console.is_terminal:  # no live bar in a log file: one line per step instead
            done = int(self._progress.tasks[0].completed)
            typer.echo(f"bench: {label} ({done}/{self._progress.tasks[0].total:.0f} steps done)", err=True)

    def advance(self) -> None:
        """One step is done."""
        if self._task is not None:
            self._progress.advance(self._task)


def command(
    models: Annotated[
        Path | None,
        typer.Option(help="Folder whose subfolders with a manifest.json are the artefacts to compare. "
                     "Default: the default model's folder in the embedrt home (every variant exported)."),
    ] = None,
    model: Annotated[
        list[Path] | None,
        typer.Option("--model", "-m", help="An artefact directory (repeatable); replaces --models."),
    ] = None,
    sts: Annotated[
        Path | None,
        typer.Option(help="STS-B style TSV (sentence1, sentence2, score). Default: the STS-B dev set "
                     "shipped with embedrt.bench."),
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Where results.json, results.md and the chart go.")
    ] = DEFAULT_OUT,
    threads: Annotated[
        int | None,
        typer.Option(min=1, help="Threads for every system. Default: the CPUs this process may use."),
    ] = None,
    quick: Annotated[bool, typer.Option(help="Fewer texts, repeats and batch sizes (< 2 min).")] = False,
    lite: Annotated[bool, typer.Option(help="Half the texts, batch sizes 1 and 32 only, one latency "
                                       "round: for large models (all-mpnet-base-v2).")] = False,
    skip: Annotated[
        list[str] | None,
        typer.Option(help="Leave out a system by kind (sentence-transformers, fastembed, embedrt, openvino, "
                     "openvino-nncf, sentence-transformers-onnx) or name (e.g. openvino-bf16)."),
    ] = None,
    profile: Annotated[
        bool,
        typer.Option(help="Instead of comparing systems: onnxruntime's per-operator profile of each "
                     "artefact and a roofline against GEMM peaks measured here (profile.json, profile.md)."),
    ] = False,
    reranker: Annotated[
        Path | None,
        typer.Option(help="Instead of embedders: rerankers. The sentence-transformers CrossEncoder "
                     "folder they were exported from; the --model artefacts (reranker exports) are "
                     "measured against it on torch over held-out STS-B queries (rerank.json, rerank.md)."),
    ] = None,
) -> None:
    """Benchmark embedrt artefacts against sentence-transformers (torch) and fastembed.

    Speed (batch-1 latency, throughput at several batch sizes, cold start, memory, size) and
    quality (cosine to torch, STS Spearman, batch invariance), by text length, in one run.

    Peers (OpenVINO, OpenVINO + NNCF int8, sentence-transformers' ONNX int8) run when their
    packages are installed and are listed as skipped otherwise.

    Example: embedrt bench --quick --out bench-results
    """
    from embedrt.bench.chart import require_matplotlib, write_chart
    from embedrt.bench.report import add_ratios, write_json, write_markdown
    from embedrt.bench.run import BenchOptions, discover_artefacts, run_bench
    from embedrt.bench.workloads import default_sts
    from embedrt.runtime.cpus import usable_cpus

    started = time.perf_counter()
    if reranker is not None:
        _rerank(reranker, model or [], out, threads or usable_cpus(), quick)
        return
    if models is None:
        models = models_dir() / default_model_name()
    artefacts = tuple(discover_artefacts(models if models.is_dir() else None, model or []))
    if profile:
        _profile(artefacts, out, threads or usable_cpus(), sts or default_sts(), quick)
        return
    require_matplotlib()  # fail before minutes of measuring, not after
    require("bench", "embedrt bench", ("rich",))  # the progress bar
    options = BenchOptions(
        artefacts=artefacts, threads=threads or usable_cpus(), sts=sts or default_sts(), quick=quick,
        lite=lite,
        skip=tuple(skip or ()), argv=tuple(sys.argv),
    )
    with _Bar() as bar:
        results = add_ratios(run_bench(options, bar))
    out.mkdir(parents=True, exist_ok=True)
    results["context"]["wall_seconds"] = round(time.perf_counter() - started, 1)
    chart = write_chart(results, out)
    paths = [write_json(results, out), write_markdown(results, out, chart.name), chart]
    for status in results["systems"]:
        if status["status"] != "ok":
            typer.echo(f"skipped {status['name']}: {status['reason']}", err=True)
    typer.echo(f"bench finished in {results['context']['wall_seconds']:.0f} s: "
               + ", ".join(str(p) for p in paths))


def _rerank(source: Path, artefacts: list[Path], out: Path, threads: int, quick: bool) -> None:
    """``--reranker``: the reranker artefacts against their CrossEncoder on torch."""
    require("export", "embedrt bench --reranker", ("torch", "sentence_transformers"))
    from embedrt.bench.rerank import run, write

    if not artefacts:
        raise typer.BadParameter("give the reranker artefacts to measure with --model DIR",
                                 param_hint="--model")
    names = [path.name for path in artefacts]  # a folder's name, its path where two share one
    named = {name if names.count(name) == 1 else str(path): path
             for name, path in zip(names, artefacts, strict=True)}
    queries, rounds = (60, 1) if quick else (749, 3)
    results = run(source, named, queries, threads, rounds=rounds, argv=tuple(sys.argv))
    for path in write(results, out):
        typer.echo(f"wrote {path}")


def _profile(artefacts: tuple[Path, ...], out: Path, threads: int, sts: Path | None, quick: bool) -> None:
    """``embedrt bench --profile``: see :mod:`embedrt.bench.profiling`."""
    from embedrt.bench.profile_report import write_reports
    from embedrt.bench.profiling import ProfileOptions, run_profile

    options = ProfileOptions(artefacts=artefacts, threads=threads, sts=sts, argv=tuple(sys.argv))
    if quick:
        options = ProfileOptions(artefacts=artefacts, threads=threads, sts=sts, repeats=1, batch1_texts=4,
                                 peak_calls=3, argv=tuple(sys.argv))
    paths = write_reports(run_profile(options), out)
    typer.echo("profile written: " + ", ".join(str(p) for p in paths))
