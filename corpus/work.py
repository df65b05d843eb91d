"""One unit of work, done anywhere: read it, embed it, write its shard.

:class:`UnitTask` holds everything that says which rows a unit is and how to read them
(picklable: a Ray actor receives it); :func:`process_unit` runs the three parts on it in
sequence. The local engine runs the same parts on the same chunks, pipelined across
threads, so every engine writes the same bytes for a unit.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from .embedding import EmbeddingStep
from .formats import Columns
from .inputs import InputFile
from .reader import BadRowPolicy, Chunk, Unit, read_unit
from .writer import FinishedUnit, ShardWriter


@dataclass(frozen=True)
class UnitTask:
    """A unit and how to read it.

    Attributes:
        source: the unit's input file.
        unit: which rows (see :class:`~.reader.Unit`); its shard is ``shards/<unit.name>.parquet``.
        columns: text and id columns.
        chunk_rows: rows embedded together (texts are length-sorted within a chunk).
        on_bad_row: ``fail`` or ``skip``.
        duplicates: row -> reason, for rows whose id an earlier row of the corpus holds.
    """

    source: InputFile
    unit: Unit
    columns: Columns
    chunk_rows: int
    on_bad_row: BadRowPolicy = "fail"
    duplicates: Mapping[int, str] = field(default_factory=dict)

    def chunks(self) -> Iterator[Chunk]:
        """Stream the unit's rows (see :func:`~.reader.read_unit`)."""
        return read_unit(
            self.source, self.unit, self.columns, self.chunk_rows,
            on_bad_row=self.on_bad_row, duplicates=self.duplicates,
        )


def process_unit(task: UnitTask, step: EmbeddingStep, writer: ShardWriter) -> FinishedUnit:
    """Read, embed and write ``task``'s unit; returns what ``run.json`` records of it.

    Raises:
        BadRowError: a bad row and ``on_bad_row`` is ``fail`` (nothing is written).
        OSError: the shard cannot be written.
    """
    return writer.write(task.unit, [step(chunk) for chunk in task.chunks()])
