"""The writer: a unit's embedded chunks -> one Parquet shard, atomically and reproducibly.

A shard is written to a temporary name in ``DIR/.work/``, flushed to disk and renamed into
``DIR/shards/`` only when complete, so a shard file that exists is whole. Its bytes depend
only on its rows: one row group, fixed compression, no timestamps (Parquet's ``created_by``
names the pyarrow version). The unit's bad rows go to ``DIR/.work/skipped/<unit>.jsonl`` the
same way; the run record joins them into ``skipped.jsonl`` in unit order at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from embedrt.runtime.errors import MissingExtraError

from .embedding import EmbeddedChunk
from .reader import Unit

SHARDS_DIR = "shards"
SEARCH_CACHE_DIR = ".search-cache"  # written by search (search.py): decoded shards, as .npy
WORK_DIR = ".work"
SKIPPED_DIR = "skipped"
COMPRESSION = "zstd"
# Arrow type of the embedding list's items, per precision.
ITEM_TYPES = {"float32": "float32", "float16": "float16", "int8": "int8", "ubinary": "uint8"}


@dataclass(frozen=True)
class FinishedUnit:
    """What ``run.json`` records of a finished unit (its shard and counts)."""

    name: str
    input: int
    index: int
    first_row: int
    rows_read: int
    embedded: int
    skipped: int
    truncated: int
    shard: str
    bytes: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:  # JSON values
        """JSON-ready fields."""
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FinishedUnit:  # JSON values
        """Read back :meth:`to_dict`'s output (``KeyError``/``TypeError`` if it is not)."""
        return cls(**{name: data[name] for name in cls.__dataclass_fields__})


def shard_schema(precision: str, width: int) -> Any:  # pyarrow.Schema: pyarrow is optional
    """The shards' Arrow schema.

    ``id`` string, ``embedding`` fixed_size_list<item: type>[width], ``tokens`` int32,
    ``truncated`` bool.

    Raises:
        MissingExtraError: pyarrow is not installed.
    """
    pa = _pyarrow()
    return pa.schema([
        pa.field("id", pa.string(), nullable=False),
        pa.field("embedding", pa.list_(getattr(pa, ITEM_TYPES[precision])(), width), nullable=False),
        pa.field("tokens", pa.int32(), nullable=False),
        pa.field("truncated", pa.bool_(), nullable=False),
    ])


class ShardWriter:
    """Writes units as shards of ``out_dir``.

    Args:
        out_dir: the run's output directory.
        precision: the embeddings' precision (its Arrow type).
        width: values per embedding (ubinary: bytes).

    Raises:
        MissingExtraError: pyarrow is not installed.
    """

    def __init__(self, out_dir: Path, precision: str, width: int) -> None:
        self.out_dir = out_dir
        self.schema = shard_schema(precision, width)
        _parquet()  # imported here, not in the writer thread's first write (it holds the GIL)
        self.width = width
        self.dtype = np.dtype(ITEM_TYPES[precision])
        for folder in (out_dir / SHARDS_DIR, out_dir / WORK_DIR / SKIPPED_DIR):
            folder.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def check_available() -> None:
        """Raise :class:`MissingExtraError` now if pyarrow is missing (before any work)."""
        _pyarrow()

    def write(self, unit: Unit, chunks: Sequence[EmbeddedChunk]) -> FinishedUnit:
        """Write ``unit`` from its chunks (in order) and return its record.

        Raises:
            OSError: the disk is full or the directory not writable.
        """
        pa, pq = _pyarrow(), _parquet()
        ids = [ident for chunk in chunks for ident in chunk.ids]
        codes = np.concatenate([c.codes.reshape(-1, self.width) for c in chunks])
        codes = codes.astype(self.dtype, copy=False)
        tokens = np.concatenate([c.tokens for c in chunks]).astype(np.int32, copy=False)
        truncated = np.concatenate([c.truncated for c in chunks]).astype(np.bool_, copy=False)
        embedding = pa.FixedSizeListArray.from_arrays(pa.array(codes.reshape(-1)), self.width)
        table = pa.Table.from_arrays(
            [pa.array(ids, pa.string()), embedding, pa.array(tokens), pa.array(truncated)],
            schema=self.schema,
        )
        shard = Path(SHARDS_DIR) / f"{unit.name}.parquet"
        # The process id keeps two writers of one unit apart (Ray may run a unit's block
        # again on another actor while the first is still writing it).
        temporary = self.out_dir / WORK_DIR / f"{unit.name}.parquet.{os.getpid()}.tmp"
        pq.write_table(
            table, temporary, row_group_size=max(len(ids), 1), compression=COMPRESSION,
            use_dictionary=False, write_statistics=False,
        )
        digest, size = _sync_and_hash(temporary)
        bad = [row for chunk in chunks for row in chunk.bad]
        if bad:
            lines = "".join(json.dumps(row.to_dict(), ensure_ascii=False) + "\n" for row in bad)
            write_atomic(self.out_dir / WORK_DIR / SKIPPED_DIR / f"{unit.name}.jsonl", lines)
        os.replace(temporary, self.out_dir / shard)
        sync_directory(self.out_dir / SHARDS_DIR)
        return FinishedUnit(
            unit.name, unit.input, unit.index, unit.start.row, sum(c.rows_read for c in chunks),
            len(ids), len(bad), int(truncated.sum()), shard.as_posix(), size, digest,
        )


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, flushed, then renamed over it.

    A process killed between the two leaves the temporary file: see :func:`atomic_leftovers`.
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    sync_directory(path.parent)


def atomic_leftovers(path: Path) -> list[Path]:
    """Temporary files :func:`write_atomic` left beside ``path`` (their writers were killed)."""
    return sorted(path.parent.glob(f".{path.name}.*.tmp"))


def sync_directory(path: Path) -> None:
    """Flush a directory's entries (a rename) to disk, where the platform allows it."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:  # Windows cannot open a directory; its renames are durable enough
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _sync_and_hash(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    with path.open("rb+") as handle:
        os.fsync(handle.fileno())
        while block := handle.read(1 << 20):
            digest.update(block)
        return digest.hexdigest(), handle.tell()


def _pyarrow() -> Any:  # the pyarrow module: optional, imported where needed
    try:
        import pyarrow
    except ImportError as err:
        raise MissingExtraError("corpus", "embedrt embed-corpus", "pyarrow") from err
    return pyarrow


def _parquet() -> Any:  # pyarrow.parquet: optional, imported where needed
    _pyarrow()
    import pyarrow.parquet

    return pyarrow.parquet
