"""What search needs from an ``embed-corpus`` run: its ``run.json`` fields and its model.

``run.json`` is read in this one place (through :func:`~embedrt.corpus.record.load_record`,
which checks the format and the shard entries) and turned into a typed :class:`SearchRun`;
:func:`query_model_dir` finds the artefact to embed queries with.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embedrt.runtime.errors import ArtefactError, ArtefactNotFoundError, Param
from embedrt.runtime.manifest import MANIFEST_FILE, sha256_file
from embedrt.runtime.precision import CalibrationError, Int8Calibration, PrecisionError, check_precision

from .errors import CorpusError
from .record import RUN_FILE, load_record

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


def read_search_run(directory: Path) -> SearchRun:
    """Read what search needs from ``directory/run.json``.

    Raises:
        RunNotFoundError: the directory or its ``run.json`` does not exist.
        CorpusError: ``run.json`` is not a valid run record (see
            :func:`~embedrt.corpus.record.load_record`), or lacks a field search needs.
    """
    run_file = directory / RUN_FILE
    if not run_file.is_file():
        what = "no such directory" if not directory.is_dir() else f"no {RUN_FILE} in it"
        raise RunNotFoundError(
            f"{directory}: {what}; search reads the output directory of 'embedrt embed-corpus ... --out DIR'"
        )
    try:
        data = load_record(directory)
    except CorpusError as err:  # its advice is embed-corpus's (--overwrite); say it for search
        raise CorpusError(
            f"{run_file}: not a readable embedrt corpus run record ({err.__cause__ or err}); "
            "run embed-corpus on the directory again to rebuild it"
        ) from err
    field = _RunFields(run_file, data)
    model = field.mapping(data, "model")
    dim = field.get(model, "dim", int)
    stored = data.get("precision")
    if stored is None:
        raise CorpusError(f"{run_file}: the run has not started embedding (no precision recorded yet); "
                          "nothing to search")
    stored = field.mapping(data, "precision")
    try:
        precision = check_precision(field.get(stored, "name", str))
        calibration = None
        if precision == "int8":
            calibration = Int8Calibration.from_dict(
                field.get(stored, "calibration", dict), origin=f"{run_file}: precision.calibration"
            )
    except PrecisionError as err:
        raise CorpusError(f"{run_file}: {err}") from err
    if calibration is not None and calibration.dim != dim:
        raise CalibrationError(f"{run_file}: the int8 calibration is for dimension {calibration.dim}, "
                               f"the model's is {dim}")
    if data.get("status") != "complete":
        logger.warning("%s: the run is not complete; searching its %d finished shards only",
                       directory, len(field.get(data, "shards", list)))
    shards = tuple(directory / field.get(entry, "shard", str) for entry in field.get(data, "shards", list))
    model_path = Path(field.get(model, "path", str))
    return SearchRun(
        directory=directory, run_file=run_file,
        model_path=model_path if model_path.is_absolute() else directory / model_path,
        model_name=field.get(model, "name", str), variant=field.get(model, "variant", str),
        manifest_sha256=field.get(model, "manifest_sha256", str), dim=dim, precision=precision,
        calibration=calibration, shards=shards,
    )


class RunNotFoundError(CorpusError, FileNotFoundError):
    """The directory searched holds no ``run.json``."""


class _RunFields:
    """Typed access to run.json's fields, naming the file and field in errors."""

    def __init__(self, run_file: Path, data: Any) -> None:  # parsed JSON
        self.run_file = run_file
        if not isinstance(data, dict):
            raise CorpusError(f"{run_file}: expected a JSON object, got {type(data).__name__}")

    def mapping(self, data: Any, name: str) -> dict[str, Any]:  # parsed JSON
        value: dict[str, Any] = self.get(data, name, dict)
        return value

    def get(self, data: Any, name: str, kind: type) -> Any:  # parsed JSON, checked against kind
        if not isinstance(data, dict) or name not in data:
            raise CorpusError(
                f"{self.run_file}: field {name!r} is missing; was this written by embed-corpus?"
            )
        value = data[name]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise CorpusError(f"{self.run_file}: field {name!r} must be a {kind.__name__}, "
                              f"got {type(value).__name__}")
        return value


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
