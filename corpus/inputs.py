"""The corpus's input files: found from paths, directories and globs, named and fingerprinted."""

from __future__ import annotations

import glob
import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import CorpusInputError

logger = logging.getLogger(__name__)

# File suffix -> format. A directory contributes the files with these suffixes (recursively).
FORMATS = {".txt": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}
_HASH_BLOCK = 1 << 20


@dataclass(frozen=True)
class InputFile:
    """One input file of a corpus job.

    Attributes:
        path: absolute path.
        label: path relative to the directory common to all inputs (a single file: its name);
            the stable name used in ids, messages and ``run.json``, whatever the working directory.
        format: ``txt``, ``jsonl``, ``csv`` or ``parquet`` (from the suffix).
        size: bytes.
        sha256: of the content: ``run.json`` compares it to refuse changed inputs.
    """

    path: Path
    label: str
    format: str
    size: int
    sha256: str

    def to_dict(self) -> dict[str, str | int]:
        """The record kept in ``run.json``."""
        return {
            "label": self.label, "path": str(self.path), "format": self.format, "size": self.size,
            "sha256": self.sha256,
        }


def find_inputs(specs: Sequence[str | os.PathLike[str]], exclude: Path | None = None) -> list[InputFile]:
    """Resolve ``specs`` (files, directories, globs) to input files, in the order given.

    A directory contributes its files with a known suffix (:data:`FORMATS`), recursively and
    sorted, hidden ones excluded; a glob its matches, sorted. Files under ``exclude`` (the
    output directory) are never inputs.

    Raises:
        CorpusInputError: nothing given, a path that does not exist, a glob or directory
            matching no input file, a file of an unknown format, or one file named twice.
    """
    if not specs:
        raise CorpusInputError("no input given; pass files, directories or globs of "
                               f"{', '.join(sorted(FORMATS))} files")
    excluded = exclude.resolve() if exclude is not None else None
    paths: list[Path] = []
    for spec in specs:
        for path in _expand(str(spec)):
            resolved = path.resolve()
            if excluded is not None and resolved.is_relative_to(excluded):
                continue
            if resolved in paths:
                raise CorpusInputError(f"{path}: input given twice (each file may appear once)")
            paths.append(resolved)
    if not paths:
        raise CorpusInputError(
            f"no input files in {', '.join(map(str, specs))} (outside the output directory)"
        )
    root = Path(os.path.commonpath([p.parent for p in paths]))
    return [_describe(path, path.relative_to(root).as_posix()) for path in paths]


def input_format(path: Path) -> str:
    """The format of ``path`` from its suffix.

    Raises:
        CorpusInputError: the suffix is not one of :data:`FORMATS`.
    """
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise CorpusInputError(
            f"{path}: unknown input format {path.suffix or '(no suffix)'!r}; inputs must end in "
            f"{', '.join(sorted(FORMATS))} (a .txt file holds one text per line)"
        )
    return fmt


def _expand(spec: str) -> list[Path]:
    path = Path(spec)
    if path.is_dir():
        found = sorted(
            p for p in path.rglob("*")
            if p.is_file() and p.suffix.lower() in FORMATS
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        if not found:
            raise CorpusInputError(f"{spec}: directory holds no {', '.join(sorted(FORMATS))} file")
        return found
    if path.is_file():
        input_format(path)
        return [path]
    if glob.has_magic(spec):
        matches = sorted(Path(m) for m in glob.glob(spec, recursive=True) if Path(m).is_file())
        if not matches:
            raise CorpusInputError(f"{spec}: the pattern matches no file")
        for match in matches:
            input_format(match)
        return matches
    raise CorpusInputError(f"{spec}: no such file or directory")


def _describe(path: Path, label: str) -> InputFile:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while block := handle.read(_HASH_BLOCK):
            digest.update(block)
            size += len(block)
    return InputFile(path, label, input_format(path), size, digest.hexdigest())
