"""The artefact contract: ``manifest.json``, written once by export, read by the runtime.

The runtime never reads a transformers or sentence-transformers config. Everything it
needs to reproduce the source model's embeddings is a field here. Every record is a frozen
dataclass read by :func:`embedrt.runtime.records.read_record`: a wrong field is a
:class:`ManifestFieldError` (an :class:`ArtefactError`) naming the file and the field
(``manifest.json: recipe.quantisation.layout: expected str, got 3``). Artefacts of schema
version 1 (embedrt before the typed manifest) are converted on load; one that cannot be
converted asks to be re-exported.

The parts live by idea: constants and part records in :mod:`.manifest_records`, value checks
in :mod:`.manifest_checks`, the version-1 conversion in :mod:`.manifest_v1`; every name is
exported here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ArtefactError, ArtefactNotFoundError
from .manifest_checks import check_manifest
from .manifest_records import (
    DENSE_ACTIVATIONS,
    MANIFEST_FILE,
    MODEL_FILE,
    POOLING_MODES,
    POOLING_SEPARATOR,
    READABLE_SCHEMA_VERSIONS,
    REEXPORT,
    SCHEMA_VERSION,
    TOKENIZER_FILE,
    AccuracySearchRecord,
    ArtefactRecipe,
    CandidateRecord,
    DenseStage,
    JSONValue,
    ManifestFieldError,
    ParityReport,
    QuantisationRecord,
    SelectionRecord,
    SourceRecord,
    pooling_modes,
)
from .manifest_v1 import upgrade_v1
from .records import read_record, record_json


@dataclass(frozen=True)
class Manifest:
    """What an artefact directory holds and how to turn its graph's output into embeddings.

    Attributes:
        schema_version: version of this layout; the runtime refuses versions it does not know.
        model_name: short name of the source model, e.g. ``all-MiniLM-L6-v2``.
        source: where the model came from.
        dim: embedding dimension.
        pooling: one of :data:`POOLING_MODES` (``mean`` is attention-mask weighted), or
            several joined by ``+`` (``cls+mean``): their vectors concatenated in that order.
        normalize: whether embeddings are L2-normalised (after the ``dense`` stages).
        max_seq_length: token limit the source model applies (sentence-transformers'
            ``max_seq_length``); longer inputs are truncated or refused.
        inputs: the ONNX graph's input names, in graph order.
        output: the graph output holding per-token hidden states.
        pad_token_id: id used to pad batches (masked out, so its value never matters).
        variant: ``fp32``, ``int8``, ...; ``recipe`` says how it was made.
        files: sha256 of each file in the artefact, by file name.
        versions: library versions used at export.
        parity: agreement with the torch reference measured at export; None when export
            did not check.
        prompts: the model's prompts by name (sentence-transformers'
            ``config_sentence_transformers.json``), prepended to texts as it does.
        default_prompt_name: the prompt applied when the caller names none; None: no prompt.
        dense: Dense stages applied after pooling, in order (then normalisation); ``dim`` is
            the last one's ``out_features``.
        selection: set when ``embedrt export --variant auto`` chose this artefact among
            candidates measured on the exporting machine (absent from other manifests).
        task: ``embed`` (an embedding model, the default) or ``rerank`` (a cross-encoder:
            ``output`` holds logits; ``embedrt.runtime.reranker`` reads it).
        rerank: a cross-encoder's scoring and its parity figures (``task`` ``rerank`` only;
            validated by ``embedrt.runtime.reranker.RerankSpec``).
    """

    model_name: str
    source: SourceRecord
    dim: int
    pooling: str
    normalize: bool
    max_seq_length: int
    inputs: tuple[str, ...]
    output: str
    pad_token_id: int
    variant: str
    recipe: ArtefactRecipe
    files: Mapping[str, str]
    versions: Mapping[str, str] = field(default_factory=dict)
    parity: ParityReport | None = None
    created_at: str = ""
    prompts: Mapping[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    dense: tuple[DenseStage, ...] = ()
    selection: SelectionRecord | None = None
    task: str = "embed"
    rerank: Mapping[str, JSONValue] | None = None
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, JSONValue]:
        """The manifest as plain JSON-ready data (no ``selection`` key when there is none)."""
        data = record_json(self)
        if self.selection is None:
            del data["selection"]
        if self.task == "embed" and self.rerank is None:  # embedding manifests stay as they were
            del data["task"], data["rerank"]
        return data

    def save(self, directory: Path) -> Path:
        """Write ``manifest.json`` into ``directory`` and return its path."""
        path = Path(directory) / MANIFEST_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n")
        return path

    @classmethod
    def from_dict(cls, data: object, origin: str = "manifest") -> Manifest:
        """Validate ``data`` and build a manifest (schema version 1 is converted first).

        Raises:
            ArtefactError: unknown schema version, or a version-1 manifest that cannot be converted.
            ManifestFieldError: a missing, unknown or mistyped field, or a value out of range
                (the message names ``origin`` and the field).
        """
        if not isinstance(data, dict):
            raise ManifestFieldError(origin, "", f"expected a JSON object, got {type(data).__name__}")
        version = data.get("schema_version")
        if version not in READABLE_SCHEMA_VERSIONS or isinstance(version, bool):
            raise ArtefactError(
                f"{origin}: schema_version {version!r} is not supported (this embedrt reads "
                f"versions {', '.join(map(str, READABLE_SCHEMA_VERSIONS))}); {REEXPORT}"
            )
        if version == 1:
            where = f"{origin} (schema_version 1)"
            try:  # keys version 1 had and this layout dropped are left behind
                return cls._read(upgrade_v1(data), where, ignore_unknown=True)
            except (ArtefactError, KeyError, TypeError, AttributeError) as err:
                raise ArtefactError(
                    f"{origin}: written by an older embedrt (schema_version 1) and cannot be read "
                    f"({err}); {REEXPORT}"
                ) from err
        return cls._read(data, origin)

    @classmethod
    def _read(cls, data: Mapping[str, object], origin: str, ignore_unknown: bool = False) -> Manifest:
        manifest = read_record(
            cls, data, origin, error=ManifestFieldError, fix=REEXPORT, ignore_unknown=ignore_unknown
        )
        check_manifest(manifest, origin)
        return manifest

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


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


__all__ = [
    "DENSE_ACTIVATIONS",
    "MANIFEST_FILE",
    "MODEL_FILE",
    "POOLING_MODES",
    "POOLING_SEPARATOR",
    "READABLE_SCHEMA_VERSIONS",
    "SCHEMA_VERSION",
    "TOKENIZER_FILE",
    "AccuracySearchRecord",
    "ArtefactRecipe",
    "CandidateRecord",
    "DenseStage",
    "JSONValue",
    "Manifest",
    "ManifestFieldError",
    "ParityReport",
    "QuantisationRecord",
    "SelectionRecord",
    "SourceRecord",
    "pooling_modes",
    "sha256_file",
]
