"""The artefact contract: ``manifest.json``, written once by export, read by the runtime.

The runtime never reads a transformers or sentence-transformers config. Everything it
needs to reproduce the source model's embeddings is a field here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ArtefactError, ArtefactNotFoundError

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
POOLING_MODES = ("mean", "cls", "max")


@dataclass(frozen=True)
class Manifest:
    """What an artefact directory holds and how to turn its graph's output into embeddings.

    Attributes:
        schema_version: version of this layout; the runtime refuses versions it does not know.
        model_name: short name of the source model, e.g. ``all-MiniLM-L6-v2``.
        source: where the model came from: ``path``, ``weights_file``, ``weights_sha256``.
        dim: embedding dimension.
        pooling: ``mean`` (attention-mask weighted), ``cls`` or ``max``.
        normalize: whether embeddings are L2-normalised.
        max_seq_length: token limit the source model applies (sentence-transformers'
            ``max_seq_length``); longer inputs are truncated or refused.
        inputs: the ONNX graph's input names, in graph order.
        output: the graph output holding per-token hidden states.
        pad_token_id: id used to pad batches (masked out, so its value never matters).
        variant: ``fp32``, ``int8``, ...; ``recipe`` says how it was made.
        files: sha256 of each file in the artefact, by file name.
        versions: library versions used at export.
        parity: agreement with the torch reference measured at export.
    """

    model_name: str
    source: Mapping[str, Any]
    dim: int
    pooling: str
    normalize: bool
    max_seq_length: int
    inputs: tuple[str, ...]
    output: str
    pad_token_id: int
    variant: str
    recipe: Mapping[str, Any]
    files: Mapping[str, str]
    versions: Mapping[str, str] = field(default_factory=dict)
    parity: Mapping[str, Any] = field(default_factory=dict)
    created_at: str = ""
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The manifest as plain JSON-ready data."""
        data = dataclasses.asdict(self)
        data["inputs"] = list(self.inputs)
        return data

    def save(self, directory: Path) -> Path:
        """Write ``manifest.json`` into ``directory`` and return its path."""
        path = Path(directory) / MANIFEST_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n")
        return path

    @classmethod
    def from_dict(cls, data: Any, origin: str = "manifest") -> Manifest:
        """Validate ``data`` and build a manifest.

        Raises:
            ArtefactError: unknown schema version, a missing field or a field of the wrong type.
        """
        if not isinstance(data, dict):
            raise ArtefactError(f"{origin}: expected a JSON object, got {type(data).__name__}")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ArtefactError(
                f"{origin}: schema_version {version!r} is not supported (this embedrt reads "
                f"version {SCHEMA_VERSION}); re-export the model with this embedrt version"
            )
        values: dict[str, Any] = {}
        for spec in dataclasses.fields(cls):
            if spec.name not in data:
                if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
                    raise ArtefactError(f"{origin}: required field {spec.name!r} is missing")
                continue
            values[spec.name] = data[spec.name]
        _check_types(values, origin)
        values["inputs"] = tuple(values["inputs"])
        return cls(**values)

    @classmethod
    def load(cls, directory: Path) -> Manifest:
        """Read and validate ``directory/manifest.json``.

        Raises:
            ArtefactNotFoundError: the directory or its manifest does not exist.
            ArtefactError: the manifest is not valid JSON or not a valid manifest.
        """
        path = Path(directory) / MANIFEST_FILE
        if not Path(directory).is_dir():
            raise ArtefactNotFoundError(f"{directory}: no such artefact directory")
        if not path.is_file():
            raise ArtefactNotFoundError(
                f"{path}: manifest.json is missing; is this a directory written by 'embedrt export'?"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ArtefactError(f"{path}: not valid JSON ({err})") from err
        return cls.from_dict(data, origin=str(path))


_TYPES: dict[str, type | tuple[type, ...]] = {
    "model_name": str,
    "source": dict,
    "dim": int,
    "pooling": str,
    "normalize": bool,
    "max_seq_length": int,
    "inputs": list,
    "output": str,
    "pad_token_id": int,
    "variant": str,
    "recipe": dict,
    "files": dict,
    "versions": dict,
    "parity": dict,
    "created_at": str,
}


def _check_types(values: Mapping[str, Any], origin: str) -> None:
    for name, value in values.items():
        expected = _TYPES.get(name)
        if expected is None:
            continue
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ArtefactError(
                f"{origin}: field {name!r} should be {_type_name(expected)}, "
                f"got {type(value).__name__}"
            )
    if values["pooling"] not in POOLING_MODES:
        raise ArtefactError(
            f"{origin}: pooling {values['pooling']!r} is not one of {', '.join(POOLING_MODES)}"
        )
    for name in ("dim", "max_seq_length"):
        if values[name] <= 0:
            raise ArtefactError(f"{origin}: field {name!r} must be positive, got {values[name]}")
    if not values["inputs"] or not all(isinstance(n, str) for n in values["inputs"]):
        raise ArtefactError(f"{origin}: field 'inputs' must be a non-empty list of names")


def _type_name(expected: type | tuple[type, ...]) -> str:
    if isinstance(expected, tuple):
        return " or ".join(t.__name__ for t in expected)
    return {"dict": "an object", "list": "a list", "str": "a string"}.get(
        expected.__name__, f"a {expected.__name__}"
    )


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()
