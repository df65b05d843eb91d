"""The run record, ``DIR/run.json``: what was asked, what is finished, what it cost.

It is rewritten atomically (temporary file, then rename) after every finished unit, so after
a kill it names exactly the shards that are whole. Resume and refusal both start here: a
directory whose record names another model, other inputs or other settings is refused (the
message names each difference) unless ``overwrite`` clears it first.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from embedrt.runtime.errors import Param
from embedrt.runtime.precision import Int8Calibration
from embedrt.runtime.records import RecordError, read_record, record_json

from .errors import CorpusError, RunMismatchError
from .writer import (
    SEARCH_CACHE_DIR,
    SHARDS_DIR,
    SKIPPED_DIR,
    WORK_DIR,
    FinishedUnit,
    atomic_leftovers,
    sync_directory,
    write_atomic,
)

RUN_FILE = "run.json"
SKIPPED_FILE = "skipped.jsonl"
RECORD_FORMAT = "embedrt-corpus-run"
RECORD_VERSION = 1
# Settings that may change between sessions of one run: they do not change a single output byte.
SESSION_SETTINGS = ("on_bad_row",)
_OWN_NAMES = {RUN_FILE, SKIPPED_FILE, SHARDS_DIR, WORK_DIR}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class RunRecordError(RecordError, CorpusError):
    """A field of ``run.json`` is missing, unknown or of the wrong type (the message names it)."""


@dataclass(frozen=True)
class RunModel:
    """The artefact a run embeds with (``manifest_sha256``: its ``manifest.json`` at the time)."""

    name: str
    variant: str
    path: str
    manifest_sha256: str
    dim: int
    max_seq_length: int


@dataclass(frozen=True)
class RunInput:
    """One input file of a run, as :meth:`~embedrt.corpus.inputs.InputFile.to_dict` writes it."""

    label: str
    path: str
    format: str
    size: int
    sha256: str


@dataclass(frozen=True)
class RunSettings:
    """The settings that make a run's identity (plus ``on_bad_row``, which may change)."""

    text_column: str
    id_column: str | None
    precision: str
    rows_per_shard: int
    chunk_rows: int
    batch_size: int
    max_batch_tokens: int
    calibration_rows: int | None
    on_bad_row: str


@dataclass(frozen=True)
class RunPrecision:
    """How the vectors are stored: ``name``, values per vector, int8's calibration and its rows."""

    name: str
    width: int
    calibration: Int8Calibration | None
    calibration_rows: int | None


@dataclass(frozen=True)
class RunCounts:
    """Rows of the corpus, and of them read, embedded, skipped, truncated; shards written."""

    rows: int = 0
    read: int = 0
    embedded: int = 0
    skipped: int = 0
    truncated: int = 0
    shards: int = 0


@dataclass(frozen=True)
class RunSession:
    """One session (one call of the job) on a run: its engine, threads, rows and seconds."""

    started_at: str
    engine: str
    engine_options: Mapping[str, Any]  # JSON values
    threads: int
    rows: int
    seconds: float


@dataclass(frozen=True)
class RunTimings:
    """When the run started and finished, its seconds over all sessions, and each session."""

    started_at: str
    finished_at: str | None
    seconds: float
    sessions: tuple[RunSession, ...]


@dataclass(frozen=True)
class CorpusRun:
    """The content of ``run.json`` (read with :func:`read_run`, written by :class:`RunRecord`).

    Attributes:
        format / version: :data:`RECORD_FORMAT` and :data:`RECORD_VERSION`.
        status: ``running`` until every unit is written and ``skipped.jsonl`` assembled.
        embedrt_version: the version that started the run.
        model, inputs, settings: the run's identity.
        precision: set once embedding starts (int8: with its calibration).
        schema: the shards' Arrow schema, by column, in words.
        counts: set once the first session starts.
        shards: the finished units, by name.
        timings: the run's and each session's times.
    """

    format: str
    version: int
    status: Literal["running", "complete"]
    embedrt_version: str
    model: RunModel
    inputs: tuple[RunInput, ...]
    settings: RunSettings
    precision: RunPrecision | None
    schema: Mapping[str, str] | None
    counts: RunCounts | None
    shards: tuple[FinishedUnit, ...]
    timings: RunTimings


class RunRecord:
    """``run.json`` of one output directory, new or resumed. Build it with :meth:`open`.

    Attributes:
        out_dir: the output directory.
        run: the record as last saved (or about to be): replaced, never changed in place.
        finished: the finished units, by name.
    """

    def __init__(self, out_dir: Path, run: CorpusRun) -> None:
        self.out_dir = out_dir
        self.run = run
        self.finished: dict[str, FinishedUnit] = {unit.name: unit for unit in run.shards}
        self._session_start = time.monotonic()

    @classmethod
    def open(
        cls, out_dir: Path, identity: Mapping[str, Any], *, overwrite: bool = False
    ) -> RunRecord:
        """The record of ``out_dir`` for a run of ``identity``: the existing one if it matches.

        ``identity`` holds ``embedrt_version``, ``model``, ``inputs`` and ``settings`` as JSON
        data; a new record is started when there is none (or ``overwrite``).

        Raises:
            RunMismatchError: ``out_dir`` holds a run of another model, inputs or settings
                and ``overwrite`` is False (the message lists every difference).
            CorpusError: ``out_dir`` holds other files but no ``run.json``, or its
                ``run.json`` is unreadable.
        """
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / RUN_FILE
        if overwrite:
            clear_run(out_dir)
        elif path.is_file():
            run = _read(path)
            changes = differences(run, identity)
            if changes:
                raise RunMismatchError(
                    f"{out_dir} holds a run made differently: {'; '.join(changes)}. Use a new "
                    "output directory, or pass {overwrite} to delete that run and start again",
                    params=(Param("overwrite", True),),
                )
            session = {name: identity["settings"][name] for name in SESSION_SETTINGS}
            record = cls(out_dir, replace(run, settings=replace(run.settings, **session)))
            record._clean_unfinished()
            return record
        else:
            foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in _OWN_NAMES)
            if foreign:
                raise CorpusError(
                    f"{out_dir} is not empty ({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}) "
                    "and holds no run.json: not an embedrt corpus run. Choose a new or empty "
                    "output directory"
                )
            clear_run(out_dir)
        data = {
            "format": RECORD_FORMAT, "version": RECORD_VERSION, "status": "running",
            **{key: identity[key] for key in ("embedrt_version", "model", "inputs", "settings")},
            "precision": None, "schema": None, "counts": None, "shards": [],
            "timings": {"started_at": _now(), "finished_at": None, "seconds": 0.0, "sessions": []},
        }
        return cls(out_dir, read_record(CorpusRun, data, f"{path} (new)", error=RunRecordError))

    @property
    def complete(self) -> bool:
        """Whether every unit was written and ``skipped.jsonl`` assembled."""
        return self.run.status == "complete"

    @property
    def counts(self) -> RunCounts:
        """The run's counts (all zero before its first session)."""
        return self.run.counts or RunCounts()

    def start_session(
        self, engine: str, threads: int, rows: int, engine_options: Mapping[str, Any] | None = None
    ) -> None:
        """Note a new session (engine, its options, threads) and the corpus's row total; saves."""
        session = RunSession(_now(), engine, dict(engine_options or {}), threads, 0, 0.0)
        self._replace_timings(sessions=(*self.run.timings.sessions, session))
        self._session_start = time.monotonic()
        self._update_counts(rows)
        self.save()

    def note_session(self, threads: int, engine_options: Mapping[str, Any]) -> None:
        """Correct this session's threads and engine options (as the engine resolved them); saves."""
        self._replace_session(threads=threads, engine_options=dict(engine_options))
        self.save()

    def set_precision(self, precision: Mapping[str, Any], schema: Mapping[str, str]) -> None:
        """Record the precision (with int8's calibration) and the shards' schema; saves.

        Raises:
            RunRecordError: ``precision`` is not a valid :class:`RunPrecision`.
        """
        stored = read_record(RunPrecision, dict(precision), f"{self.out_dir / RUN_FILE}: precision",
                             error=RunRecordError)
        self.run = replace(self.run, precision=stored, schema=dict(schema))
        self.save()

    def finish(self, unit: FinishedUnit) -> None:
        """Record a unit whose shard is written; saves."""
        self.finished[unit.name] = unit
        self._replace_session(rows=self.run.timings.sessions[-1].rows + unit.rows_read)
        self._update_counts(self.counts.rows)
        self.save()

    def close(self) -> None:
        """Finish the run: ``skipped.jsonl``, status ``complete``, work files deleted.

        The units' skipped rows are joined in unit order; ``run.json`` is saved.
        """
        skipped_dir = self.out_dir / WORK_DIR / SKIPPED_DIR
        temporary = self.out_dir / WORK_DIR / f"{SKIPPED_FILE}.tmp"
        with temporary.open("wb") as joined:
            for name in sorted(self.finished):
                part = skipped_dir / f"{name}.jsonl"
                if self.finished[name].skipped:
                    with part.open("rb") as handle:
                        shutil.copyfileobj(handle, joined)
            joined.flush()
            os.fsync(joined.fileno())
        os.replace(temporary, self.out_dir / SKIPPED_FILE)
        self.run = replace(self.run, status="complete")
        self._replace_timings(finished_at=_now())
        self.save()
        shutil.rmtree(self.out_dir / WORK_DIR, ignore_errors=True)

    def save(self) -> None:
        """Write ``run.json`` atomically, with this session's time so far."""
        timings = self.run.timings
        if timings.sessions:
            elapsed = round(time.monotonic() - self._session_start, 3)
            seconds = round(timings.seconds - timings.sessions[-1].seconds + elapsed, 3)
            self._replace_session(seconds=elapsed)
            self._replace_timings(seconds=seconds)
        self.run = replace(self.run, shards=tuple(self.finished[name] for name in sorted(self.finished)))
        write_atomic(self.out_dir / RUN_FILE,
                     json.dumps(record_json(self.run), indent=2, ensure_ascii=False) + "\n")

    def _replace_timings(self, **changes: Any) -> None:  # RunTimings fields
        self.run = replace(self.run, timings=replace(self.run.timings, **changes))

    def _replace_session(self, **changes: Any) -> None:  # RunSession fields
        sessions = self.run.timings.sessions
        self._replace_timings(sessions=(*sessions[:-1], replace(sessions[-1], **changes)))

    def _update_counts(self, rows: int) -> None:
        units = self.finished.values()
        self.run = replace(self.run, counts=RunCounts(
            rows=rows,
            read=sum(u.rows_read for u in units),
            embedded=sum(u.embedded for u in units),
            skipped=sum(u.skipped for u in units),
            truncated=sum(u.truncated for u in units),
            shards=len(self.finished),
        ))

    def _clean_unfinished(self) -> None:
        """Delete shards, skipped lists and temporary files a killed session left unrecorded."""
        for path in atomic_leftovers(self.out_dir / RUN_FILE):  # killed while saving run.json
            path.unlink()
        for folder, suffix in ((SHARDS_DIR, ".parquet"), (f"{WORK_DIR}/{SKIPPED_DIR}", ".jsonl")):
            directory = self.out_dir / folder
            if directory.is_dir():
                for path in directory.iterdir():
                    if path.name.removesuffix(suffix) not in self.finished:
                        path.unlink()
        work = self.out_dir / WORK_DIR
        if work.is_dir():
            for path in work.glob("*.tmp"):
                path.unlink()


def differences(recorded: CorpusRun, identity: Mapping[str, Any]) -> list[str]:
    """What differs between a recorded run and a new one, in words; empty if nothing does."""
    changes: list[str] = []
    old_model, new_model = recorded.model, identity["model"]
    if old_model.manifest_sha256 != new_model["manifest_sha256"]:
        changes.append(
            f"model was {old_model.name} {old_model.variant} "
            f"(manifest sha256 {old_model.manifest_sha256[:12]}), now {new_model['name']} "
            f"{new_model['variant']} (manifest sha256 {new_model['manifest_sha256'][:12]})"
        )
    old_inputs = {i.label: i for i in recorded.inputs}
    new_inputs = {i["label"]: i for i in identity["inputs"]}
    for label in old_inputs.keys() - new_inputs.keys():
        changes.append(f"input {label} is no longer given")
    for label in new_inputs.keys() - old_inputs.keys():
        changes.append(f"input {label} is new")
    for label in old_inputs.keys() & new_inputs.keys():
        if old_inputs[label].sha256 != new_inputs[label]["sha256"]:
            changes.append(f"input {label} changed (size {old_inputs[label].size} -> "
                           f"{new_inputs[label]['size']} bytes, content differs)")
    if not changes and [i.label for i in recorded.inputs] != [i["label"] for i in identity["inputs"]]:
        changes.append("the inputs are given in another order")
    old_settings = record_json(recorded.settings)
    for name, value in identity["settings"].items():
        if name not in SESSION_SETTINGS and old_settings.get(name) != value:
            changes.append(f"{name} was {old_settings.get(name)!r}, now {value!r}")
    return changes


def clear_run(out_dir: Path) -> None:
    """Delete what a corpus run wrote in ``out_dir`` (and nothing else)."""
    for name in (RUN_FILE, SKIPPED_FILE):
        (out_dir / name).unlink(missing_ok=True)
    shards = out_dir / SHARDS_DIR
    if shards.is_dir():
        for path in shards.glob("part-*.parquet"):
            path.unlink()
        with contextlib.suppress(OSError):  # left in place if the user put other files there
            shards.rmdir()
    for owned in (WORK_DIR, SEARCH_CACHE_DIR):
        if (out_dir / owned).is_dir():
            for path in (out_dir / owned).iterdir():
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    sync_directory(out_dir)


@contextlib.contextmanager
def locked(out_dir: Path) -> Iterator[None]:
    """Hold ``out_dir``'s lock (the directory is created) so a second process on it is refused.

    The lock is on the directory itself (``flock``), so it adds no file and dies with its
    process, SIGKILL included.

    Raises:
        CorpusError: another process holds it.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock; one process per directory is then up to the user
        yield
        return
    descriptor = os.open(out_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise CorpusError(
                f"{out_dir} is being written by another embedrt embed-corpus process; wait for it "
                "or use another output directory"
            ) from err
        yield
    finally:
        os.close(descriptor)


def read_json(path: Path) -> dict[str, Any]:  # JSON data
    """``path`` (a ``run.json``) parsed, after checking it is a run record of this format.

    Raises:
        CorpusError: it is unreadable, not JSON, or of another format or version (the message
            names both).
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise _unreadable(path, err) from err
    if not isinstance(data, dict):
        raise _unreadable(path, f"expected a JSON object, got {type(data).__name__}")
    if data.get("format") != RECORD_FORMAT or data.get("version") != RECORD_VERSION:
        raise _unreadable(path, f"format {data.get('format')!r} version {data.get('version')!r}, "
                                f"expected {RECORD_FORMAT!r} version {RECORD_VERSION}")
    return data


def read_run(out_dir: str | os.PathLike[str]) -> CorpusRun:
    """The validated record of ``out_dir/run.json`` (for readers of a run, like rerank).

    Raises:
        CorpusError: there is no ``run.json``, or it is not a readable run record.
    """
    path = Path(out_dir) / RUN_FILE
    if not path.is_file():
        raise CorpusError(f"{path}: no such file; {out_dir} is not the output of embedrt embed-corpus")
    return _read(path)


def load_record(out_dir: str | os.PathLike[str]) -> dict[str, Any]:  # JSON data
    """:func:`read_run`'s record as JSON data (what ``run.json`` holds, validated).

    Raises:
        CorpusError: there is no ``run.json``, or it is not a readable run record.
    """
    return record_json(read_run(out_dir))


def _read(path: Path) -> CorpusRun:
    data = read_json(path)
    try:
        return read_record(CorpusRun, data, str(path), error=RunRecordError)
    except RunRecordError as err:
        raise _unreadable(path, err.problem if err.field == "" else f"{err.field}: {err.problem}") from err


def _unreadable(path: Path, problem: object) -> CorpusError:
    return CorpusError(
        f"{path}: not a readable embedrt corpus run record ({problem}); pass {{overwrite}} to start "
        "the run again", params=(Param("overwrite", True),),
    )
