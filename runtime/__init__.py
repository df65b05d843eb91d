"""embedrt's library: the torch-free runtime (numpy, onnxruntime, tokenizers; OpenVINO for bf16).

>>> from embedrt.runtime import Embedder, cosine_similarity
>>> embedder = Embedder.load("models/all-MiniLM-L6-v2/fp32")
>>> a, b = embedder.embed(["I deposited money in the bank.", "I sat by the river bank."])
>>> cosine_similarity(a, b)

The modules: ``embedder`` (the one public class), ``backends`` (the engines that run an
artefact's graph: onnxruntime, or OpenVINO), ``manifest`` (the artefact contract),
``pooling`` (pooling, normalisation, cosine), ``reranker`` (cross-encoder scoring),
``cpus`` (usable CPUs and their features),
``home`` (where exported models live by default), ``precision`` (float16/int8/binary
codes of embeddings), ``errors`` (one root error).
Built on it, in subpackages: ``serve`` (the HTTP server) and ``cli`` (the ``embedrt``
command, the one place that also reaches export and the benchmark); ``corpus`` (embedding
a corpus in batch jobs).
"""

from .embedder import Embedder, Embeddings
from .errors import (
    ArtefactError,
    ArtefactNotFoundError,
    ConfigurationError,
    EmbedrtError,
    InputTooLongError,
    MissingExtraError,
    Param,
    ParityError,
    SourceModelError,
)
from .manifest import Manifest
from .pooling import cosine_similarity
from .precision import (
    PRECISIONS,
    CalibrationError,
    Int8Calibration,
    PrecisionError,
    calibrate_int8,
    dequantize_embeddings,
    quantize_embeddings,
)
from .reranker import RankedDocument, Reranker, RerankInputError

__all__ = [
    "PRECISIONS",
    "ArtefactError",
    "ArtefactNotFoundError",
    "CalibrationError",
    "ConfigurationError",
    "Embedder",
    "Embeddings",
    "EmbedrtError",
    "InputTooLongError",
    "Int8Calibration",
    "Manifest",
    "MissingExtraError",
    "Param",
    "ParityError",
    "PrecisionError",
    "SourceModelError",
    "calibrate_int8",
    "cosine_similarity",
    "dequantize_embeddings",
    "quantize_embeddings",
    "RankedDocument",
    "RerankInputError",
    "Reranker",
]
