"""embedrt's torch-free runtime: numpy, onnxruntime and tokenizers only.

>>> from embedrt.runtime import Embedder, cosine_similarity
>>> embedder = Embedder.load("models/all-MiniLM-L6-v2/fp32")
>>> a, b = embedder.embed(["I deposited money in the bank.", "I sat by the river bank."])
>>> cosine_similarity(a, b)
"""

from .embedder import Embedder, Embeddings
from .errors import (
    ArtefactError,
    ArtefactNotFoundError,
    EmbedrtError,
    InputTooLongError,
    MissingExtraError,
    ParityError,
    SourceModelError,
)
from .manifest import Manifest
from .pooling import cosine_similarity

__all__ = [
    "ArtefactError",
    "ArtefactNotFoundError",
    "Embedder",
    "Embeddings",
    "EmbedrtError",
    "InputTooLongError",
    "Manifest",
    "MissingExtraError",
    "ParityError",
    "SourceModelError",
    "cosine_similarity",
]
