"""The runtime's one public class: tokenise, run the ONNX graph, pool, normalise."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from tokenizers import Encoding, Tokenizer

from .backends import Session, open_session
from .cpus import usable_cpus, warn_missing_cpu_flags
from .dimensions import check_truncate_dim, truncate_dims
from .errors import ArtefactError, ArtefactNotFoundError, ConfigurationError, InputTooLongError, Param
from .manifest import MODEL_FILE, TOKENIZER_FILE, Manifest, sha256_file
from .pooling import FloatArray, l2_normalize, pool
from .prompts import apply_prompt, resolve_prompt
from .stages import DenseLayer, apply_dense

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 32
# Tokens (rows x padded width) per inference call. Measured with all-MiniLM-L6-v2 on 2 CPUs:
# calls of 512-1024 tokens keep activations in cache; 32 texts of 256 tokens in one call
# (8,192 tokens) ran 15 % slower for int8 and 17 % for fp32 (a hand measurement that no committed
# result keeps: measure again before changing this; docs/python-api.md describes the batching).
DEFAULT_MAX_BATCH_TOKENS = 1024
KNOWN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass(frozen=True)
class Embeddings:
    """The result of :meth:`Embedder.encode`.

    Attributes:
        vectors: ``(n, dim)`` float32, C-contiguous, in input order.
        token_counts: tokens fed to the model for each input (special tokens included).
        truncated: positions of the inputs that were cut at ``max_seq_length``.
    """

    vectors: FloatArray
    token_counts: npt.NDArray[np.int64]
    truncated: tuple[int, ...]


class Embedder:
    """Embeds texts with an artefact directory written by ``embedrt export``.

    Build one with :meth:`Embedder.load`. It is safe to call from several threads.
    """

    def __init__(
        self,
        manifest: Manifest,
        session: Session,
        tokenizer: Tokenizer,
        untruncated_tokenizer: Tokenizer,
        threads: int,
        batch_size: int,
        pad_to_multiple_of: int = 1,
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
        truncate_dim: int | None = None,
        *,
        dense: Sequence[DenseLayer] = (),
    ) -> None:
        if len(dense) != len(manifest.dense):
            raise ValueError(
                f"the manifest lists {len(manifest.dense)} Dense stage(s), {len(dense)} given; "
                "build the Embedder with Embedder.load, which loads them"
            )
        self._dense = tuple(dense)
        self.manifest = manifest
        self.truncate_dim = truncate_dim
        self.max_batch_tokens = max_batch_tokens
        self.threads = threads
        self.batch_size = batch_size
        self.pad_to_multiple_of = pad_to_multiple_of
        self._session = session
        self._tokenizer = tokenizer
        self._untruncated = untruncated_tokenizer

    @classmethod
    def load(
        cls,
        path: str | Path,
        threads: int | None = None,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        verify: bool = True,
        spin: bool = True,
        pad_to_multiple_of: int = 1,
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
        truncate_dim: int | None = None,
    ) -> Embedder:
        """Load an artefact directory.

        Args:
            path: directory holding ``manifest.json``, ``model.onnx`` and ``tokenizer.json``.
            threads: the engine's threads (onnxruntime's intra-op threads, OpenVINO's
                inference threads); default: the CPUs this process may use (its affinity
                mask and cgroup quota, not the host's core count).
            batch_size: default number of texts per batch.
            max_batch_tokens: a batch whose rows x padded width exceeds this is run as several
                inference calls of about this many tokens each (equal row counts; one text
                always fits). Smaller calls keep activations in cache; results agree.
            verify: check the files' sha256 against the manifest (costs a read of the model).
            spin: let onnxruntime's workers busy-wait briefly between parallel sections
                (onnxruntime's own default, as torch's OpenMP threads do): a short sentence
                embeds about 30 % faster. False wakes them from sleep instead: less CPU
                burnt, e.g. when the process shares its cores with other work. (onnxruntime
                only: OpenVINO's threads have no such switch.)
            pad_to_multiple_of: round each batch's padded length up to a multiple of this,
                bounding the number of distinct input shapes (and so onnxruntime's cached
                allocations) in a long-running server. Padding is masked: results agree.
            truncate_dim: keep only the first this many dimensions of every embedding
                (Matryoshka models), normalised again when the model normalises; ``dim``
                becomes this. None: the model's dimension.

        The engine is the one the manifest names (``recipe.backend``): onnxruntime, or
        OpenVINO for the ``bf16`` variant.

        Raises:
            ArtefactNotFoundError: the directory or one of its files is missing.
            ArtefactError: the manifest is invalid, the artefact is not an embedding model (a
                reranker's), or a file does not match it.
            MissingExtraError: the artefact's engine is OpenVINO and it is not installed.
            ConfigurationError: ``threads``, ``batch_size``, ``pad_to_multiple_of`` or
                ``max_batch_tokens`` is not a positive integer, or ``truncate_dim`` is not in
                1..the model's dimension (a ``ValueError``).
        """
        directory = Path(path)
        manifest = Manifest.load(directory)
        if manifest.task != "embed":
            raise ArtefactError(
                f"{directory}: a {manifest.task!r} artefact (a cross-encoder), not an embedding "
                "model; load it with Reranker.load, or serve it with --reranker"
            )
        check_truncate_dim(truncate_dim, manifest.dim)
        _check_positive(
            threads=threads, batch_size=batch_size, pad_to_multiple_of=pad_to_multiple_of,
            max_batch_tokens=max_batch_tokens,
        )
        opened = _open_artefact(directory, manifest, threads, verify=verify, spin=spin)
        _check_graph(opened.session, manifest, opened.model_path)
        dense = [
            DenseLayer.load(_artefact_file(directory, stage.file, manifest, verify), stage)
            for stage in manifest.dense
        ]
        return cls(
            manifest, opened.session, opened.tokenizer, opened.untruncated, opened.threads, batch_size,
            pad_to_multiple_of, max_batch_tokens, truncate_dim, dense=dense,
        )

    @property
    def engine(self) -> str:
        """What runs the graph: ``onnxruntime``, or ``openvino bf16`` for the ``bf16`` variant.

        ``openvino f32`` where the CPU has no bf16 instructions (OpenVINO falls back).
        """
        return self._session.engine

    @property
    def dim(self) -> int:
        """Embedding dimension of the output: ``truncate_dim`` when set at load, else the model's."""
        return self.truncate_dim or self.manifest.dim

    @property
    def max_seq_length(self) -> int:
        """Token limit per input (special tokens included)."""
        return self.manifest.max_seq_length

    def embed(
        self,
        texts: Sequence[str],
        *,
        batch_size: int | None = None,
        truncate: bool = True,
        prompt_name: str | None = None,
        prompt: str | None = None,
        truncate_dim: int | None = None,
        warn_truncation: bool = True,
    ) -> FloatArray:
        """Embed ``texts``; returns ``(len(texts), dim)`` float32 in input order.

        The arguments are :meth:`encode`'s.

        Raises:
            TypeError: ``texts`` is a single string, or an item is not a string.
            InputTooLongError: ``truncate`` is False and an input exceeds ``max_seq_length``.
            ConfigurationError: an unknown ``prompt_name``, or ``truncate_dim`` out of range.
        """
        return self.encode(
            texts, batch_size=batch_size, truncate=truncate, prompt_name=prompt_name, prompt=prompt,
            truncate_dim=truncate_dim, warn_truncation=warn_truncation,
        ).vectors

    def encode(
        self,
        texts: Sequence[str],
        *,
        batch_size: int | None = None,
        truncate: bool = True,
        prompt_name: str | None = None,
        prompt: str | None = None,
        truncate_dim: int | None = None,
        warn_truncation: bool = True,
    ) -> Embeddings:
        """Embed ``texts`` and report token counts and truncation.

        Inputs longer than ``max_seq_length`` are truncated unless ``truncate`` is False,
        which raises instead. The result lists the truncated inputs (``truncated``), and one
        warning per call on this module's logger gives their count unless
        ``warn_truncation`` is False (for callers that report the count themselves). Batches
        of ``batch_size`` are formed from length-sorted inputs so padding stays small, and a
        batch over ``max_batch_tokens`` runs as several inference calls; results come back in
        input order.

        Args:
            texts: the texts to embed.
            batch_size: texts per batch; default the one given at load.
            truncate: cut inputs at ``max_seq_length`` (else raise).
            prompt_name: prepend the model's prompt of this name (``manifest.prompts``).
            prompt: prepend this text; wins over ``prompt_name``. With neither, the model's
                default prompt (``manifest.default_prompt_name``) applies, as in
                sentence-transformers; ``prompt=""`` turns it off. Token counts and
                truncation include the prompt.
            truncate_dim: keep the first this many dimensions (1..the model's dimension),
                normalised again when the model normalises; default the one given at load.
            warn_truncation: log the truncation warning (a caller that counts
                ``truncated`` itself, like the corpus job or a benchmark, turns it off here
                rather than changing the logger's level for everyone).

        Raises:
            TypeError: ``texts`` is a single string, or an item is not a string.
            InputTooLongError: ``truncate`` is False and an input exceeds ``max_seq_length``.
            ConfigurationError: ``batch_size`` is not positive, ``prompt_name`` is not one of
                the model's prompts, or ``truncate_dim`` is out of range.
        """
        _check_texts(texts)
        size = batch_size or self.batch_size
        _check_positive(batch_size=size)
        check_truncate_dim(truncate_dim, self.manifest.dim)
        chosen = resolve_prompt(
            self.manifest.prompts, self.manifest.default_prompt_name, prompt_name, prompt
        )
        texts = apply_prompt(texts, chosen)
        encodings = self.tokenize(texts, truncate)
        lengths = np.fromiter((len(e.ids) for e in encodings), np.int64, len(encodings))
        truncated = tuple(i for i, e in enumerate(encodings) if e.overflowing)
        if truncated and warn_truncation:
            logger.warning(
                "truncated %d of %d inputs to max_seq_length=%d tokens",
                len(truncated), len(encodings), self.max_seq_length,
            )
        vectors = np.empty((len(encodings), self.manifest.dim), dtype=np.float32)
        order = np.argsort(lengths, kind="stable")
        for start in range(0, len(order), size):
            batch = order[start : start + size]
            for rows in self._calls(batch, self.padded_width(int(lengths[batch[-1]]))):
                vectors[rows] = self._embed_model_dim([encodings[i] for i in rows])
        kept = truncate_dim or self.truncate_dim
        return Embeddings(truncate_dims(vectors, kept, self.manifest.normalize), lengths, truncated)

    def padded_width(self, longest: int) -> int:
        """The width a batch whose longest input has ``longest`` tokens is padded to."""
        multiple = self.pad_to_multiple_of
        return min(-(-longest // multiple) * multiple, max(longest, self.max_seq_length))

    def _calls(self, rows: npt.NDArray[np.intp], width: int) -> list[npt.NDArray[np.intp]]:
        """Split ``rows`` (length-sorted, padded to ``width``) into calls of ~``max_batch_tokens``.

        The parts have equal row counts.
        """
        parts = min(len(rows), -(-len(rows) * width // self.max_batch_tokens))
        if parts > 1:
            logger.debug("batch of %d x %d tokens runs as %d calls (max_batch_tokens=%d)",
                         len(rows), width, parts, self.max_batch_tokens)
        return list(np.array_split(rows, max(parts, 1)))

    def tokenize(self, texts: Sequence[str], truncate: bool = True) -> list[Encoding]:
        """Tokenise ``texts`` at ``max_seq_length`` (unpadded).

        For callers that form their own batches, like the server; ``encoding.overflowing``
        is non-empty when an input was truncated.

        Raises:
            InputTooLongError: ``truncate`` is False and an input exceeds ``max_seq_length``.
        """
        if not texts:
            return []
        if truncate:
            if len(texts) == 1:  # the short path: no thread-pool hand-off for one text
                return [self._tokenizer.encode(texts[0])]
            encoded: list[Encoding] = self._tokenizer.encode_batch(list(texts))
            return encoded
        return _encode_within_limit(
            self._untruncated, list(texts), self.max_seq_length,
            lambda position: f"input {position}", lambda position: f" (starts: {texts[position][:40]!r})",
        )

    def embed_encodings(self, encodings: Sequence[Encoding]) -> FloatArray:
        """Run one batch of :meth:`tokenize` output (padded here) and pool it; input order.

        The vectors have :attr:`dim` dimensions (``truncate_dim`` applied).
        """
        return truncate_dims(self._embed_model_dim(encodings), self.truncate_dim, self.manifest.normalize)

    def _embed_model_dim(self, encodings: Sequence[Encoding]) -> FloatArray:
        """As :meth:`embed_encodings`, at the model's own dimension."""
        width = self.padded_width(max(len(e.ids) for e in encodings))
        ids = np.full((len(encodings), width), self.manifest.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            ids[row, : len(encoding.ids)] = encoding.ids
            mask[row, : len(encoding.ids)] = 1
        feeds: dict[str, npt.NDArray[np.int64]] = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.manifest.inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = self._session.run([self.manifest.output], feeds)[0]
        pooled = apply_dense(self._dense, pool(hidden, mask, self.manifest.pooling))
        return l2_normalize(pooled) if self.manifest.normalize else pooled


def _check_texts(texts: Any) -> None:
    if isinstance(texts, (str, bytes)):
        raise TypeError(
            "texts must be a list of strings, got a single "
            f"{type(texts).__name__}; wrap it in a list: embed([text])"
        )
    if not isinstance(texts, Sequence):
        raise TypeError(f"texts must be a list of strings, got {type(texts).__name__}")
    for position, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"input {position} is {type(text).__name__}, not str")


def _check_positive(**values: int | None) -> None:
    """Raise :class:`ConfigurationError` (a ``ValueError``) for the first value not a positive int."""
    for name, value in values.items():
        if value is not None and (not isinstance(value, int) or value <= 0):
            raise ConfigurationError(
                f"{{{name}}} must be a positive integer, got {value!r}", params=(Param(name),)
            )


def verify_files(directory: str | Path, manifest: Manifest) -> tuple[str, ...]:
    """Check the artefact's files against the sha256 sums in its manifest.

    Returns:
        The names of the files checked: the model, the tokenizer and every file the
        manifest lists.

    Raises:
        ArtefactNotFoundError: a file is missing.
        ArtefactError: a file's sha256 does not match the manifest (the message names it).
    """
    names = tuple(dict.fromkeys((MODEL_FILE, TOKENIZER_FILE, *manifest.files)))
    for name in names:
        _artefact_file(Path(directory), name, manifest, verify=True)
    return names


def _artefact_file(directory: Path, name: str, manifest: Manifest, verify: bool) -> Path:
    path = directory / name
    if not path.is_file():
        raise ArtefactNotFoundError(f"{path}: {name} is missing from the artefact")
    expected = manifest.files.get(name)
    if verify and expected is not None and sha256_file(path) != expected:
        raise ArtefactError(
            f"{path}: sha256 does not match manifest.json; the file was changed or corrupted "
            "after export. Re-export the model."
        )
    return path


@dataclass(frozen=True)
class _OpenedArtefact:
    """What :func:`_open_artefact` loads: the engine's session and the two tokenizers."""

    model_path: Path
    session: Session
    tokenizer: Tokenizer
    untruncated: Tokenizer
    threads: int


def _open_artefact(
    directory: Path, manifest: Manifest, threads: int | None, *, verify: bool, spin: bool
) -> _OpenedArtefact:
    """Open an artefact as every loader does (the Embedder's and the Reranker's).

    Checks the files, opens the manifest's engine, loads the tokenizers and warns about missing
    CPU flags.

    Raises:
        ArtefactNotFoundError: ``model.onnx`` or ``tokenizer.json`` is missing.
        ArtefactError: a file does not match the manifest, or the engine refuses the graph.
        MissingExtraError: the artefact's engine is OpenVINO and it is not installed.
    """
    model_path = _artefact_file(directory, MODEL_FILE, manifest, verify)
    tokenizer_path = _artefact_file(directory, TOKENIZER_FILE, manifest, verify)
    thread_count = threads or usable_cpus()
    session = open_session(
        model_path, manifest.recipe.backend, thread_count, spin=spin,
        precision=manifest.recipe.dtype, origin=str(directory),
    )
    tokenizer, untruncated = _load_tokenizers(tokenizer_path, manifest.max_seq_length)
    warn_missing_cpu_flags(manifest.recipe.requires_cpu_flags, str(directory))
    return _OpenedArtefact(model_path, session, tokenizer, untruncated, thread_count)


def _encode_within_limit(
    untruncated: Tokenizer,
    inputs: list[Any],
    max_seq_length: int,
    name: Callable[[int], str],
    detail: Callable[[int], str] = lambda position: "",
) -> list[Encoding]:
    """Encode ``inputs`` uncut, refusing any over ``max_seq_length`` tokens.

    The error names the input (``name(position)``, e.g. ``input 3``) and the ``truncate`` setting.

    Raises:
        InputTooLongError: an input has more than ``max_seq_length`` tokens.
    """
    encodings: list[Encoding] = untruncated.encode_batch(inputs)
    for position, encoding in enumerate(encodings):
        if len(encoding.ids) > max_seq_length:
            raise InputTooLongError(
                f"{name(position)} has {len(encoding.ids)} tokens; the model accepts at most "
                f"{max_seq_length}. Pass {{truncate}} or shorten it{detail(position)}",
                params=(Param("truncate", True),), limit=max_seq_length,
            )
    return encodings


def _check_graph(session: Session, manifest: Manifest, model_path: Path) -> None:
    graph_inputs = list(session.input_names)
    if sorted(graph_inputs) != sorted(manifest.inputs):
        raise ArtefactError(
            f"{model_path}: graph inputs {graph_inputs} do not match the manifest's "
            f"{list(manifest.inputs)}"
        )
    unknown = [name for name in graph_inputs if name not in KNOWN_INPUTS]
    if unknown:
        raise ArtefactError(f"{model_path}: graph input(s) {unknown} are not ones embedrt feeds")
    outputs = list(session.output_names)
    if manifest.output not in outputs:
        raise ArtefactError(
            f"{model_path}: graph has no output {manifest.output!r} (it has {outputs})"
        )


def _load_tokenizers(path: Path, max_seq_length: int) -> tuple[Tokenizer, Tokenizer]:
    """Two tokenizers from one file: one truncating at the manifest's limit, one not.

    tokenizer.json's own padding and truncation settings are dropped: a model's file may
    pad every input to a fixed 128 and cut there, which is both slow and wrong.
    """
    try:
        text = path.read_text(encoding="utf-8")
        truncating, untruncated = Tokenizer.from_str(text), Tokenizer.from_str(text)
    except Exception as err:  # tokenizers raises a bare Exception for bad files
        raise ArtefactError(f"{path}: not a valid tokenizer.json ({err})") from err
    for tokenizer in (truncating, untruncated):
        tokenizer.no_padding()
        tokenizer.no_truncation()
    truncating.enable_truncation(max_length=max_seq_length)
    return truncating, untruncated
