"""Typed JSON records: a frozen dataclass read from, and written to, a JSON object.

The fields are the dataclass's own (``dataclasses.fields`` and ``typing.get_type_hints``), so
a record's layout is written once, as Python. :func:`read_record` checks every field against
its annotation and fails with a :class:`RecordError` naming the file and the field's path
(``manifest.json: recipe.quantisation.weight_type: expected str, got 3``); :func:`record_json`
writes the record back as JSON-ready data.

Annotations understood: ``str``, ``int``, ``float`` (an integer is accepted and converted),
``bool``, ``None``, unions (``X | None``), ``Literal[...]`` choices, ``tuple[X, ...]``,
``tuple[X, Y]``, ``list[X]``, ``dict[str, X]`` / ``Mapping[str, X]``, nested dataclasses, and
``Any`` or a forward reference (any JSON value: how a recursive JSON alias ends).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from .errors import EmbedrtError

RecordT = TypeVar("RecordT")

_SCALARS: dict[type, str] = {str: "str", int: "int", float: "float", bool: "bool"}


class RecordError(EmbedrtError, ValueError):
    """A JSON record does not match its dataclass: a field is missing, unknown or mistyped.

    Attributes:
        file: the file (or other origin) the record was read from.
        field: the field's path inside it (``recipe.quantisation.layout``, ``dense[0].file``);
            empty when the whole record is wrong.
        problem: what is wrong with it, in words.
    """

    def __init__(self, file: str, field: str, problem: str) -> None:
        self.file = file
        self.field = field
        self.problem = problem
        super().__init__(f"{file}: {field}: {problem}" if field else f"{file}: {problem}")


def read_record(
    cls: type[RecordT],
    data: object,
    file: str | Path,
    *,
    error: type[RecordError] = RecordError,
    fix: str = "",
    ignore_unknown: bool = False,
) -> RecordT:
    """Build the dataclass ``cls`` from parsed JSON ``data``, checking every field.

    A field with a default may be absent; one without must be present. A key the dataclass
    has no field for is refused (a typo must not pass as an absent optional field). An error
    the dataclass's own ``__post_init__`` raises (``ValueError``) is reported at that record.

    Args:
        cls: a dataclass (usually frozen).
        data: the parsed JSON (``json.loads``'s result).
        file: where ``data`` came from; every message starts with it.
        error: the :class:`RecordError` subclass to raise (so a caller's own ``except`` works).
        fix: advice appended to every message (``re-export the model ...``).
        ignore_unknown: skip keys the dataclasses have no field for, at every level (for a
            reader that needs part of a record another module writes and checks in full).

    Raises:
        RecordError: (or ``error``) a missing, unknown or mistyped field, naming ``file`` and
            the field's path.
    """
    reader = _Reader(str(file), error, fix, ignore_unknown)
    value: RecordT = reader.record(cls, data, "")
    return value


def record_json(record: object) -> dict[str, Any]:  # JSON values
    """``record`` (a dataclass instance) as JSON-ready data: tuples become lists, mappings dicts.

    Raises:
        TypeError: ``record`` is not a dataclass instance.
    """
    if not dataclasses.is_dataclass(record) or isinstance(record, type):
        raise TypeError(f"record_json needs a dataclass instance, got {type(record).__name__}")
    data = _plain(dataclasses.asdict(record))
    if not isinstance(data, dict):  # asdict always returns a dict
        raise TypeError(f"record_json: {type(record).__name__} did not become a JSON object")
    return data


def _plain(value: object) -> object:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _describe(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{type(value).__name__} {text[:57]}..."


class _Reader:
    """One :func:`read_record` call: the file, the error class and the advice."""

    def __init__(self, file: str, error: type[RecordError], fix: str, ignore_unknown: bool) -> None:
        self.file = file
        self.error = error
        self.fix = fix
        self.ignore_unknown = ignore_unknown

    def fail(self, path: str, problem: str) -> RecordError:
        return self.error(self.file, path, f"{problem}; {self.fix}" if self.fix else problem)

    def record(self, cls: type[Any], data: object, path: str) -> Any:  # an instance of cls
        if not isinstance(data, dict):
            raise self.fail(path, f"expected a JSON object ({cls.__name__}), got {_describe(data)}")
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        unknown = [key for key in data if key not in fields]
        if unknown and not self.ignore_unknown:
            raise self.fail(
                _join(path, str(unknown[0])),
                f"unknown field (a {cls.__name__} has {', '.join(fields)})",
            )
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for name, spec in fields.items():
            if name in data:
                values[name] = self.value(hints[name], data[name], _join(path, name))
            elif spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
                raise self.fail(_join(path, name), "missing (required)")
        try:
            return cls(**values)
        except ValueError as err:  # the record's own __post_init__ check
            raise self.fail(path or cls.__name__, str(err)) from err

    def value(self, hint: Any, value: object, path: str) -> Any:  # the annotation's type
        if hint is Any or isinstance(hint, (typing.ForwardRef, str)):
            return self.json(value, path)
        if hint is None or hint is type(None):
            if value is not None:
                raise self.fail(path, f"expected null, got {_describe(value)}")
            return None
        if hint in _SCALARS:
            return self.scalar(hint, value, path)
        if dataclasses.is_dataclass(hint):
            return self.record(typing.cast(type, hint), value, path)
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if origin is typing.Union or origin is types.UnionType:
            return self.union(hint, args, value, path)
        if origin is typing.Literal:
            if value not in args or isinstance(value, bool) != any(isinstance(a, bool) for a in args):
                raise self.fail(path, f"expected one of {', '.join(map(repr, args))}, got {_describe(value)}")
            return value
        if origin in (tuple, list):
            return self.sequence(origin, args, value, path)
        if origin in (dict, Mapping):
            if not isinstance(value, dict):
                raise self.fail(path, f"expected a JSON object, got {_describe(value)}")
            return {key: self.value(args[1] if args else Any, item, _join(path, key))
                    for key, item in value.items()}
        raise TypeError(f"read_record: the annotation {hint!r} of {path} is not supported")

    def scalar(self, kind: type, value: object, path: str) -> object:
        ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not ok:
            raise self.fail(path, f"expected {_SCALARS[kind]}, got {_describe(value)}")
        return value

    def union(self, hint: Any, args: tuple[Any, ...], value: object, path: str) -> object:
        if value is None and type(None) in args:
            return None
        for member in args:
            if member is type(None):
                continue
            try:
                return self.value(member, value, path)
            except RecordError as err:
                if err.field != path:  # it matched this member's shape and failed inside it
                    raise
        names = " or ".join(_name(a) for a in args)
        raise self.fail(path, f"expected {names}, got {_describe(value)}")

    def sequence(self, origin: type, args: tuple[Any, ...], value: object, path: str) -> object:
        if not isinstance(value, list):
            raise self.fail(path, f"expected a JSON list, got {_describe(value)}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise self.fail(path, f"expected {len(args)} items, got {len(value)}")
            pairs = enumerate(zip(args, value, strict=True))
            return tuple(self.value(a, v, f"{path}[{i}]") for i, (a, v) in pairs)
        item = args[0] if args else Any
        items = [self.value(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items

    def json(self, value: object, path: str) -> object:
        if isinstance(value, (str, int, float, bool)) or value is None:
            return value
        if isinstance(value, list):
            return [self.json(v, f"{path}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return {k: self.json(v, _join(path, k)) for k, v in value.items()}
        raise self.fail(path, f"expected a JSON value, got {_describe(value)}")


def _name(hint: Any) -> str:  # an annotation
    if hint is type(None):
        return "null"
    if hint in _SCALARS:
        return _SCALARS[hint]
    if dataclasses.is_dataclass(hint):
        return f"an object ({typing.cast(type, hint).__name__})"
    origin = typing.get_origin(hint)
    if origin in (tuple, list):
        return "a list"
    if origin is not None:
        return "an object" if origin in (dict, Mapping) else str(hint)
    return str(hint)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


__all__ = ["RecordError", "read_record", "record_json"]
