"""Calibration: the one set of calibration sentences, their graph feeds, and activation ranges.

The sentences (``export/calibration_sentences.json``) were written for embedrt, not taken
from an evaluation set. They serve both static ranges / smoothing factors and the accuracy
search's sensitivity measurements. Calibration only needs per-channel activation maxima; a
few dozen varied sentences suffice (measured: the same fidelity as 400 sentences).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from embedrt.export.quantize.graph import Feed, Tensor, evaluate_tensors

if TYPE_CHECKING:
    from onnx import ModelProto

CALIBRATION_FILE = "calibration_sentences.json"
DEFAULT_MAX_SEQ_LENGTH = 256  # for a graph without a manifest beside it


def calibration_sentences() -> list[str]:
    """The calibration sentences (short, long, over 128 and 256 tokens, non-ASCII)."""
    sentences: list[str] = _calibration_file()["sentences"]
    return sentences


def check_sentences() -> list[str]:
    """The calibration sentences and the inputs of the kinds the parity gate checks.

    Those kinds (empty, whitespace, one token, non-ASCII, far over the length limit) are
    where an int8 graph is worst; measuring there is what lets a choice made on these
    sentences hold at the gate. Static ranges are calibrated on :func:`calibration_sentences`
    only.
    """
    data = _calibration_file()
    return [*data["sentences"], *data["checks"]]


def _calibration_file() -> dict[str, list[str]]:  # the JSON file: lists of sentences by key
    text = resources.files("embedrt.export").joinpath(CALIBRATION_FILE).read_text(encoding="utf-8")
    data: dict[str, list[str]] = {k: v for k, v in json.loads(text).items() if isinstance(v, list)}
    return data


def calibration_feeds(
    tokenizer_json: Path, texts: Sequence[str] | None = None, max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH
) -> list[dict[str, npt.NDArray[np.int64]]]:
    """Tokenise ``texts`` (None: :func:`calibration_sentences`) one per feed: batch 1, no padding.

    Raises:
        FileNotFoundError: ``tokenizer_json`` does not exist.
    """
    from tokenizers import Tokenizer

    if not Path(tokenizer_json).is_file():
        raise FileNotFoundError(
            f"tokenizer file {tokenizer_json} does not exist; pass the export's tokenizer.json."
        )
    tok = Tokenizer.from_file(str(tokenizer_json))
    tok.no_padding()
    tok.enable_truncation(max_seq_length)
    feeds = []
    for enc in tok.encode_batch(list(calibration_sentences() if texts is None else texts)):
        ids = np.array([enc.ids], dtype=np.int64)
        feeds.append(
            {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        )
    return feeds


def default_calibration(fp32_model: Path) -> list[dict[str, npt.NDArray[np.int64]]]:
    """:func:`calibration_sentences` as feeds for the graph ``fp32_model``.

    Tokenised with the ``tokenizer.json`` beside it, at the ``max_seq_length`` of the manifest
    beside it (256 without one).

    Raises:
        FileNotFoundError: no ``tokenizer.json`` beside the model.
        ArtefactError: the manifest beside it is invalid.
    """
    from embedrt.runtime.manifest import MANIFEST_FILE, TOKENIZER_FILE, Manifest

    has_manifest = (fp32_model.parent / MANIFEST_FILE).is_file()
    limit = Manifest.load(fp32_model.parent).max_seq_length if has_manifest else DEFAULT_MAX_SEQ_LENGTH
    return calibration_feeds(fp32_model.parent / TOKENIZER_FILE, max_seq_length=limit)


@dataclass(frozen=True)
class ActivationRange:
    """Per-channel min and max of one tensor over the calibration feeds."""

    low: Tensor
    high: Tensor

    @classmethod
    def of(cls, values: Tensor) -> ActivationRange:
        """The range of ``values`` [..., channels]."""
        rows = values.reshape(-1, values.shape[-1])
        return cls(rows.min(0), rows.max(0))

    def merged(self, other: ActivationRange) -> ActivationRange:
        """The range covering both."""
        return ActivationRange(np.minimum(self.low, other.low), np.maximum(self.high, other.high))

    @property
    def absmax(self) -> Tensor:
        """Per-channel max |x|."""
        return np.maximum(np.abs(self.low), np.abs(self.high))


def activation_ranges(
    model: ModelProto, names: Sequence[str], feeds: Sequence[Feed]
) -> dict[str, ActivationRange]:
    """Per-channel ranges of the graph tensors ``names`` over ``feeds`` (one onnxruntime session)."""
    ranges: dict[str, ActivationRange] = {}
    for values in evaluate_tensors(model, names, feeds):
        for name, value in values.items():
            seen = ActivationRange.of(value)
            ranges[name] = ranges[name].merged(seen) if name in ranges else seen
    return ranges
