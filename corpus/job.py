"""The corpus job: inputs -> plan -> (engine: read, embed, write) -> run record.

:func:`embed_corpus` is the one entry point (the CLI's ``embedrt embed-corpus`` calls it). It
finds the inputs, opens or resumes the output directory's run record, plans the units,
calibrates int8 ranges when asked, and hands a :class:`Job` to an engine. An engine only
schedules the parts the job holds (reader, :class:`EmbeddingStep`, :class:`ShardWriter`,
:class:`RunRecord`); the parts never import an engine. The in-process engine is
:mod:`.local_engine`; others are found as ``embedrt.corpus.<name>_engine``.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from embedrt.runtime.cpus import usable_cpus
from embedrt.runtime.embedder import DEFAULT_MAX_BATCH_TOKENS, Embedder
from embedrt.runtime.errors import Param
from embedrt.runtime.manifest import MANIFEST_FILE, Manifest, sha256_file
from embedrt.runtime.precision import PRECISIONS, Int8Calibration, code_width

from .embedding import EmbeddingStep, calibrate
from .errors import CorpusError
from .formats import DEFAULT_TEXT_COLUMN, Columns
from .ids import IdIndex
from .inputs import find_inputs
from .reader import BAD_ROW_POLICIES, BadRowPolicy, Plan, Unit, first_texts, plan_corpus
from .record import RunRecord, locked
from .work import UnitTask
from .writer import ITEM_TYPES, WORK_DIR, FinishedUnit, ShardWriter

ENGINES = ("local", "ray")


@dataclass(frozen=True)
class CorpusOptions:
    """How to run a corpus job.

    Every field but ``on_bad_row``, ``threads``, ``queue_chunks``, ``processes``, ``overwrite``,
    ``engine`` and ``engine_options`` is part of the run's identity: resuming with another value
    is refused, because it would change the output.

    Attributes:
        text_column: the JSON key, CSV header or Parquet column holding the text (not for txt).
        id_column: the column holding row ids; None: ``<input label>:<row>``.
        precision: ``float32``, ``float16``, ``int8`` (ranges calibrated on the corpus) or
            ``ubinary`` (packed sign bits).
        on_bad_row: ``fail`` (stop at the first, naming it) or ``skip`` (list it in
            ``skipped.jsonl`` and go on).
        rows_per_shard: input rows per unit of work and shard (the granularity of resume).
        chunk_rows: rows read and embedded together (texts are length-sorted within a chunk,
            then batched); with ``queue_chunks`` it bounds memory.
        batch_size: texts per batch, as :meth:`Embedder.encode`.
        calibration_rows: int8: the first this many good rows calibrate the ranges.
        threads: onnxruntime threads; None: the CPUs this process may use.
        queue_chunks: chunks waiting between reader, embedder and writer (memory bound).
        processes: local engine: embed in this many worker processes, ``threads / processes``
            threads each (1: in this process). Same output either way.
        overwrite: delete a run of other inputs or settings in the output directory first.
        engine: ``local`` (this process) or ``ray`` (Ray Data; the [ray] extra).
        engine_options: the engine's own settings (Ray: address, actors, CPUs per actor),
            recorded per session in ``run.json``, never part of the run's identity.
    """

    text_column: str = DEFAULT_TEXT_COLUMN
    id_column: str | None = None
    precision: str = "float32"
    on_bad_row: BadRowPolicy = "fail"
    rows_per_shard: int = 10_000
    chunk_rows: int = 1_000
    batch_size: int = 32
    calibration_rows: int = 1_000
    threads: int | None = None
    queue_chunks: int = 4
    processes: int = 1
    overwrite: bool = False
    engine: str = "local"
    engine_options: Mapping[str, Any] = field(default_factory=dict)  # JSON values

    def settings(self) -> dict[str, Any]:  # JSON values
        """The settings ``run.json`` records (the run's identity, plus ``on_bad_row``)."""
        return {
            "text_column": self.text_column, "id_column": self.id_column, "precision": self.precision,
            "rows_per_shard": self.rows_per_shard, "chunk_rows": self.chunk_rows,
            "batch_size": self.batch_size, "max_batch_tokens": DEFAULT_MAX_BATCH_TOKENS,
            "calibration_rows": self.calibration_rows if self.precision == "int8" else None,
            "on_bad_row": self.on_bad_row,
        }

    def check(self) -> None:
        """Raise :class:`CorpusError` naming the first invalid field."""
        choices: list[tuple[str, object, Sequence[str]]] = [
            ("precision", self.precision, PRECISIONS), ("on_bad_row", self.on_bad_row, BAD_ROW_POLICIES),
            ("engine", self.engine, ENGINES),
        ]
        for name, value, allowed in choices:
            if value not in allowed:
                raise CorpusError(f"{name} {value!r} is not one of {', '.join(allowed)}; fix {{{name}}}",
                                  params=(Param(name),))
        for name in ("rows_per_shard", "chunk_rows", "batch_size", "calibration_rows", "queue_chunks",
                     "threads", "processes"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise CorpusError(f"{name} must be a positive integer, got {value!r}; fix {{{name}}}",
                                  params=(Param(name),))
        if not self.text_column or self.id_column == "":
            raise CorpusError("column names must not be empty; fix {text_column} and {id_column}",
                              params=(Param("text_column"), Param("id_column")))


@dataclass(frozen=True)
class Progress:
    """Where a job is.

    ``done`` of ``total`` rows read (earlier sessions included), of which ``embedded`` and
    ``skipped``; ``rows`` and ``seconds`` count this session alone.
    """

    done: int
    total: int
    embedded: int
    skipped: int
    rows: int
    seconds: float


ProgressCallback = Callable[[Progress], None]


@dataclass(frozen=True)
class CorpusResult:
    """What a call of :func:`embed_corpus` did.

    Attributes:
        out_dir: the output directory.
        status: ``complete`` (this call finished the run) or ``already complete`` (nothing to do).
        read, embedded, skipped, truncated: the run's counts (``read = embedded + skipped``).
        shards: shard files written by the run (all sessions).
        resumed: units an earlier session had finished.
        rows: rows read by this call; seconds: its wall time.
    """

    out_dir: Path
    status: Literal["complete", "already complete"]
    read: int
    embedded: int
    skipped: int
    truncated: int
    shards: int
    resumed: int
    rows: int
    seconds: float


@dataclass
class Job:
    """Everything an engine needs; its methods are the parts an engine schedules."""

    out_dir: Path
    model: Path
    plan: Plan
    pending: tuple[Unit, ...]
    columns: Columns
    options: CorpusOptions
    calibration: Int8Calibration | None
    record: RunRecord
    ids: IdIndex | None
    progress: ProgressCallback | None = None
    threads: int = 1
    _embedder: Embedder | None = None
    _started: float = field(default_factory=time.monotonic)

    def embedder(self) -> Embedder:
        """This process's :class:`Embedder` (loaded once)."""
        if self._embedder is None:
            self._embedder = Embedder.load(self.model, self.threads, batch_size=self.options.batch_size)
        return self._embedder

    def duplicates(self, unit: Unit) -> dict[int, str]:
        """Row -> reason for the rows of ``unit`` whose id an earlier row holds."""
        return self.ids.duplicates(unit.input, unit.start.row, unit.last_row) if self.ids else {}

    def task(self, unit: Unit) -> UnitTask:
        """``unit`` as a self-contained, picklable task.

        Run it with :func:`~.work.process_unit`, or stream it with :meth:`UnitTask.chunks`.
        """
        return UnitTask(
            self.plan.inputs[unit.input], unit, self.columns, self.options.chunk_rows,
            self.options.on_bad_row, self.duplicates(unit),
        )

    def step(self) -> EmbeddingStep:
        """The embedding step on this process's embedder."""
        options = self.options
        return EmbeddingStep(self.embedder(), options.precision, self.calibration, options.batch_size)

    def writer(self) -> ShardWriter:
        """The shard writer for this run's output directory."""
        return ShardWriter(self.out_dir, self.options.precision, self.width)

    @property
    def width(self) -> int:
        """Values per stored embedding (ubinary: bytes)."""
        return code_width(self.options.precision, self.record.run.model.dim)

    def finish(self, unit: FinishedUnit) -> None:
        """Record a written unit in ``run.json`` (call once per unit, from one thread)."""
        self.record.finish(unit)

    def advance(self, rows: int, embedded: int, skipped: int) -> None:
        """Report ``rows`` more rows read, of which ``embedded`` and ``skipped`` (one thread)."""
        self._session[0] += rows
        self._session[1] += embedded
        self._session[2] += skipped
        if self.progress is not None:
            base = self._base
            self.progress(Progress(
                base[0] + self._session[0], self.plan.rows, base[1] + self._session[1],
                base[2] + self._session[2], self._session[0], time.monotonic() - self._started,
            ))

    def __post_init__(self) -> None:
        done = self.record.finished.values()
        self._base = (sum(u.rows_read for u in done), sum(u.embedded for u in done),
                      sum(u.skipped for u in done))
        self._session = [0, 0, 0]


def embed_corpus(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    model: str | Path,
    options: CorpusOptions | None = None,
    progress: ProgressCallback | None = None,
) -> CorpusResult:
    """Embed every row of ``inputs`` into Parquet shards under ``out_dir``, resumably.

    Running it again on the same directory continues from the last finished shard (after a
    kill, too); on a finished run it does nothing.

    Args:
        inputs: ``.txt``, ``.jsonl``, ``.csv`` or ``.parquet`` files, directories, globs.
        out_dir: the output directory (created); ``shards/``, ``run.json``, ``skipped.jsonl``.
        model: an artefact directory written by ``embedrt export``.
        options: see :class:`CorpusOptions`.
        progress: called (from the engine's threads) with a :class:`Progress` after each chunk.

    Raises:
        CorpusInputError: an input is missing, of unknown format, or lacks a column.
        BadRowError: a bad row with ``on_bad_row="fail"`` (shards before it are kept).
        RunMismatchError: ``out_dir`` holds a run of another model, inputs or settings.
        CorpusError: an invalid option, or ``out_dir`` is not a run directory or is busy.
        ArtefactNotFoundError, ArtefactError: the model cannot be loaded.
        MissingExtraError: pyarrow (the [corpus] extra) or the engine's extra is missing.
    """
    options = options or CorpusOptions()
    options.check()
    started = time.monotonic()
    out = Path(out_dir).resolve()
    model_dir = Path(model).resolve()
    manifest = Manifest.load(model_dir)
    files = find_inputs(inputs, exclude=out)
    identity = {
        "embedrt_version": _version(),
        "model": {
            "name": manifest.model_name, "variant": manifest.variant, "path": str(model_dir),
            "manifest_sha256": sha256_file(model_dir / MANIFEST_FILE), "dim": manifest.dim,
            "max_seq_length": manifest.max_seq_length,
        },
        "inputs": [f.to_dict() for f in files],
        "settings": options.settings(),
    }
    ShardWriter.check_available()
    with locked(out):
        record = RunRecord.open(out, identity, overwrite=options.overwrite)
        if record.complete:
            return _result(record, "already complete", len(record.finished), 0, started)
        resumed = len(record.finished)
        columns = Columns(options.text_column, options.id_column)
        ids = IdIndex.create(out / WORK_DIR / "ids.sqlite") if options.id_column else None
        try:
            plan = plan_corpus(files, columns, options.rows_per_shard, ids)
            threads = options.threads or usable_cpus()
            job = Job(
                out, model_dir, plan, tuple(u for u in plan.units if u.name not in record.finished),
                columns, options, None, record, ids, progress, threads,
            )
            session = dict(options.engine_options)
            if options.engine == "local":
                session["processes"] = options.processes
            record.start_session(options.engine, threads, plan.rows, session)
            job.calibration = _precision(job)
            _engine(options.engine)(job)
            rows = record.run.timings.sessions[-1].rows
            record.close()
        finally:
            if ids is not None:
                ids.close()
    return _result(record, "complete", resumed, rows, started)


def _precision(job: Job) -> Int8Calibration | None:
    """int8's calibration: recorded, or computed on the corpus's first rows.

    Records the precision and the schema in ``run.json``.
    """
    recorded = job.record.run.precision
    precision = job.options.precision
    calibration = None
    rows = None
    if precision == "int8":
        if recorded is not None and recorded.calibration is not None:
            calibration, rows = recorded.calibration, recorded.calibration_rows
        else:
            texts = first_texts(job.plan, job.columns, job.options.calibration_rows, job.ids)
            if not texts:
                raise CorpusError("precision int8 needs rows to calibrate on, and the corpus has no "
                                  "good row; pass {precision}", params=(Param("precision", "float32"),))
            calibration, rows = calibrate(job.embedder(), texts, job.options.batch_size), len(texts)
    job.record.set_precision(
        {"name": precision, "width": job.width, "calibration": calibration.to_dict() if calibration else None,
         "calibration_rows": rows},
        {"id": "string", "embedding": f"fixed_size_list<{ITEM_TYPES[precision]}>[{job.width}]",
         "tokens": "int32", "truncated": "bool"},
    )
    return calibration


def _engine(name: str) -> Callable[[Job], None]:
    module = importlib.import_module(f"{__package__}.{name}_engine")
    run: Callable[[Job], None] = module.run
    return run


def _result(record: RunRecord, status: Literal["complete", "already complete"], resumed: int,
            rows: int, started: float) -> CorpusResult:
    counts = record.counts
    return CorpusResult(
        record.out_dir, status, counts.read, counts.embedded, counts.skipped, counts.truncated,
        counts.shards, resumed, rows, time.monotonic() - started,
    )


def _version() -> str:
    try:
        return metadata.version("embedrt")
    except metadata.PackageNotFoundError:
        return "unknown"


