"""What search needs from an ``embed-corpus`` run: its ``run.json`` fields and its model.

``run.json`` is read in this one place (its format checked by
:func:`~embedrt.corpus.record.read_json`, the fields search needs by the typed-record reader)
and turned into a typed :class:`SearchRun`;
:func:`query_model_dir` finds the artefact to embed queries with.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from embedrt.runtime.errors import ArtefactError, ArtefactNotFoundError, Param
from embedrt.runtime.manifest import MANIFEST_FILE, sha256_file
from embedrt.runtime.precision import CalibrationError, Int8Calibration, PrecisionError, check_precision
from embedrt.runtime.records import RecordError, read_record

from .errors import CorpusError
from .record import RUN_FILE, read_json

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchRun:
    """The fields of a run's ``run.json`` that search needs.

    Attributes:
        directory: the run's output directory.
        run_file: its ``run.json``.
        model_path: the artefact directory the corpus was embedded with.
        model_name: the model's name (for messages).
        variant: the artefact's variant (for messages).
        manifest_sha256: sha256 of the artefact's ``manifest.json`` at the time of the run.
        dim: the embedding dimension.
        precision: how the vectors are stored (one of ``PRECISIONS``).
        calibration: the int8 ranges (int8 runs only).
        shards: the finished shards, in run order.
    """

    directory: Path
    run_file: Path
    model_path: Path
    model_name: str
    variant: str
    manifest_sha256: str
    dim: int
    precision: str
    calibration: Int8Calibration | None
    shards: tuple[Path, ...]


@dataclass(frozen=True)
class _RunModel:
    name: str
    variant: str
    path: str
    manifest_sha256: str
    dim: int


@dataclass(frozen=True)
class _RunPrecision:
    name: str
    calibration: Int8Calibration | None = None


@dataclass(frozen=True)
class _RunShard:
    shard: str


@dataclass(frozen=True)
class _SearchFields:
    """The part of ``run.json`` (:class:`~embedrt.corpus.record.CorpusRun`) search reads."""

    model: _RunModel
    shards: tuple[_RunShard, ...]
    status: str = "running"
    precision: _RunPrecision | None = None


class SearchRunError(RecordError, CorpusError):
    """A field of ``run.json`` that search needs is missing or of the wrong type."""


def read_search_run(directory: Path) -> SearchRun:
    """Read what search needs from ``directory/run.json``.

    Raises:
        RunNotFoundError: the directory or its ``run.json`` does not exist.
        SearchRunError: a field search needs is missing or mistyped (the message names it).
        CorpusError: ``run.json`` is not a run record (see
            :func:`~embedrt.corpus.record.read_json`), or the run has not started embedding.
    """
    run_file = directory / RUN_FILE
    if not run_file.is_file():
        what = "no such directory" if not directory.is_dir() else f"no {RUN_FILE} in it"
        raise RunNotFoundError(
            f"{directory}: {what}; search reads the output directory of 'embedrt embed-corpus ... --out DIR'"
        )
    try:
        data = read_json(run_file)
    except CorpusError as err:  # its advice is embed-corpus's (--overwrite); say it for search
        raise CorpusError(
            f"{run_file}: not a readable embedrt corpus run record ({err.__cause__ or err}); "
            "run embed-corpus on the directory again to rebuild it"
        ) from err
    fields = read_record(_SearchFields, data, run_file, error=SearchRunError, ignore_unknown=True,
                         fix="was it written by embed-corpus? Run it on the directory again")
    if fields.precision is None:
        raise CorpusError(f"{run_file}: the run has not started embedding (no precision recorded yet); "
                          "nothing to search")
    model, stored = fields.model, fields.precision
    try:
        precision = check_precision(stored.name)
    except PrecisionError as err:
        raise CorpusError(f"{run_file}: {err}") from err
    calibration = stored.calibration if precision == "int8" else None
    if precision == "int8" and calibration is None:
        raise SearchRunError(str(run_file), "precision.calibration", "missing for an int8 run")
    if calibration is not None and calibration.dim != model.dim:
        raise CalibrationError(f"{run_file}: the int8 calibration is for dimension {calibration.dim}, "
                               f"the model's is {model.dim}")
    if fields.status != "complete":
        logger.warning("%s: the run is not complete; searching its %d finished shards only",
                       directory, len(fields.shards))
    model_path = Path(model.path)
    return SearchRun(
        directory=directory, run_file=run_file,
        model_path=model_path if model_path.is_absolute() else directory / model_path,
        model_name=model.name, variant=model.variant, manifest_sha256=model.manifest_sha256,
        dim=model.dim, precision=precision, calibration=calibration,
        shards=tuple(directory / entry.shard for entry in fields.shards),
    )


class RunNotFoundError(CorpusError, FileNotFoundError):
    """The directory searched holds no ``run.json``."""


def query_model_dir(run: SearchRun, model: str | Path | None = None) -> Path:
    """The artefact to embed queries with: ``model`` if given, else the one the run used.

    The run's own artefact must still be the one it used: its ``manifest.json`` must have the
    sha256 ``run.json`` recorded, or the query would be embedded by a different model than the
    corpus. An explicit ``model`` is trusted (a different checksum is logged as a warning),
    so a moved or re-exported artefact can still be used on purpose.

    Raises:
        ArtefactNotFoundError: the run's artefact no longer exists (pass ``model``).
        ArtefactError: its manifest changed since the run (re-run, or pass ``model``).
    """
    if model is not None:
        path = Path(model)
        manifest = path / MANIFEST_FILE
        if manifest.is_file() and run.manifest_sha256 and sha256_file(manifest) != run.manifest_sha256:
            logger.warning(
                "%s is not the artefact %s embedded with (%s %s; manifest checksum differs); "
                "its query vectors may not match the corpus", path, run.directory,
                run.model_name, run.variant,
            )
        return path
    path = run.model_path
    manifest = path / MANIFEST_FILE
    if not manifest.is_file():
        raise ArtefactNotFoundError(
            f"{run.run_file}: the run's model artefact {path} ({run.model_name} {run.variant}) is "
            "gone; pass the same model's artefact directory as {model} to embed the query",
            params=[Param("model")],
        )
    found = sha256_file(manifest)
    if run.manifest_sha256 and found != run.manifest_sha256:
        raise ArtefactError(
            f"{path}: its manifest changed since {run.run_file} was written (sha256 {found[:12]}..., "
            f"the run recorded {run.manifest_sha256[:12]}...), so queries would not be embedded like "
            "the corpus; re-run embed-corpus, or pass it as {model} to search with it anyway",
            params=[Param("model")],
        )
    return path
