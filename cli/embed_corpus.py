"""``embedrt embed-corpus``: files in, Parquet shards out, resumable, with a progress bar."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from embedrt.corpus import CorpusOptions, CorpusResult, Progress, embed_corpus
from embedrt.runtime.embedder import DEFAULT_BATCH_SIZE

from ._common import CommandLineError, ModelOption, ThreadsOption, missing_module, model_dir

_DEFAULTS = CorpusOptions()


class PrecisionChoice(str, Enum):
    """What ``--precision`` accepts."""

    float32 = "float32"
    float16 = "float16"
    int8 = "int8"
    ubinary = "ubinary"


class BadRowChoice(str, Enum):
    """What ``--on-bad-row`` accepts."""

    fail = "fail"
    skip = "skip"


class EngineChoice(str, Enum):
    """What ``--engine`` accepts."""

    local = "local"
    ray = "ray"


def command(
    inputs: Annotated[list[str], typer.Argument(
        help="Input files (.txt: a text per line, .jsonl, .csv, .parquet), directories or globs.",
        show_default=False,
    )],
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Output directory (shards/, run.json, skipped.jsonl).",
    )],
    model: ModelOption = None,
    text_column: Annotated[str, typer.Option(help="Column, JSON key or CSV header of the text.")] = "text",
    id_column: Annotated[str | None, typer.Option(
        help="Column of the row ids. Default: <file>:<row> (row = line for .txt/.jsonl, from 1).",
    )] = None,
    precision: Annotated[PrecisionChoice, typer.Option(
        help="Stored embedding type: int8 calibrates per-dimension ranges on the corpus's first rows; "
        "ubinary packs sign bits.",
    )] = PrecisionChoice.float32,
    on_bad_row: Annotated[BadRowChoice, typer.Option(
        help="fail: stop at the first bad row, naming it; skip: list it in skipped.jsonl and go on.",
    )] = BadRowChoice.fail,
    rows_per_shard: Annotated[int, typer.Option(min=1, help="Input rows per shard (resume granularity).")]
    = _DEFAULTS.rows_per_shard,
    chunk_rows: Annotated[int, typer.Option(min=1, help="Rows read and embedded together (memory bound).")]
    = _DEFAULTS.chunk_rows,
    batch_size: Annotated[int, typer.Option(min=1)] = DEFAULT_BATCH_SIZE,
    calibration_rows: Annotated[int, typer.Option(min=1, help="int8: rows the ranges are calibrated on.")]
    = _DEFAULTS.calibration_rows,
    threads: ThreadsOption = None,
    processes: Annotated[int, typer.Option(
        min=1, help="Embed in this many worker processes, --threads / N threads each (same output).",
    )] = _DEFAULTS.processes,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Delete a run of another model, inputs or settings in --out first.",
    )] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    engine: Annotated[EngineChoice, typer.Option(help="local: this process; ray: Ray Data ([ray] extra).")]
    = EngineChoice.local,
    address: Annotated[str | None, typer.Option(help="Ray: the cluster address (e.g. auto).")] = None,
    actors: Annotated[int | None, typer.Option(min=1, help="Ray: embedding actors.")] = None,
    cpus_per_actor: Annotated[int | None, typer.Option(min=1, help="Ray: CPUs (threads) per actor.")] = None,
) -> None:
    """Embed every row of INPUT files into Parquet shards under --out; rerun to resume.

    Example: embedrt embed-corpus docs.jsonl --out vectors/ --precision int8 --on-bad-row skip
    """
    engine_options = {
        name: value for name, value in
        (("address", address), ("actors", actors), ("cpus_per_actor", cpus_per_actor))
        if value is not None
    }
    if engine_options and engine is not EngineChoice.ray:
        flags = ", ".join("--" + name.replace("_", "-") for name in engine_options)
        raise CommandLineError(f"{flags} apply to --engine ray only")
    options = CorpusOptions(
        text_column=text_column, id_column=id_column, precision=precision.value,
        on_bad_row=on_bad_row.value, rows_per_shard=rows_per_shard, chunk_rows=chunk_rows,
        batch_size=batch_size, calibration_rows=calibration_rows, threads=threads, processes=processes,
        overwrite=overwrite,
        engine=engine.value, engine_options=engine_options,
    )
    # the bar needs rich ([corpus] brings it; the base install has no rich)
    show = not quiet and sys.stderr.isatty() and missing_module(("rich",)) is None
    with _bar(show) as update:
        result = embed_corpus(inputs, out, model_dir(model), options, progress=update)
    typer.echo(summary(result))


def summary(result: CorpusResult) -> str:
    """The one line printed at the end."""
    counts = (f"{result.read:,} rows read: {result.embedded:,} embedded, {result.skipped:,} skipped"
              f"{' (see skipped.jsonl)' if result.skipped else ''}, {result.truncated:,} truncated; "
              f"{result.shards} shards")
    if result.status == "already complete":
        return f"nothing to do: {result.out_dir} holds a complete run ({counts})"
    speed = result.rows / result.seconds if result.seconds > 0 else 0.0
    resumed = f", resumed after {result.resumed} finished shards" if result.resumed else ""
    return (f"{counts} in {result.out_dir} ({result.rows:,} rows in {result.seconds:.1f} s, "
            f"{speed:,.0f} rows/s{resumed})")


@contextlib.contextmanager
def _bar(show: bool) -> Iterator[Any]:  # yields the progress callback, or None
    if not show:
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        ProgressColumn,
        Task,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.progress import Progress as Bar
    from rich.text import Text

    class RowsPerSecond(ProgressColumn):
        def render(self, task: Task) -> Text:
            return Text(f"{task.speed:,.0f} rows/s" if task.speed else "- rows/s")

    with Bar(
        TextColumn("embedding"), BarColumn(), MofNCompleteColumn(), TextColumn("rows"), RowsPerSecond(),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        console=Console(stderr=True), transient=True,
    ) as bar:
        task = bar.add_task("embedding", total=None)

        def update(progress: Progress) -> None:
            bar.update(task, completed=progress.done, total=progress.total or None)

        yield update
