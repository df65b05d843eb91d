"""Record readers, one per input format, streaming from a byte offset or row.

Each yields :class:`Record` s: one per line (``txt``, ``jsonl``), CSV record (header excluded)
or Parquet row, numbered from 1, with the text and id found or the reason the row is bad.
Nothing here decides what happens to a bad row; :mod:`.reader` does.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any, NamedTuple

from embedrt.runtime.errors import MissingExtraError, Param

from .errors import CorpusInputError
from .inputs import InputFile

DEFAULT_TEXT_COLUMN = "text"
_PARQUET_BATCH = 4096
_STRING_TYPES = ("string", "large_string", "string_view")
_BINARY_TYPES = ("binary", "large_binary", "binary_view")


@dataclass(frozen=True)
class Columns:
    """Where the text and the id are.

    Attributes:
        text: the column (JSON key, CSV header, Parquet column) holding the text; unused for txt.
        id: the column holding each row's id, or None for ``<input label>:<row number>``.
    """

    text: str = DEFAULT_TEXT_COLUMN
    id: str | None = None


class Record(NamedTuple):
    """One input record: a line (txt, jsonl), a CSV record or a Parquet row.

    ``row`` counts from 1; ``line`` is where it starts (None for Parquet); ``text`` (with ``id``
    when an id column is set) or ``reason``, saying why it is bad; ``end`` is the byte offset
    just after it (None for Parquet).
    """

    row: int
    line: int | None
    id: str | None
    text: str | None
    reason: str | None
    end: int | None


class Start(NamedTuple):
    """Where a read begins.

    ``row`` and ``line`` count from 1; ``offset`` is the byte the row starts at. Parquet seeks
    by row and ignores ``offset`` and ``line``.
    """

    row: int = 1
    offset: int = 0
    line: int = 1


def records(source: InputFile, columns: Columns, start: Start | None = None) -> Iterator[Record]:
    """Records of ``source`` from ``start`` on (default: its first record).

    Raises:
        CorpusInputError: the file lacks the text or id column, has no CSV header, or a
            Parquet column has a type that holds no text.
        MissingExtraError: a Parquet input without pyarrow installed.
    """
    if source.format == "parquet":
        return _parquet(source, columns, start.row if start else 1)
    if source.format == "csv":
        header, first = csv_header(source, columns)
        return _csv(source, columns, header, start or first)
    if source.format == "txt" and columns.id is not None:
        raise CorpusInputError(
            f"{source.path}: a .txt input has no columns, so the id column {columns.id!r} cannot "
            "apply; leave {id_column} unset (ids are then <file>:<line>)", params=(Param("id_column"),),
        )
    return _lines(source, columns, start or Start())


def line_ends(source: InputFile) -> Iterator[int]:
    """The byte offset after each line of a txt or jsonl file, without parsing it."""
    with source.path.open("rb") as handle:
        position = 0
        for raw in handle:
            position += len(raw)
            yield position


def _lines(source: InputFile, columns: Columns, start: Start) -> Iterator[Record]:
    jsonl = source.format == "jsonl"
    with source.path.open("rb") as handle:
        handle.seek(start.offset)
        position, row = start.offset, start.row
        for raw in handle:
            position += len(raw)
            line = raw.rstrip(b"\n").rstrip(b"\r")
            ident, text, reason = _parse_line(line, columns) if jsonl else _txt_line(line)
            yield Record(row, row, ident, text, reason, position)
            row += 1


def _txt_line(line: bytes) -> tuple[None, str | None, str | None]:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as err:
        return None, None, f"invalid UTF-8 at byte {err.start + 1} of the line"
    if not text:
        return None, None, "empty line: no text"
    return None, text, None


def _parse_line(line: bytes, columns: Columns) -> tuple[str | None, str | None, str | None]:
    try:
        decoded = line.decode("utf-8")
    except UnicodeDecodeError as err:
        return None, None, f"invalid UTF-8 at byte {err.start + 1} of the line"
    if not decoded.strip():
        return None, None, "empty line: no JSON object"
    try:
        value = json.loads(decoded)
    except json.JSONDecodeError as err:
        return None, None, f"not valid JSON ({err.msg} at column {err.colno})"
    if not isinstance(value, dict):
        return None, None, f"the line is a JSON {type(value).__name__}, not an object"
    ident, reason = None, None
    if columns.id is not None:
        ident, reason = _id_value(value.get(columns.id), columns.id)
    text, text_reason = _text_value(value.get(columns.text), columns.text)
    return ident, text, reason or text_reason


def _text_value(value: object, column: str) -> tuple[str | None, str | None]:
    if value is None:
        return None, f"missing text (no {column!r} value)"
    if not isinstance(value, str):
        return None, f"text {column!r} is a {_json_type(value)}, not a string"
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            return None, f"text {column!r} is not valid UTF-8 (bad character at position {err.start})"
    return value, None


def _id_value(value: object, column: str) -> tuple[str | None, str | None]:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value), None
    if value is None or value == "":
        return None, f"missing id (no {column!r} value)"
    if not isinstance(value, str):
        return None, f"id {column!r} is a {_json_type(value)}, not a string or integer"
    return value, None


def _json_type(value: object) -> str:
    names = {bool: "boolean", int: "number", float: "number", list: "list", dict: "object"}
    return names.get(type(value), type(value).__name__)


def csv_header(source: InputFile, columns: Columns) -> tuple[tuple[str, ...], Start]:
    """The CSV header and where the first record after it starts.

    Raises:
        CorpusInputError: the file is empty, its header is unreadable, or lacks a column.
    """
    with source.path.open("rb") as handle:
        state = _LineFeed(handle, 0)
        reader = csv.reader(state, strict=True)
        try:
            header = tuple(next(reader))
        except (StopIteration, csv.Error) as err:
            raise CorpusInputError(
                f"{source.path}: no readable CSV header row ({err or 'empty file'})"
            ) from err
    for name, keyword in ((columns.text, "text_column"), (columns.id, "id_column")):
        if name is not None and name not in header:
            raise CorpusInputError(
                f"{source.path}: no column {name!r} in the CSV header (it has {', '.join(header)}); "
                "name the right one with {" + keyword + "}", params=(Param(keyword),),
            )
    return header, Start(1, state.position, reader.line_num + 1)


class _LineFeed:
    """Binary lines decoded for :mod:`csv`, tracking the byte offset consumed.

    Invalid UTF-8 becomes lone surrogates (``surrogateescape``), found again per field.
    """

    def __init__(self, handle: IO[bytes], offset: int) -> None:
        handle.seek(offset)
        self._handle = handle
        self.position = offset

    def __iter__(self) -> Iterator[str]:
        for raw in self._handle:
            self.position += len(raw)
            yield raw.decode("utf-8", "surrogateescape")


def _csv(source: InputFile, columns: Columns, header: tuple[str, ...], start: Start) -> Iterator[Record]:
    # Fields are capped at 128 KiB by default, process-wide; a long document is data, not an
    # error. The limit only ever grows here (2**31 - 1 fits a C long everywhere).
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    text_at = header.index(columns.text)
    id_at = header.index(columns.id) if columns.id is not None else None
    with source.path.open("rb") as handle:
        feed = _LineFeed(handle, start.offset)
        reader = csv.reader(feed, strict=True)
        row = start.row
        while True:
            line = start.line + reader.line_num
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as err:
                yield Record(row, line, None, None, f"unparsable CSV ({err})", feed.position)
            else:
                values = _csv_fields(fields, len(header), text_at, id_at, columns)
                yield Record(row, line, *values, feed.position)
            row += 1


def _csv_fields(
    fields: list[str], width: int, text_at: int, id_at: int | None, columns: Columns
) -> tuple[str | None, str | None, str | None]:
    if len(fields) != width:
        return None, None, f"the record has {len(fields)} fields; the header has {width}"
    ident: str | None = None
    if id_at is not None:
        ident = fields[id_at]
        if not ident:
            return None, None, f"missing id (empty {columns.id!r} field)"
        if _has_surrogates(ident):
            return None, None, f"id {columns.id!r} is not valid UTF-8"
    text = fields[text_at]
    if not text:
        return ident, None, f"missing text (empty {columns.text!r} field)"
    if _has_surrogates(text):
        return ident, None, f"text {columns.text!r} is not valid UTF-8"
    return ident, text, None


def _has_surrogates(value: str) -> bool:
    if value.isascii():
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def parquet_rows(source: InputFile) -> int:
    """Rows of a Parquet input, from its footer.

    Raises:
        CorpusInputError: not a readable Parquet file.
        MissingExtraError: pyarrow is not installed.
    """
    return int(_parquet_file(source).metadata.num_rows)


def _parquet_file(source: InputFile) -> Any:  # pyarrow.parquet.ParquetFile: pyarrow is optional
    try:
        import pyarrow.parquet as pq
    except ImportError as err:
        raise MissingExtraError("corpus", "reading Parquet inputs", "pyarrow") from err
    try:
        return pq.ParquetFile(source.path)
    except Exception as err:  # pyarrow raises ArrowInvalid / OSError for a bad file
        raise CorpusInputError(f"{source.path}: not a readable Parquet file ({err})") from err


def _parquet_column_kind(source: InputFile, schema: Any, name: str, allow_int: bool) -> str:
    keyword = "id_column" if allow_int else "text_column"
    if name not in schema.names:
        raise CorpusInputError(
            f"{source.path}: no column {name!r} (it has {', '.join(schema.names)}); "
            "name the right one with {" + keyword + "}", params=(Param(keyword),),
        )
    kind = schema.field(name).type
    import pyarrow as pa

    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if str(kind) in _STRING_TYPES:
        return "string"
    if str(kind) in _BINARY_TYPES:
        return "binary"
    if allow_int and pa.types.is_integer(kind):
        return "int"
    allowed = "a string or binary" + (" or integer" if allow_int else "")
    raise CorpusInputError(f"{source.path}: column {name!r} is {kind}, not {allowed} column")


def _parquet(source: InputFile, columns: Columns, first_row: int) -> Iterator[Record]:
    parquet = _parquet_file(source)
    schema = parquet.schema_arrow
    text_kind = _parquet_column_kind(source, schema, columns.text, allow_int=False)
    id_kind = _parquet_column_kind(source, schema, columns.id, True) if columns.id else None
    wanted = [columns.text] + ([columns.id] if columns.id else [])
    return _parquet_records(parquet, wanted, first_row, columns, text_kind, id_kind)


def _parquet_records(
    parquet: Any, wanted: list[str], first_row: int, columns: Columns, text_kind: str, id_kind: str | None
) -> Iterator[Record]:
    metadata = parquet.metadata
    skip, groups, seen = first_row - 1, [], 0
    for group in range(metadata.num_row_groups):
        rows = metadata.row_group(group).num_rows
        if seen + rows > first_row - 1:
            groups.append(group)
        else:
            skip -= rows
        seen += rows
    if not groups:
        return
    row = first_row
    for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH, row_groups=groups, columns=wanted):
        if skip >= batch.num_rows:
            skip -= batch.num_rows
            continue
        batch, skip = batch.slice(skip), 0
        texts = batch.column(columns.text).to_pylist()
        ids = batch.column(columns.id).to_pylist() if columns.id else [None] * len(texts)
        for raw_text, raw_id in zip(texts, ids, strict=True):
            yield Record(row, None, *_parquet_values(raw_text, raw_id, columns, text_kind, id_kind), None)
            row += 1


def _parquet_values(
    raw_text: Any, raw_id: Any, columns: Columns, text_kind: str, id_kind: str | None
) -> tuple[str | None, str | None, str | None]:
    ident: str | None = None
    if id_kind is not None:
        if raw_id is None or raw_id == "" or raw_id == b"":
            return None, None, f"missing id (null {columns.id!r})"
        if isinstance(raw_id, bytes):
            try:
                raw_id = raw_id.decode("utf-8")
            except UnicodeDecodeError:
                return None, None, f"id {columns.id!r} is not valid UTF-8"
        ident = str(raw_id)
    if raw_text is None:
        return ident, None, f"missing text (null {columns.text!r})"
    if isinstance(raw_text, bytes):
        try:
            raw_text = raw_text.decode("utf-8")
        except UnicodeDecodeError as err:
            return ident, None, f"text {columns.text!r} is not valid UTF-8 (byte {err.start + 1})"
    return ident, raw_text, None
