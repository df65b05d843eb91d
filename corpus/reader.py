"""The reader: input files -> units of work -> chunks of (id, text), streamed.

A corpus is cut into **units**: rows ``k * rows_per_shard + 1 ...`` of one input file, each
written as one shard. A unit is named by its input and number (``part-00002-000017``), so
it means the same rows in every run and under every engine; resume skips the units
``run.json`` lists as finished. :func:`plan_corpus` finds the units (one streaming pass that
counts rows and notes where each unit starts, so a unit is read by seeking, not by
re-reading the file), and :func:`read_unit` streams one unit as :class:`Chunk` s of at most
``chunk_rows`` rows, with the rows that cannot be embedded set aside as :class:`BadRow` s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from embedrt.runtime.errors import Param

from .errors import BadRowError
from .formats import Columns, Record, Start, csv_header, line_ends, parquet_rows, records
from .ids import IdIndex
from .inputs import InputFile

BadRowPolicy = Literal["fail", "skip"]
BAD_ROW_POLICIES = ("fail", "skip")


@dataclass(frozen=True)
class Unit:
    """Rows ``start.row .. start.row + rows - 1`` of input number ``input``: one shard's work.

    Attributes:
        input: position of the input file in the job's input list.
        index: the unit's number within that file (from 0).
        start: where its first row starts (row, byte offset, line).
        rows: how many rows (records) it holds, good and bad.
    """

    input: int
    index: int
    start: Start
    rows: int

    @property
    def name(self) -> str:
        """``part-<input>-<index>``: the shard's file name without suffix."""
        return f"part-{self.input:05d}-{self.index:06d}"

    @property
    def last_row(self) -> int:
        """The number of its last row."""
        return self.start.row + self.rows - 1


@dataclass(frozen=True)
class Plan:
    """Every unit of a corpus job, in input order, and the row total."""

    inputs: tuple[InputFile, ...]
    units: tuple[Unit, ...]
    rows: int
    duplicates: int = 0


@dataclass(frozen=True)
class BadRow:
    """A row that cannot be embedded, where it is, and why."""

    input: str
    row: int
    line: int | None
    reason: str
    format: str
    id: str | None = None

    @property
    def where(self) -> str:
        """``data.jsonl line 17``, ``data.csv record 5 (line 7)`` or ``data.parquet row 12``."""
        if self.format in ("txt", "jsonl"):
            return f"{self.input} line {self.row}"
        if self.format == "csv":
            return f"{self.input} record {self.row} (line {self.line})"
        return f"{self.input} row {self.row}"

    def to_dict(self) -> dict[str, Any]:  # JSON values
        """The line written to ``skipped.jsonl``."""
        data: dict[str, Any] = {"input": self.input, "row": self.row}
        if self.line is not None and self.format == "csv":
            data["line"] = self.line
        if self.id is not None:
            data["id"] = self.id
        data["reason"] = self.reason
        return data


@dataclass
class Chunk:
    """Consecutive rows of one unit: the good ones as ``ids``/``texts``, the rest as ``bad``.

    ``rows_read`` counts both (``len(ids) + len(bad)``); ``last`` marks the unit's final chunk.
    """

    unit: Unit
    ids: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    bad: list[BadRow] = field(default_factory=list)
    last: bool = False

    @property
    def rows_read(self) -> int:
        """Rows this chunk covers, good and bad."""
        return len(self.ids) + len(self.bad)


def plan_corpus(
    inputs: Sequence[InputFile], columns: Columns, rows_per_shard: int, ids: IdIndex | None = None
) -> Plan:
    """Cut ``inputs`` into units of ``rows_per_shard`` rows, in one streaming pass.

    With ``ids`` (an id column is set), every good row's id is entered in the index, so a
    later :func:`read_unit` knows the duplicates.

    Raises:
        CorpusInputError: an input lacks a column or has an unreadable header or footer.
        MissingExtraError: a Parquet input without pyarrow installed.
    """
    units: list[Unit] = []
    total = 0
    for number, source in enumerate(inputs):
        starts = _unit_starts(number, source, columns, rows_per_shard, ids)
        rows = starts.pop()  # the last entry is the input's row count
        total += rows.row - 1
        for index, start in enumerate(starts):
            end = starts[index + 1].row if index + 1 < len(starts) else rows.row
            units.append(Unit(number, index, start, end - start.row))
    return Plan(tuple(inputs), tuple(units), total, ids.count() if ids else 0)


def _unit_starts(
    number: int, source: InputFile, columns: Columns, size: int, ids: IdIndex | None
) -> list[Start]:
    """Where each unit starts, then (last) ``Start(rows + 1)``."""
    reading = records(source, columns)  # checks the columns even when rows are only counted
    if source.format == "parquet" and ids is None:
        rows = parquet_rows(source)
        return [Start(row) for row in range(1, rows + 1, size)] + [Start(rows + 1)]
    if source.format in ("txt", "jsonl") and ids is None:
        starts, offset, row = [Start()], 0, 0
        for row, offset in enumerate(line_ends(source), 1):
            if row % size == 0:
                starts.append(Start(row + 1, offset, row + 1))
        return _close(starts, row, offset)
    starts, row = [], 0
    pending = csv_header(source, columns)[1] if source.format == "csv" else Start()
    for record in reading:
        row = record.row
        if pending.row == row:  # this record opens a unit
            starts.append(Start(row, pending.offset, record.line or 0))
        if row % size == 0:
            pending = Start(row + 1, record.end or 0)
        if ids is not None and record.reason is None and record.id is not None:
            ids.add(record.id, number, row, _where(source, record))
    return starts + [Start(row + 1)]


def _close(starts: list[Start], rows: int, offset: int) -> list[Start]:
    if starts[-1].row > rows:  # the file ends on a unit boundary (or is empty)
        starts.pop()
    return starts + [Start(rows + 1, offset)]


def _where(source: InputFile, record: Record) -> str:
    return BadRow(source.label, record.row, record.line, "", source.format).where


def read_unit(
    source: InputFile,
    unit: Unit,
    columns: Columns,
    chunk_rows: int,
    *,
    on_bad_row: BadRowPolicy = "fail",
    duplicates: Mapping[int, str] | None = None,
) -> Iterator[Chunk]:
    """Stream ``unit`` of ``source`` as chunks of ``chunk_rows`` rows (fewer at its end).

    Ids are the id column's values, or ``<input label>:<row>``. ``duplicates`` (row ->
    reason, from :meth:`IdIndex.duplicates`) marks rows whose id an earlier row holds.

    Raises:
        BadRowError: a row is bad and ``on_bad_row`` is ``fail`` (the message names the file,
            the line or row, and the reason).
        CorpusInputError: the input lacks a column (see :func:`plan_corpus`).
    """
    duplicates = duplicates or {}
    chunk = Chunk(unit)
    reading = records(source, columns, unit.start)
    for record in reading:
        if record.row > unit.last_row:
            break
        reason = record.reason or duplicates.get(record.row)
        ident = record.id if columns.id is not None else f"{source.label}:{record.row}"
        if reason is not None or record.text is None:
            bad = BadRow(source.label, record.row, record.line, reason or "no text", source.format,
                         ident if record.id is not None else None)
            if on_bad_row == "fail":
                raise BadRowError(
                    f"{bad.where}: {bad.reason}. Fix the row, or pass {{on_bad_row}} to leave bad "
                    "rows out (each is listed in skipped.jsonl)", params=(Param("on_bad_row", "skip"),),
                )
            chunk.bad.append(bad)
        else:
            chunk.ids.append(ident or "")
            chunk.texts.append(record.text)
        if record.row == unit.last_row:
            break
        if chunk.rows_read == chunk_rows:
            yield chunk
            chunk = Chunk(unit)
    chunk.last = True
    yield chunk


def first_texts(
    plan: Plan, columns: Columns, count: int, ids: IdIndex | None,
    reader: Callable[..., Iterator[Chunk]] = read_unit,
) -> list[str]:
    """The first ``count`` good texts of the corpus in input order (bad rows passed over).

    They calibrate int8 ranges: the same texts in every run.
    """
    texts: list[str] = []
    for unit in plan.units:
        source = plan.inputs[unit.input]
        dups = ids.duplicates(unit.input, unit.start.row, unit.last_row) if ids else None
        for chunk in reader(source, unit, columns, count, on_bad_row="skip", duplicates=dups):
            texts.extend(chunk.texts[: count - len(texts)])
            if len(texts) >= count:
                return texts
    return texts
