"""Parity: does an artefact embed like the original sentence-transformers model on torch?

The report type, :class:`~embedrt.runtime.manifest.ParityReport`, is the manifest's record.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from embedrt.runtime.errors import MissingExtraError
from embedrt.runtime.manifest import ParityReport
from embedrt.runtime.pooling import row_cosines

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = ["ParityReport", "compare", "load_reference", "reference_embeddings", "validation_sentences"]


def compare(
    reference: npt.ArrayLike,
    candidate: npt.ArrayLike,
    min_cosine: float,
    max_abs_diff: float,
) -> ParityReport:
    """Compare row by row; both arrays are ``(n, dim)`` and need not be normalised.

    Raises:
        ValueError: the shapes differ.
    """
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if ref.shape != cand.shape:
        raise ValueError(f"shapes differ: reference {ref.shape}, candidate {cand.shape}")
    cosines = row_cosines(ref, cand)
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
    text = resources.files("embedrt.export").joinpath("validation_sentences.json").read_text(encoding="utf-8")
    sentences: list[str] = json.loads(text)["sentences"]
    return sentences


def reference_embeddings(source: Path, texts: Sequence[str], batch_size: int = 32) -> npt.NDArray[np.float32]:
    """Embed ``texts`` with the original model through sentence-transformers on torch.

    Raises:
        MissingExtraError: sentence-transformers is not installed.
    """
    model = load_reference(source)
    vectors = model.encode(list(texts), batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
    return np.asarray(vectors, dtype=np.float32)


def load_reference(source: Path) -> SentenceTransformer:
    """The sentence-transformers model for ``source``, on CPU, never touching a hub.

    Raises:
        MissingExtraError: sentence-transformers is not installed.
    """
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as err:
        raise MissingExtraError("export", "the torch reference", "sentence-transformers") from err
    model: SentenceTransformer = SentenceTransformer(str(source), device="cpu", local_files_only=True)
    return model
