"""The embedding step: a chunk of texts -> vectors in the run's precision, with token counts.

One small object an engine calls per chunk, in-process or inside a Ray actor: it holds the
runtime's :class:`~embedrt.runtime.Embedder` and the precision, and nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from embedrt.runtime.embedder import Embedder
from embedrt.runtime.precision import Int8Calibration, calibrate_int8, code_width, quantize_embeddings

from .reader import BadRow, Chunk, Unit


@dataclass
class EmbeddedChunk:
    """A chunk after embedding, in input order.

    Good rows' ``ids``, ``codes`` ``(n, width)`` in the precision's dtype, ``tokens`` (int32)
    and ``truncated`` (bool); the chunk's bad rows and row count pass through to the writer.
    """

    unit: Unit
    ids: list[str]
    codes: npt.NDArray[Any]  # dtype per precision: float32, float16, int8 or uint8
    tokens: npt.NDArray[np.int32]
    truncated: npt.NDArray[np.bool_]
    bad: list[BadRow] = field(default_factory=list)
    rows_read: int = 0
    last: bool = False


class EmbeddingStep:
    """Embeds chunks with one :class:`Embedder` and quantises them to ``precision``.

    Args:
        embedder: the loaded model.
        precision: one of :data:`embedrt.runtime.precision.PRECISIONS`.
        calibration: int8's per-dimension ranges (int8 only; see :func:`calibrate`).
        batch_size: texts per batch, as for :meth:`Embedder.encode`.

    Raises:
        PrecisionError: (on construction) unknown precision, or int8 without a calibration
            or with one for another dimension.
    """

    def __init__(
        self, embedder: Embedder, precision: str, calibration: Int8Calibration | None, batch_size: int
    ) -> None:
        self.embedder = embedder
        self.precision = precision
        self.calibration = calibration
        self.batch_size = batch_size
        self.width = code_width(precision, embedder.dim)
        # Fail now, not at the first chunk, for an unknown precision or a bad calibration.
        quantize_embeddings(np.zeros((1, embedder.dim), np.float32), precision, calibration)

    @classmethod
    def load(
        cls, model: str | Path, precision: str, calibration: Int8Calibration | None, batch_size: int,
        threads: int | None = None, verify: bool = True,
    ) -> EmbeddingStep:
        """Load the artefact at ``model`` and build the step (what a Ray actor does once).

        Raises:
            ArtefactNotFoundError, ArtefactError: as :meth:`Embedder.load`.
            PrecisionError: as the class.
        """
        embedder = Embedder.load(model, threads, batch_size=batch_size, verify=verify)
        return cls(embedder, precision, calibration, batch_size)

    def __call__(self, chunk: Chunk) -> EmbeddedChunk:
        """Embed ``chunk``'s texts; its bad rows pass through untouched."""
        codes, tokens, truncated = self.embed(chunk.texts)
        return EmbeddedChunk(
            chunk.unit, chunk.ids, codes, tokens, truncated, chunk.bad, chunk.rows_read, chunk.last
        )

    def embed(
        self, texts: Sequence[str]
    ) -> tuple[npt.NDArray[Any], npt.NDArray[np.int32], npt.NDArray[np.bool_]]:
        """``(codes, tokens, truncated)`` for ``texts``, in input order."""
        count = len(texts)
        if not count:
            dtype = quantize_embeddings(np.zeros((1, self.embedder.dim), np.float32), self.precision,
                                        self.calibration).dtype
            return np.empty((0, self.width), dtype), np.empty(0, np.int32), np.empty(0, np.bool_)
        # the job counts truncation per row (run.json, the summary): no warning per chunk
        result = self.embedder.encode(texts, batch_size=self.batch_size, warn_truncation=False)
        codes = quantize_embeddings(result.vectors, self.precision, self.calibration)
        truncated = np.zeros(count, np.bool_)
        truncated[list(result.truncated)] = True
        return codes, result.token_counts.astype(np.int32), truncated


def calibrate(embedder: Embedder, texts: Sequence[str], batch_size: int) -> Int8Calibration:
    """int8 ranges from the float32 embeddings of ``texts`` (the corpus's first rows).

    Raises:
        PrecisionError: ``texts`` is empty.
    """
    # these rows are embedded again (and their truncation counted) when their chunk runs
    return calibrate_int8(embedder.encode(texts, batch_size=batch_size, warn_truncation=False).vectors)
