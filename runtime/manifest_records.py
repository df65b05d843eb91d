"""The artefact contract's constants and its part records (``manifest.json``'s sub-objects).

Every record is a frozen dataclass read by :func:`embedrt.runtime.records.read_record`
(its fields are the dataclass's own); :mod:`embedrt.runtime.manifest` holds the
:class:`~embedrt.runtime.manifest.Manifest` that gathers them, :mod:`.manifest_checks` the
checks of values across fields, :mod:`.manifest_v1` the conversion of schema version 1.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeAlias

from .backends import ONNXRUNTIME
from .errors import ArtefactError
from .records import RecordError, record_json

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
REEXPORT = "re-export the model with this embedrt version ('embedrt export')"


class ManifestFieldError(RecordError, ArtefactError):
    """A field of ``manifest.json`` is missing, unknown, mistyped or out of range (named in the message)."""


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

@dataclass(frozen=True)
class AccuracySearchRecord:
    """What an accuracy-aware export (``min_cosine``) searched for and reached."""

    min_cosine_target: float
    calibration_min_cosine: float
    trials: int

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
        return record_json(self)

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
