"""The systems a benchmark compares, behind one small protocol.

Each adapter wraps one way of running the model. Here: an embedrt artefact, the original model
on torch with sentence-transformers, and fastembed pointed at an embedrt fp32 ONNX file; the
engines in :mod:`.peers` (OpenVINO, OpenVINO + NNCF int8, sentence-transformers' ONNX backend)
implement the same protocol, and :mod:`.registry` builds any of them by kind.
Adapters are built from a :class:`SystemSpec`, plain data that a cold-start subprocess can
receive as JSON, and import their libraries only when built.

Every system sees the same batches: embedrt sorts a call's texts by token count and cuts
batches of ``batch_size`` from that order; the other libraries are called once per batch of
that same order (:func:`embed_in_length_order`), so none pays for, or saves on, padding
differently.
"""

from __future__ import annotations

import functools
import json
import logging
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from tokenizers import Tokenizer

logger = logging.getLogger(__name__)

KIND_EMBEDRT = "embedrt"
KIND_TORCH = "sentence-transformers"
KIND_FASTEMBED = "fastembed"
# Source-folder files fastembed needs beside model.onnx and tokenizer.json.
_FASTEMBED_SOURCE_FILES = ("config.json", "tokenizer_config.json", "special_tokens_map.json")


class SystemUnavailable(Exception):
    """A system cannot run here (library not installed, files missing); reported as skipped."""


@dataclass(frozen=True)
class SystemSpec:
    """What to build: ``kind`` plus the paths it needs; JSON-serialisable for subprocesses.

    Attributes:
        name: unique label in the report, e.g. ``embedrt-int8``.
        kind: ``embedrt``, ``sentence-transformers`` or ``fastembed``.
        path: the artefact directory (embedrt, fastembed) or the source model folder (torch).
        threads: intra-op thread budget, the same for every system in a run.
        source: the source model folder (fastembed reads its tokenizer config from there).
        option: a kind's setting, e.g. OpenVINO's precision hint (``f32``, ``bf16``).
        prepared: a file or folder made for this system before the run (see :func:`.peers.prepare`).
        order_by: the embedrt artefact whose tokenizer and ``max_seq_length`` order texts into
            batches for libraries that are called batch by batch (empty: the library's own).
    """

    name: str
    kind: str
    path: str
    threads: int
    source: str = ""
    option: str = ""
    prepared: str = ""
    order_by: str = ""

    def to_json(self) -> str:
        """The spec as one JSON string."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> SystemSpec:
        """Inverse of :meth:`to_json`."""
        return cls(**json.loads(text))


class System(Protocol):
    """A loaded embedding system. ``embed`` returns ``(n, dim)`` float32 in input order."""

    spec: SystemSpec
    metadata: dict[str, Any]

    def embed(self, texts: Sequence[str], batch_size: int | None) -> npt.NDArray[np.float32]:
        """Embed ``texts`` in one call; ``batch_size=None`` uses the system's own default."""
        ...


def runtime_tokenizers(tokenizer_file: Path, max_seq_length: int) -> tuple[Tokenizer, Tokenizer]:
    """A truncating and an untruncated tokenizer, set up as embedrt's runtime sets them up.

    tokenizer.json's own padding and truncation are dropped; truncation is at ``max_seq_length``.

    Raises:
        SystemUnavailable: the file cannot be read.
    """
    from tokenizers import Tokenizer

    try:
        truncating = Tokenizer.from_file(str(tokenizer_file))
        untruncated = Tokenizer.from_file(str(tokenizer_file))
    except Exception as err:  # tokenizers raises a bare Exception for a bad or missing file
        raise SystemUnavailable(f"{tokenizer_file}: cannot read the tokenizer ({err})") from err
    for tokenizer in (truncating, untruncated):
        tokenizer.no_padding()
        tokenizer.no_truncation()
    truncating.enable_truncation(max_length=max_seq_length)
    return truncating, untruncated


@functools.lru_cache(maxsize=4)
def _ordering_tokenizer(artefact: str) -> Tokenizer:
    from embedrt.runtime import Manifest

    manifest = Manifest.load(Path(artefact))
    return runtime_tokenizers(Path(artefact) / "tokenizer.json", manifest.max_seq_length)[0]


def length_order_batches(
    spec: SystemSpec, texts: Sequence[str], batch_size: int
) -> list[npt.NDArray[np.intp]]:
    """Positions of ``texts`` in batches as embedrt forms them.

    A stable sort by truncated token count, then consecutive runs of ``batch_size``. Without
    ``spec.order_by``: one batch, in input order.
    """
    if not spec.order_by or len(texts) <= 1:
        return [np.arange(len(texts))]
    encodings = _ordering_tokenizer(spec.order_by).encode_batch(list(texts))
    lengths = np.fromiter((len(e.ids) for e in encodings), np.int64, len(encodings))
    order = np.argsort(lengths, kind="stable")
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def embed_in_length_order(
    spec: SystemSpec, texts: Sequence[str], batch_size: int,
    run: Callable[[list[str]], npt.NDArray[np.float32]],
) -> npt.NDArray[np.float32]:
    """Call ``run`` once per batch of :func:`length_order_batches`; rows back in input order."""
    vectors: npt.NDArray[np.float32] | None = None
    for rows in length_order_batches(spec, texts, batch_size):
        batch = run([texts[i] for i in rows])
        if vectors is None:
            vectors = np.empty((len(texts), batch.shape[1]), dtype=np.float32)
        vectors[rows] = batch
    if vectors is None:
        raise ValueError("embed_in_length_order: no texts to embed")
    return vectors


@dataclass
class SystemStatus:
    """A system as the report lists it: loaded, or skipped with the reason."""

    spec: SystemSpec
    status: str  # "ok" or "skipped"
    reason: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


class EmbedrtSystem:
    """An embedrt artefact through the public :class:`~embedrt.runtime.Embedder`."""

    def __init__(self, spec: SystemSpec) -> None:
        from embedrt.runtime import Embedder
        from embedrt.runtime.errors import MissingExtraError

        self.spec = spec
        try:
            self._embedder = Embedder.load(spec.path, threads=spec.threads)
        except MissingExtraError as err:  # an artefact whose engine is not installed (bf16)
            raise SystemUnavailable(str(err)) from err
        manifest = self._embedder.manifest
        self.metadata = {
            "variant": manifest.variant,
            "engine": self._embedder.engine,
            "recipe": manifest.recipe.to_dict(),
            "max_seq_length": manifest.max_seq_length,
            "default_batch_size": self._embedder.batch_size,
            "model_file": str(Path(spec.path) / "model.onnx"),
        }

    def embed(self, texts: Sequence[str], batch_size: int | None) -> npt.NDArray[np.float32]:
        """Embed with embedrt (length-sorted batches, dynamic padding)."""
        # the long bucket is cut at max_seq_length by design: a warning per call would flood the bar
        return self._embedder.embed(list(texts), batch_size=batch_size, warn_truncation=False)


class SentenceTransformersSystem:
    """The original model on torch with sentence-transformers: the quality reference."""

    def __init__(self, spec: SystemSpec) -> None:
        try:
            import torch
            from sentence_transformers import SentenceTransformer
        except ImportError as err:
            raise SystemUnavailable(
                f"{err.name or 'sentence_transformers'} is not installed "
                "(pip install 'embedrt[export]')"
            ) from err
        if not Path(spec.path).is_dir():
            raise SystemUnavailable(f"source model folder {spec.path} does not exist")
        torch.set_num_threads(spec.threads)
        self.spec = spec
        self._model = SentenceTransformer(spec.path, device="cpu")
        self.metadata = {
            "max_seq_length": int(self._model.max_seq_length),
            "default_batch_size": 32,
            "torch_threads": torch.get_num_threads(),
            "batches": "length-sorted by the bench (as embedrt's)" if spec.order_by else "its own",
        }

    def embed(self, texts: Sequence[str], batch_size: int | None) -> npt.NDArray[np.float32]:
        """Embed with ``SentenceTransformer.encode``, one call per length-sorted batch."""

        def run(batch: list[str]) -> npt.NDArray[np.float32]:
            vectors = self._model.encode(batch, batch_size=len(batch), convert_to_numpy=True,
                                         show_progress_bar=False)
            return np.asarray(vectors, dtype=np.float32)

        return embed_in_length_order(self.spec, texts, batch_size or 32, run)


class FastembedSystem:
    """fastembed's ``TextEmbedding`` loading an embedrt fp32 ``model.onnx`` from a local folder.

    fastembed reads ``tokenizer_config.json`` (and optionally ``config.json``,
    ``special_tokens_map.json``) beside the ONNX file, so a temporary folder links the
    artefact's ``model.onnx`` and ``tokenizer.json`` with those files from the source model.
    Its tokenizer settings, pooling and batch size are fastembed's own.
    """

    def __init__(self, spec: SystemSpec) -> None:
        try:
            from fastembed import TextEmbedding
        except ImportError as err:
            raise SystemUnavailable("fastembed is not installed (pip install 'embedrt[bench]')") from err
        if not spec.path:
            raise SystemUnavailable("no embedrt fp32 artefact to point fastembed at")
        self.spec = spec
        self._folder = tempfile.TemporaryDirectory(prefix="embedrt-bench-fastembed-")
        model_dir = _fastembed_folder(Path(spec.path), Path(spec.source), Path(self._folder.name))
        model_name, registered = _fastembed_model_name(TextEmbedding, Path(spec.path))
        self._model = TextEmbedding(
            model_name=model_name, threads=spec.threads, specific_model_path=str(model_dir),
            cuda=False,
        )
        self.metadata = {
            "model_name": model_name,
            "registration": "fastembed catalogue" if registered else "add_custom_model",
            "default_batch_size": 256,
            "model_file": str(Path(spec.path) / "model.onnx"),
            "batches": "length-sorted by the bench (as embedrt's)" if spec.order_by else "its own",
        }

    def embed(self, texts: Sequence[str], batch_size: int | None) -> npt.NDArray[np.float32]:
        """Embed with ``TextEmbedding.embed``, one call per length-sorted batch.

        Left to itself fastembed cuts fixed-size chunks in input order; the bench hands it the
        batches embedrt would form, so both pad alike.
        """

        def run(batch: list[str]) -> npt.NDArray[np.float32]:
            rows = list(self._model.embed(batch, batch_size=len(batch)))
            return np.ascontiguousarray(np.stack(rows), dtype=np.float32)

        return embed_in_length_order(self.spec, texts, batch_size or 256, run)


def _fastembed_folder(artefact: Path, source: Path, folder: Path) -> Path:
    """Link the artefact's ONNX and tokenizer, and the source's tokenizer config, into ``folder``."""
    for name in ("model.onnx", "tokenizer.json"):
        if not (artefact / name).is_file():
            raise SystemUnavailable(f"{artefact / name} is missing")
        (folder / name).symlink_to((artefact / name).resolve())
    for name in _FASTEMBED_SOURCE_FILES:
        if (source / name).is_file():
            (folder / name).symlink_to((source / name).resolve())
    if not (folder / "tokenizer_config.json").exists():
        raise SystemUnavailable(f"fastembed needs tokenizer_config.json, which {source} lacks")
    return folder


def _fastembed_model_name(text_embedding: Any, artefact: Path) -> tuple[str, bool]:
    """The fastembed catalogue's entry for the model if it has one, else a custom registration."""
    from embedrt.runtime import Manifest

    manifest = Manifest.load(artefact)
    known = {m["model"].lower(): m["model"] for m in text_embedding.list_supported_models()}
    for candidate in (manifest.model_name, f"sentence-transformers/{manifest.model_name}"):
        if candidate.lower() in known:
            return known[candidate.lower()], True
    from fastembed.common.model_description import ModelSource, PoolingType

    name = f"embedrt-bench/{manifest.model_name}-{manifest.files.get('model.onnx', '')[:12]}"
    if name.lower() not in known:
        pooling = {"mean": PoolingType.MEAN, "cls": PoolingType.CLS}.get(manifest.pooling)
        if pooling is None:
            raise SystemUnavailable(f"fastembed has no {manifest.pooling!r} pooling")
        text_embedding.add_custom_model(
            model=name, pooling=pooling, normalization=manifest.normalize,
            sources=ModelSource(hf=name), dim=manifest.dim, model_file="model.onnx",
        )
    return name, False
