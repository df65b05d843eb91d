"""The artefact contract: ``manifest.json``, written once by export, read by the runtime.

The runtime never reads a transformers or sentence-transformers config. Everything it
needs to reproduce the source model's embeddings is a field here. Every record is a frozen
dataclass, validated on load: a wrong field is an :class:`ArtefactError` naming the file and
the field (``recipe.quantisation.layout``). Artefacts of schema version 1 (embedrt before
the typed manifest) are converted on load; one that cannot be converted asks to be re-exported.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from .backends import ONNXRUNTIME
from .errors import ArtefactError, ArtefactNotFoundError

if TYPE_CHECKING:
    from collections.abc import Callable

# 3: prompts and default_prompt_name (a version-2 manifest has neither: no prompts).
# 4: Dense stages after pooling (``dense``), pooling modes beyond mean/cls/max and their
#    combinations ("cls+mean"); a version-3 manifest has no Dense stage and one of those three.
SCHEMA_VERSION = 4
READABLE_SCHEMA_VERSIONS = (1, 2, 3, 4)
MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
# The one list of pooling modes (sentence-transformers' names): export's source reading, the
# manifest's check and the runtime's pooling use it. A manifest's ``pooling`` is one mode or
# several joined by POOLING_SEPARATOR, in the order their vectors are concatenated.
POOLING_MODES = ("mean", "cls", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
POOLING_SEPARATOR = "+"
# Activations a Dense stage may apply (runtime/stages.py implements each).
DENSE_ACTIVATIONS = ("identity", "tanh", "relu", "sigmoid", "gelu")

JSONValue: TypeAlias = "str | int | float | bool | None | list[JSONValue] | dict[str, JSONValue]"
_REEXPORT = "re-export the model with this embedrt version ('embedrt export')"


@dataclass(frozen=True)
class SourceRecord:
    """Where the exported weights came from.

    Attributes:
        path: the sentence-transformers folder export read (the torch reference for parity).
        weights_file: the weights file's name in it.
        weights_sha256: that file's sha256.
    """

    path: str
    weights_file: str
    weights_sha256: str

    @classmethod
    def from_dict(cls, data: object, where: str) -> SourceRecord:
        """Validate ``data`` (``where`` names it in errors).

        Raises:
            ArtefactError: a missing field or a field of the wrong type.
        """
        d = _object(data, where)
        return cls(_str(d, "path", where), _str(d, "weights_file", where), _str(d, "weights_sha256", where))


@dataclass(frozen=True)
class ParityReport:
    """Agreement between two sets of embeddings of the same sentences (export's parity gate).

    Attributes:
        sentences: how many sentences were compared.
        min_cosine / mean_cosine: per-sentence cosine between reference and candidate.
        max_abs_diff: largest absolute difference of any element.
        tolerance_min_cosine / tolerance_max_abs_diff: the limits checked.
        passed: both limits hold.
    """

    sentences: int
    min_cosine: float
    mean_cosine: float
    max_abs_diff: float
    tolerance_min_cosine: float
    tolerance_max_abs_diff: float
    passed: bool

    def to_dict(self) -> dict[str, JSONValue]:
        """The report as JSON-ready data."""
        return dataclasses.asdict(self)

    def summary(self) -> str:
        """One line: the figures and the limits."""
        return (
            f"{self.sentences} sentences: min cosine {self.min_cosine:.7f} "
            f"(limit {self.tolerance_min_cosine}), mean {self.mean_cosine:.7f}, "
            f"max |diff| {self.max_abs_diff:.2e} (limit {self.tolerance_max_abs_diff:.0e})"
        )

    @classmethod
    def from_dict(cls, data: object, where: str) -> ParityReport:
        """Validate ``data`` (``where`` names it in errors).

        Raises:
            ArtefactError: a missing field or a field of the wrong type.
        """
        d = _object(data, where)
        return cls(
            sentences=_int(d, "sentences", where),
            min_cosine=_float(d, "min_cosine", where),
            mean_cosine=_float(d, "mean_cosine", where),
            max_abs_diff=_float(d, "max_abs_diff", where),
            tolerance_min_cosine=_float(d, "tolerance_min_cosine", where),
            tolerance_max_abs_diff=_float(d, "tolerance_max_abs_diff", where),
            passed=_bool(d, "passed", where),
        )


@dataclass(frozen=True)
class AccuracySearchRecord:
    """What an accuracy-aware export (``min_cosine``) searched for and reached."""

    min_cosine_target: float
    calibration_min_cosine: float
    trials: int

    @classmethod
    def from_dict(cls, data: object, where: str) -> AccuracySearchRecord:
        """Validate ``data`` (``where`` names it in errors).

        Raises:
            ArtefactError: a missing field or a field of the wrong type.
        """
        d = _object(data, where)
        return cls(
            _float(d, "min_cosine_target", where),
            _float(d, "calibration_min_cosine", where),
            _int(d, "trials", where),
        )


@dataclass(frozen=True)
class QuantisationRecord:
    """How a quantised variant was built, and what it holds.

    Attributes:
        target_isa: the CPU the recipe targets (``avx512_vnni``, ``avx2``, ``arm64``...).
        layout: ``blocks`` or ``per-token`` (the graph layout actually written).
        matmul_op: the int8/low-bit kernel: ``MatMulIntegerToFloat`` or ``MatMulNBits``.
        weight_type: ``s8`` or ``u8`` (u8 x u8 kernels: no 16-bit saturation without VNNI).
        activation_granularity: how activations are scaled (static, per token...).
        quantised_matmuls: MatMuls of the exported graph quantised.
        quantised_matmul_nodes: int8 kernels they became (MatMuls sharing an input merge).
        quantised_gathers: embedding tables quantised (0 or 1).
        fp32_matmuls: eligible MatMuls left float, by the exported graph's node names.
        folded_shape_tensors: shape tensors folded into constants.
        graph_nodes: nodes in the written graph.
        ort_ops: onnxruntime contrib ops the graph uses.
        size_bytes: the model file's size.
        settings: every setting of the quantisation recipe, by name (informational: the
            fields of ``embedrt.export.quantize.Recipe``, e.g. ``smoothing_alpha``).
        calibration_sentences: how many calibration sentences set static ranges and smoothing.
        built_on: the exporting machine (``machine``) and the CPU targets it supports
            (``cpu_features``; informational).
        accuracy_search: set when export searched for a minimum cosine.
    """

    target_isa: str
    layout: str
    matmul_op: str
    weight_type: str
    activation_granularity: str
    quantised_matmuls: int
    quantised_matmul_nodes: int
    quantised_gathers: int
    fp32_matmuls: tuple[str, ...]
    folded_shape_tensors: int
    graph_nodes: int
    ort_ops: tuple[str, ...]
    size_bytes: int
    settings: Mapping[str, JSONValue]
    calibration_sentences: int = 0
    built_on: Mapping[str, JSONValue] = field(default_factory=dict)
    accuracy_search: AccuracySearchRecord | None = None

    @classmethod
    def from_dict(cls, data: object, where: str) -> QuantisationRecord:
        """Validate ``data`` (``where`` names it in errors).

        Raises:
            ArtefactError: a missing field or a field of the wrong type.
        """
        d = _object(data, where)
        search = d.get("accuracy_search")
        return cls(
            target_isa=_str(d, "target_isa", where),
            layout=_str(d, "layout", where),
            matmul_op=_str(d, "matmul_op", where),
            weight_type=_str(d, "weight_type", where),
            activation_granularity=_str(d, "activation_granularity", where),
            quantised_matmuls=_int(d, "quantised_matmuls", where),
            quantised_matmul_nodes=_int(d, "quantised_matmul_nodes", where),
            quantised_gathers=_int(d, "quantised_gathers", where),
            fp32_matmuls=_strings(d, "fp32_matmuls", where),
            folded_shape_tensors=_int(d, "folded_shape_tensors", where),
            graph_nodes=_int(d, "graph_nodes", where),
            ort_ops=_strings(d, "ort_ops", where),
            size_bytes=_int(d, "size_bytes", where),
            settings=_object(d.get("settings"), _at(where, "settings"), required=True),
            calibration_sentences=_int(d, "calibration_sentences", where, default=0),
            built_on=_object(d.get("built_on", {}), _at(where, "built_on")),
            accuracy_search=(
                None
                if search is None
                else AccuracySearchRecord.from_dict(search, _at(where, "accuracy_search"))
            ),
        )


@dataclass(frozen=True)
class ArtefactRecipe:
    """How the artefact's graph was made from the exported one.

    Attributes:
        method: the tool and settings, in words.
        dtype: the compute type of a float variant (``float32``, or ``bfloat16`` for the
            ``bf16`` variant); None for quantised ones.
        requires_cpu_flags: CPU flags the graph's kernels need; the runtime warns at load
            when this CPU lacks one.
        fused_ops: onnxruntime fusions applied, with counts (``fp32-optimised``).
        quantisation: set for quantised variants.
        backend: the engine that runs the graph (``embedrt.runtime.backends``):
            ``onnxruntime`` (the default, and what a manifest without the field means) or
            ``openvino`` (the ``bf16`` variant; needs the ``[openvino]`` extra).
    """

    method: str
    dtype: str | None = None
    requires_cpu_flags: tuple[str, ...] = ()
    fused_ops: Mapping[str, int] = field(default_factory=dict)
    quantisation: QuantisationRecord | None = None
    backend: str = ONNXRUNTIME

    def to_dict(self) -> dict[str, JSONValue]:
        """The recipe as JSON-ready data."""
        return _jsonable(self)

    @classmethod
    def from_dict(cls, data: object, where: str) -> ArtefactRecipe:
        """Validate ``data`` (``where`` names it in errors).

        Raises:
            ArtefactError: a missing field or a field of the wrong type.
        """
        d = _object(data, where)
        fused = _object(d.get("fused_ops", {}), _at(where, "fused_ops"))
        quantisation = d.get("quantisation")
        dtype = d.get("dtype")
        if dtype is not None and not isinstance(dtype, str):
            raise _wrong_type(_at(where, "dtype"), "a string or null", dtype)
        return cls(
            method=_str(d, "method", where),
            dtype=dtype,
            requires_cpu_flags=_strings(d, "requires_cpu_flags", where, default=()),
            fused_ops={k: _int(fused, k, _at(where, "fused_ops")) for k in fused},
            quantisation=(
                None
                if quantisation is None
                else QuantisationRecord.from_dict(quantisation, _at(where, "quantisation"))
            ),
            backend=_str(d, "backend", where, default=ONNXRUNTIME),
        )


@dataclass(frozen=True)
class DenseStage:
    """A sentence-transformers ``Dense`` stage, applied to the pooled vector.

    ``activation(vector @ weight.T + bias)``, weights stored in the artefact (``file``, an
    ``.npz`` holding ``weight`` of shape ``(out_features, in_features)`` and, with ``bias``,
    ``bias`` of shape ``(out_features,)``); the file's sha256 is in the manifest's ``files``.

    Attributes:
        file: the weights file's name in the artefact directory.
        in_features / out_features: input and output dimensions.
        bias: whether the layer adds a bias.
        activation: one of :data:`DENSE_ACTIVATIONS`.
    """

    file: str
    in_features: int
    out_features: int
    bias: bool
    activation: str

    @classmethod
    def from_dict(cls, data: object, where: str) -> DenseStage:
        """Validate ``data`` (``where`` names it in errors).

        Raises:
            ArtefactError: a missing field, a field of the wrong type or an unknown activation.
        """
        d = _object(data, where)
        stage = cls(
            file=_str(d, "file", where),
            in_features=_int(d, "in_features", where),
            out_features=_int(d, "out_features", where),
            bias=_bool(d, "bias", where),
            activation=_str(d, "activation", where),
        )
        if stage.activation not in DENSE_ACTIVATIONS:
            raise ArtefactError(
                f"{_at(where, 'activation')}: {stage.activation!r} is not one of "
                f"{', '.join(DENSE_ACTIVATIONS)}; {_REEXPORT}"
            )
        if min(stage.in_features, stage.out_features) <= 0:
            raise ArtefactError(f"{where}: in_features and out_features must be positive")
        return stage


@dataclass(frozen=True)
class CandidateRecord:
    """One artefact ``embedrt export --variant auto`` built and measured on the exporting machine.

    Attributes:
        name: the candidate's label (``int8``, ``int8/avx2`` for another CPU target's recipe).
        variant: the export variant it was built as.
        target_isa: the CPU target of a quantised recipe; None for float variants.
        backend: the engine that ran it (``embedrt.runtime.backends``).
        passed: it met the fidelity gate (and was built and measured).
        reason: why it did not pass; empty when it passed.
        min_cosine / mean_cosine: per-text cosine to the torch reference on held-out texts
            (None when it could not be built).
        invariance: min cosine between a text embedded alone and inside mixed batches.
        texts_per_s: throughput at the selection's batch size, by length bucket.
        speedup: geometric mean over the buckets of its throughput / fp32's.
    """

    name: str
    variant: str
    target_isa: str | None
    backend: str
    passed: bool
    reason: str
    min_cosine: float | None = None
    mean_cosine: float | None = None
    invariance: float | None = None
    texts_per_s: Mapping[str, float] = field(default_factory=dict)
    speedup: float | None = None

    @classmethod
    def from_dict(cls, data: object, where: str) -> CandidateRecord:
        """Validate ``data`` (``where`` names it in errors).

        Raises:
            ArtefactError: a missing field or a field of the wrong type.
        """
        d = _object(data, where)
        speeds = _object(d.get("texts_per_s", {}), _at(where, "texts_per_s"))
        return cls(
            name=_str(d, "name", where),
            variant=_str(d, "variant", where),
            target_isa=_optional(d, "target_isa", where, _str),
            backend=_str(d, "backend", where),
            passed=_bool(d, "passed", where),
            reason=_str(d, "reason", where, default=""),
            min_cosine=_optional(d, "min_cosine", where, _float),
            mean_cosine=_optional(d, "mean_cosine", where, _float),
            invariance=_optional(d, "invariance", where, _float),
            texts_per_s={k: _float(speeds, k, _at(where, "texts_per_s")) for k in speeds},
            speedup=_optional(d, "speedup", where, _float),
        )


@dataclass(frozen=True)
class SelectionRecord:
    """Why this artefact was chosen: ``embedrt export --variant auto``'s measurements.

    Attributes:
        chosen: the name of the candidate written as this artefact.
        reason: the choice in words (the command's one line).
        cpu_model: the exporting machine's CPU model name.
        cpu_flags: the instruction-set flags that decide the kernels, those this CPU has.
        isa: the int8 target detected for this CPU (``embedrt.export.quantize.detect_isa``).
        threads / batch_size / repeats: how speed was measured (median of ``repeats``).
        gate_min_cosine / gate_mean_cosine / gate_invariance: the fidelity gate.
        fidelity_texts: how many held-out texts the cosines are over.
        bucket_texts: texts per length bucket in the speed measurement.
        seconds: wall time of the whole selection.
        candidates: every candidate, in the order built, with its figures.
    """

    chosen: str
    reason: str
    cpu_model: str
    cpu_flags: tuple[str, ...]
    isa: str
    threads: int
    batch_size: int
    repeats: int
    gate_min_cosine: float
    gate_mean_cosine: float
    gate_invariance: float
    fidelity_texts: int
    bucket_texts: Mapping[str, int]
    seconds: float
    candidates: tuple[CandidateRecord, ...]

    @classmethod
    def from_dict(cls, data: object, where: str) -> SelectionRecord:
        """Validate ``data`` (``where`` names it in errors).

        Raises:
            ArtefactError: a missing or mistyped field, or ``chosen`` naming no candidate.
        """
        d = _object(data, where)
        buckets = _object(d.get("bucket_texts", {}), _at(where, "bucket_texts"))
        record = cls(
            chosen=_str(d, "chosen", where),
            reason=_str(d, "reason", where),
            cpu_model=_str(d, "cpu_model", where),
            cpu_flags=_strings(d, "cpu_flags", where),
            isa=_str(d, "isa", where),
            threads=_int(d, "threads", where),
            batch_size=_int(d, "batch_size", where),
            repeats=_int(d, "repeats", where),
            gate_min_cosine=_float(d, "gate_min_cosine", where),
            gate_mean_cosine=_float(d, "gate_mean_cosine", where),
            gate_invariance=_float(d, "gate_invariance", where),
            fidelity_texts=_int(d, "fidelity_texts", where),
            bucket_texts={k: _int(buckets, k, _at(where, "bucket_texts")) for k in buckets},
            seconds=_float(d, "seconds", where),
            candidates=tuple(
                CandidateRecord.from_dict(c, _at(where, f"candidates[{i}]"))
                for i, c in enumerate(_list(d, "candidates", where))
            ),
        )
        names = [c.name for c in record.candidates]
        if record.chosen not in names:
            raise ArtefactError(
                f"{_at(where, 'chosen')}: {record.chosen!r} is not one of its candidates "
                f"({', '.join(map(repr, names)) or 'none'}); {_REEXPORT}"
            )
        return record


def pooling_modes(pooling: str) -> tuple[str, ...]:
    """The modes of a manifest's ``pooling`` (``"cls+mean"`` -> ``("cls", "mean")``), in order.

    Raises:
        ValueError: a mode is not one of :data:`POOLING_MODES`.
    """
    modes = tuple(pooling.split(POOLING_SEPARATOR))
    unknown = [mode for mode in modes if mode not in POOLING_MODES]
    if unknown:
        within = f" (in {pooling!r})" if len(modes) > 1 else ""
        raise ValueError(
            f"{unknown[0]!r}{within} is not one of {', '.join(POOLING_MODES)} "
            f"(or several joined by {POOLING_SEPARATOR!r})"
        )
    return modes


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
        data = _jsonable(self)
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
            ArtefactError: unknown schema version, a missing field or a field of the wrong
                type (the message names ``origin`` and the field).
        """
        d = _object(data, origin, what="a JSON object")
        version = d.get("schema_version")
        if version not in READABLE_SCHEMA_VERSIONS or isinstance(version, bool):
            raise ArtefactError(
                f"{origin}: schema_version {version!r} is not supported (this embedrt reads "
                f"versions {', '.join(map(str, READABLE_SCHEMA_VERSIONS))}); {_REEXPORT}"
            )
        if version == 1:
            try:
                return cls._from_current(_upgrade_v1(d), f"{origin} (schema_version 1)")
            except (ArtefactError, KeyError, TypeError, AttributeError) as err:
                raise ArtefactError(
                    f"{origin}: written by an older embedrt (schema_version 1) and cannot be read "
                    f"({err}); {_REEXPORT}"
                ) from err
        return cls._from_current(d, origin)

    @classmethod
    def _from_current(cls, d: Mapping[str, object], origin: str) -> Manifest:
        files = _object(d.get("files"), _at(origin, "files"), required=True)
        versions = _object(d.get("versions", {}), _at(origin, "versions"))
        parity = d.get("parity")
        selection = d.get("selection")
        manifest = cls(
            model_name=_str(d, "model_name", origin),
            source=SourceRecord.from_dict(_required(d, "source", origin), _at(origin, "source")),
            dim=_int(d, "dim", origin),
            pooling=_str(d, "pooling", origin),
            normalize=_bool(d, "normalize", origin),
            max_seq_length=_int(d, "max_seq_length", origin),
            inputs=_strings(d, "inputs", origin),
            output=_str(d, "output", origin),
            pad_token_id=_int(d, "pad_token_id", origin),
            variant=_str(d, "variant", origin),
            recipe=ArtefactRecipe.from_dict(_required(d, "recipe", origin), _at(origin, "recipe")),
            files={k: _str(files, k, _at(origin, "files")) for k in files},
            versions={k: _str(versions, k, _at(origin, "versions")) for k in versions},
            parity=None if parity is None else ParityReport.from_dict(parity, _at(origin, "parity")),
            created_at=_str(d, "created_at", origin, default=""),
            **_prompt_fields(d, origin),
            dense=tuple(
                DenseStage.from_dict(stage, _at(origin, f"dense[{i}]"))
                for i, stage in enumerate(_list(d, "dense", origin))
            ),
            selection=(
                None if selection is None
                else SelectionRecord.from_dict(selection, _at(origin, "selection"))
            ),
            task=_str(d, "task", origin, default="embed"),
            rerank=None if d.get("rerank") is None else _object(d.get("rerank"), _at(origin, "rerank")),
        )
        _check_values(manifest, origin)
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


# --- validation -------------------------------------------------------------------------------

def _at(where: str, name: str) -> str:
    """``where`` extended by field ``name``: ``file: field 'recipe'``, then ``...'recipe.method'``."""
    if where.endswith("'"):
        return f"{where[:-1]}.{name}'"
    return f"{where}: field {name!r}"


def _wrong_type(where: str, expected: str, value: object) -> ArtefactError:
    return ArtefactError(f"{where} should be {expected}, got {type(value).__name__}")


def _object(
    value: object, where: str, what: str = "an object", required: bool = False
) -> dict[str, JSONValue]:
    if value is None and required:
        raise ArtefactError(f"{where} is missing (required)")
    if not isinstance(value, dict):
        if where.endswith("'"):  # a field, as _at names it
            raise _wrong_type(where, what, value)
        raise ArtefactError(f"{where}: expected {what}, got {type(value).__name__}")
    return value


def _required(d: Mapping[str, object], name: str, where: str) -> object:
    if name not in d:
        raise ArtefactError(f"{_at(where, name)} is missing (required)")
    return d[name]


def _typed(
    d: Mapping[str, object],
    name: str,
    where: str,
    check: Callable[[object], bool],
    expected: str,
    default: object = dataclasses.MISSING,
) -> Any:  # the caller's declared return type is what ``check`` verified
    if name not in d:
        if default is dataclasses.MISSING:
            raise ArtefactError(f"{_at(where, name)} is missing (required)")
        return default
    value = d[name]
    if not check(value):
        raise _wrong_type(_at(where, name), expected, value)
    return value


def _str(d: Mapping[str, object], name: str, where: str, default: str | None = None) -> str:
    missing = dataclasses.MISSING if default is None else default
    value: str = _typed(d, name, where, lambda v: isinstance(v, str), "a string", missing)
    return value


def _int(d: Mapping[str, object], name: str, where: str, default: int | None = None) -> int:
    missing = dataclasses.MISSING if default is None else default
    value: int = _typed(
        d, name, where, lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer", missing
    )
    return value


def _float(d: Mapping[str, object], name: str, where: str) -> float:
    value = _typed(
        d, name, where, lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"
    )
    return float(value)


def _bool(d: Mapping[str, object], name: str, where: str) -> bool:
    value: bool = _typed(d, name, where, lambda v: isinstance(v, bool), "true or false")
    return value


def _strings(
    d: Mapping[str, object], name: str, where: str, default: tuple[str, ...] | None = None
) -> tuple[str, ...]:
    missing = dataclasses.MISSING if default is None else list(default)
    value = _typed(
        d,
        name,
        where,
        lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
        "a list of strings",
        missing,
    )
    return tuple(value)


def _optional(
    d: Mapping[str, object], name: str, where: str, read: Callable[[Mapping[str, object], str, str], Any]
) -> Any:  # what ``read`` returns, or None when the field is absent or null
    return None if d.get(name) is None else read(d, name, where)


def _list(d: Mapping[str, object], name: str, where: str) -> list[JSONValue]:
    """An optional list field (absent: empty)."""
    value = d.get(name, [])
    if not isinstance(value, list):
        raise _wrong_type(_at(where, name), "a list", value)
    return value


def _check_values(manifest: Manifest, origin: str) -> None:
    try:
        pooling_modes(manifest.pooling)
    except ValueError as err:
        raise ArtefactError(f"{_at(origin, 'pooling')}: {err}") from err
    _check_dense(manifest, origin)
    for name in ("dim", "max_seq_length"):
        value = getattr(manifest, name)
        if value <= 0:
            raise ArtefactError(f"{_at(origin, name)} must be positive, got {value}")
    if not manifest.inputs:
        raise ArtefactError(f"{_at(origin, 'inputs')} must be a non-empty list of names")


def _check_dense(manifest: Manifest, origin: str) -> None:
    """Each Dense stage's file is checksummed, and the stages chain into ``dim``."""
    for i, stage in enumerate(manifest.dense):
        where = _at(origin, f"dense[{i}]")
        if stage.file not in manifest.files:
            raise ArtefactError(f"{where}: its file {stage.file!r} has no sha256 in 'files'; {_REEXPORT}")
        following = manifest.dense[i + 1].in_features if i + 1 < len(manifest.dense) else manifest.dim
        if stage.out_features != following:
            raise ArtefactError(
                f"{where}: out_features {stage.out_features} does not match what follows it "
                f"({following}: the next stage's in_features, or dim); {_REEXPORT}"
            )


def _prompt_fields(d: Mapping[str, object], origin: str) -> dict[str, Any]:
    """``prompts`` and ``default_prompt_name`` (absent before schema version 3: no prompts)."""
    prompts = _object(d.get("prompts", {}), _at(origin, "prompts"))
    checked = {name: _str(prompts, name, _at(origin, "prompts")) for name in prompts}
    default = d.get("default_prompt_name")
    if default is not None and not isinstance(default, str):
        raise _wrong_type(_at(origin, "default_prompt_name"), "a string or null", default)
    if default is not None and default not in checked:
        raise ArtefactError(
            f"{_at(origin, 'default_prompt_name')}: {default!r} is not one of the manifest's "
            f"prompts ({', '.join(map(repr, checked)) or 'none'})"
        )
    return {"prompts": checked, "default_prompt_name": default}


def _jsonable(record: object) -> dict[str, JSONValue]:
    """A record as JSON-ready data: tuples become lists, mappings plain dicts."""
    data = dataclasses.asdict(record)  # type: ignore[call-overload]  # always a dataclass here

    def plain(value: JSONValue | tuple[JSONValue, ...]) -> JSONValue:
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return {k: plain(v) for k, v in data.items()}


def _upgrade_v1(d: Mapping[str, Any]) -> dict[str, Any]:  # v1 JSON: checked after conversion
    """A schema-version-1 manifest in the current layout.

    Version 1 kept ``parity`` as ``{}`` when unchecked and a quantised recipe as
    ``{"method", "recipe": {settings}, <counts>, "requires_cpu_flags", "built_on", ...}``.
    """
    data = dict(d)
    data["schema_version"] = SCHEMA_VERSION
    if data.get("parity") == {}:
        data["parity"] = None
    recipe = dict(data.get("recipe", {}))
    settings = recipe.pop("recipe", None)
    if settings is not None:
        quantisation = {
            key: settings[key]
            for key in ("target_isa", "layout", "matmul_op", "weight_type", "activation_granularity")
        }
        for key in (
            "quantised_matmuls",
            "quantised_matmul_nodes",
            "quantised_gathers",
            "fp32_matmuls",
            "folded_shape_tensors",
            "graph_nodes",
            "ort_ops",
            "size_bytes",
            "calibration_sentences",
            "built_on",
            "accuracy_search",
        ):
            if key in recipe:
                quantisation[key] = recipe.pop(key)
        quantisation["settings"] = settings
        recipe = {
            "method": recipe["method"],
            "requires_cpu_flags": recipe.get("requires_cpu_flags", []),
            "quantisation": quantisation,
        }
    data["recipe"] = recipe
    return data
