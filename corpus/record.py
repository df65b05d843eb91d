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
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from embedrt.runtime.errors import Param

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


class RunRecord:
    """``run.json`` of one output directory, new or resumed. Build it with :meth:`open`."""

    def __init__(self, out_dir: Path, data: dict[str, Any]) -> None:  # JSON data
        self.out_dir = out_dir
        self.data = data
        self.finished: dict[str, FinishedUnit] = {
            entry["name"]: FinishedUnit.from_dict(entry) for entry in data.get("shards", [])
        }
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
            data = _read(path)
            changes = differences(data, identity)
            if changes:
                raise RunMismatchError(
                    f"{out_dir} holds a run made differently: {'; '.join(changes)}. Use a new "
                    "output directory, or pass {overwrite} to delete that run and start again",
                    params=(Param("overwrite", True),),
                )
            for name in SESSION_SETTINGS:
                data["settings"][name] = identity["settings"][name]
            record = cls(out_dir, data)
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
        return cls(out_dir, data)

    @property
    def complete(self) -> bool:
        """Whether every unit was written and ``skipped.jsonl`` assembled."""
        return bool(self.data["status"] == "complete")

    def start_session(
        self, engine: str, threads: int, rows: int, engine_options: Mapping[str, Any] | None = None
    ) -> None:
        """Note a new session (engine, its options, threads) and the corpus's row total; saves."""
        self.data["timings"]["sessions"].append({
            "started_at": _now(), "engine": engine, "engine_options": dict(engine_options or {}),
            "threads": threads, "rows": 0, "seconds": 0.0,
        })
        self._session_start = time.monotonic()
        self._update_counts(rows)
        self.save()

    def set_precision(self, precision: Mapping[str, Any], schema: Mapping[str, str]) -> None:
        """Record the precision (with int8's calibration) and the shards' schema; saves."""
        self.data["precision"] = dict(precision)
        self.data["schema"] = dict(schema)
        self.save()

    def finish(self, unit: FinishedUnit) -> None:
        """Record a unit whose shard is written; saves."""
        self.finished[unit.name] = unit
        session = self.data["timings"]["sessions"][-1]
        session["rows"] += unit.rows_read
        self._update_counts(self.data["counts"]["rows"])
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
        self.data["status"] = "complete"
        self.data["timings"]["finished_at"] = _now()
        self.save()
        shutil.rmtree(self.out_dir / WORK_DIR, ignore_errors=True)

    def save(self) -> None:
        """Write ``run.json`` atomically, with this session's time so far."""
        if self.data["timings"]["sessions"]:
            session = self.data["timings"]["sessions"][-1]
            elapsed = round(time.monotonic() - self._session_start, 3)
            self.data["timings"]["seconds"] = round(
                self.data["timings"]["seconds"] - session["seconds"] + elapsed, 3
            )
            session["seconds"] = elapsed
        self.data["shards"] = [self.finished[name].to_dict() for name in sorted(self.finished)]
        write_atomic(self.out_dir / RUN_FILE, json.dumps(self.data, indent=2, ensure_ascii=False) + "\n")

    def _update_counts(self, rows: int) -> None:
        units = self.finished.values()
        self.data["counts"] = {
            "rows": rows,
            "read": sum(u.rows_read for u in units),
            "embedded": sum(u.embedded for u in units),
            "skipped": sum(u.skipped for u in units),
            "truncated": sum(u.truncated for u in units),
            "shards": len(self.finished),
        }

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


def differences(recorded: Mapping[str, Any], identity: Mapping[str, Any]) -> list[str]:
    """What differs between a recorded run and a new one, in words; empty if nothing does."""
    changes: list[str] = []
    old_model, new_model = recorded.get("model") or {}, identity["model"]
    if old_model.get("manifest_sha256") != new_model["manifest_sha256"]:
        changes.append(
            f"model was {old_model.get('name')} {old_model.get('variant')} "
            f"(manifest sha256 {str(old_model.get('manifest_sha256'))[:12]}), now {new_model['name']} "
            f"{new_model['variant']} (manifest sha256 {new_model['manifest_sha256'][:12]})"
        )
    old_inputs = {i["label"]: i for i in recorded.get("inputs") or []}
    new_inputs = {i["label"]: i for i in identity["inputs"]}
    for label in old_inputs.keys() - new_inputs.keys():
        changes.append(f"input {label} is no longer given")
    for label in new_inputs.keys() - old_inputs.keys():
        changes.append(f"input {label} is new")
    for label in old_inputs.keys() & new_inputs.keys():
        if old_inputs[label]["sha256"] != new_inputs[label]["sha256"]:
            changes.append(f"input {label} changed (size {old_inputs[label]['size']} -> "
                           f"{new_inputs[label]['size']} bytes, content differs)")
    if not changes and [i["label"] for i in recorded["inputs"]] != [i["label"] for i in identity["inputs"]]:
        changes.append("the inputs are given in another order")
    old_settings = recorded.get("settings") or {}
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


def load_record(out_dir: str | os.PathLike[str]) -> dict[str, Any]:  # JSON data
    """The validated content of ``out_dir/run.json`` (for readers of a run, like search).

    Raises:
        CorpusError: there is no ``run.json``, or it is not a readable run record.
    """
    path = Path(out_dir) / RUN_FILE
    if not path.is_file():
        raise CorpusError(f"{path}: no such file; {out_dir} is not the output of embedrt embed-corpus")
    return _read(path)


def _read(path: Path) -> dict[str, Any]:  # JSON data
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != RECORD_FORMAT or data.get("version") != RECORD_VERSION:
            raise ValueError(f"format {data.get('format')!r} version {data.get('version')!r}")
        for entry in data["shards"]:
            FinishedUnit.from_dict(entry)
        return dict(data)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise CorpusError(
            f"{path}: not a readable embedrt corpus run record ({err}); pass {{overwrite}} to start "
            "the run again", params=(Param("overwrite", True),),
        ) from err
