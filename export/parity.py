"""Parity: does an artefact embed like the original sentence-transformers model on torch?"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from embedrt.runtime.errors import MissingExtraError


@dataclass(frozen=True)
class ParityReport:
    """Agreement between two sets of embeddings of the same sentences.

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

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        return asdict(self)

    def summary(self) -> str:
        """One line: the figures and the limits."""
        return (
            f"{self.sentences} sentences: min cosine {self.min_cosine:.7f} "
            f"(limit {self.tolerance_min_cosine}), mean {self.mean_cosine:.7f}, "
            f"max |diff| {self.max_abs_diff:.2e} (limit {self.tolerance_max_abs_diff:.0e})"
        )


def compare(
    reference: npt.NDArray[Any],
    candidate: npt.NDArray[Any],
    min_cosine: float,
    max_abs_diff: float,
) -> ParityReport:
    """Compare row by row; both arrays are ``(n, dim)`` and need not be normalised."""
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if ref.shape != cand.shape:
        raise ValueError(f"shapes differ: reference {ref.shape}, candidate {cand.shape}")
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    cosines = (ref * cand).sum(axis=1) / np.maximum(norms, 1e-12)
    worst_diff = float(np.abs(ref - cand).max()) if ref.size else 0.0
    return ParityReport(
        sentences=len(ref),
        min_cosine=float(cosines.min()),
        mean_cosine=float(cosines.mean()),
        max_abs_diff=worst_diff,
        tolerance_min_cosine=min_cosine,
        tolerance_max_abs_diff=max_abs_diff,
        passed=bool(cosines.min() >= min_cosine and worst_diff <= max_abs_diff),
    )


def validation_sentences() -> list[str]:
    """The fixed sentences export checks parity on (short, long, non-ASCII, empty)."""
    text = resources.files("embedrt.export").joinpath("validation_sentences.json").read_text()
    sentences: list[str] = json.loads(text)["sentences"]
    return sentences


def reference_embeddings(source: Path, texts: Sequence[str], batch_size: int = 32) -> Any:
    """Embed ``texts`` with the original model through sentence-transformers on torch.

    Raises:
        MissingExtraError: sentence-transformers is not installed.
    """
    model = load_reference(source)
    return model.encode(
        list(texts), batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False
    )


def load_reference(source: Path) -> Any:
    """The sentence-transformers model for ``source``, on CPU, never touching a hub."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as err:
        raise MissingExtraError("export", "the torch reference", "sentence-transformers") from err
    return SentenceTransformer(str(source), device="cpu", local_files_only=True)
