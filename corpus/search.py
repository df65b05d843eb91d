"""Exact top-k search by cosine over the Parquet shards of an ``embed-corpus`` run.

The shards are read in blocks (bounded memory: one decoded block and a running top-k per
query; never the whole corpus), every vector is scored, and a running top-k is kept with
``numpy.partition``. Precisions:

- ``float32`` / ``float16``: the cosine of the float query with each stored vector: exact.
- ``int8`` / ``ubinary``: a first pass on the compact codes, as sentence-transformers'
  quantised search does: int8 by the integer dot product of the int8-quantised query with each
  code vector (usearch's ``ip`` metric on int8, exact in float32 for ``dim <= 1024``), ubinary by
  Hamming distance (scored ``1 - 2 * hamming / dim``, the cosine of the +-1 vectors). It keeps
  ``k * rescore_multiplier`` candidates, which are then rescored with the cosine of the float
  query and the dequantised vectors (:func:`~embedrt.runtime.precision.dequantize_embeddings`).
  Without rescoring, scores are the first pass's.

Results are ordered by score, ties by position in the run (shard order, then row order).

Decoding Parquet's nested lists costs far more than scoring (at a million 384-dimension float32
vectors, about 9 s of a 9.5 s query), so the first search of a run also writes each shard's
decoded codes to ``DIR/.search-cache/`` as ``.npy`` files (the size of the raw codes: 4 bytes
per dimension for float32, 1 for int8, 1/8 for ubinary) and later searches read those,
memory-mapped. A cache file is named after its shard's size and modification time, so a
rewritten shard is decoded again; an unreadable or unwritable cache is skipped with a log line
and never changes a result. ``cache=False`` neither reads nor writes it.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import re
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from embedrt.runtime.cpus import usable_cpus
from embedrt.runtime.errors import MissingExtraError
from embedrt.runtime.precision import (
    CODE_DTYPES,
    code_width,
    dequantize_embeddings,
    quantize_embeddings,
)

from .errors import CorpusError
from .search_run import RunNotFoundError, SearchRun, query_model_dir, read_search_run
from .writer import SEARCH_CACHE_DIR

# np.load parses a .npy header with ast.literal_eval, which CPython 3.11 before 3.11.8 can break
# with "SystemError: AST constructor recursion depth mismatch" when threads parse at once
# (python/cpython#106905; seen here with the search's reader threads): one header at a time.
_NPY_HEADER_LOCK = threading.Lock()

if TYPE_CHECKING:
    from embedrt.runtime.embedder import Embedder

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_K",
    "DEFAULT_RESCORE_MULTIPLIER",
    "RunNotFoundError",
    "SearchError",
    "SearchHit",
    "SearchRun",
    "query_model_dir",
    "read_search_run",
    "search",
    "search_vectors",
]

# sentence-transformers' semantic_search_faiss / semantic_search_usearch default.
DEFAULT_RESCORE_MULTIPLIER = 2
DEFAULT_K = 10
# Memory per block: the decoded float32 block, and the (queries x rows) scores.
_BLOCK_BYTES = 32 << 20
_SCORES_PER_BLOCK = 8 << 20
_MAX_READERS = 4  # threads decoding shards ahead of the scoring
_EXACT_FLOAT32_DOT_DIM = 1024  # int8 code dots stay below 2**24, exact in float32, up to here


class SearchError(CorpusError):
    """A search cannot run as asked: a bad ``k`` or query, or vectors of another dimension."""


@dataclass(frozen=True)
class SearchHit:
    """One result: the row's ``id`` and its ``score`` (cosine unless rescoring is off)."""

    id: str
    score: float


def search(
    directory: str | Path,
    query: str,
    *,
    k: int = DEFAULT_K,
    model: str | Path | None = None,
    embedder: Embedder | None = None,
    threads: int | None = None,
    rescore: bool = True,
    rescore_multiplier: int = DEFAULT_RESCORE_MULTIPLIER,
    cache: bool = True,
) -> list[SearchHit]:
    """Embed ``query`` with the run's model and return its top ``k`` rows, best first.

    Args:
        directory: the output directory of ``embed-corpus`` (holding ``run.json``).
        query: the text to search for.
        k: how many results.
        model: an artefact directory to embed the query with instead of the run's own
            (see :func:`~embedrt.corpus.search_run.query_model_dir`).
        embedder: an already loaded embedder to use (``model`` is then ignored).
        threads: onnxruntime threads for the query's embedder; default: the usable CPUs.
        rescore: for int8/ubinary runs, rescore the candidates with float vectors.
        rescore_multiplier: candidates kept for rescoring, as a multiple of ``k``.
        cache: read and write the decoded shards in ``DIR/.search-cache/`` (module docstring).

    Raises:
        SearchError: ``query`` is empty, ``k`` or ``rescore_multiplier`` is below 1, or the
            model's dimension differs from the run's.
        CorpusError: ``run.json`` or a shard is missing or invalid.
        ArtefactError: the run's model changed since the run, or cannot be loaded.
        MissingExtraError: pyarrow (the [corpus] extra) is not installed.
    """
    if not isinstance(query, str) or not query.strip():
        raise SearchError(f"the query must be a non-empty text, got {query!r}")
    _check_counts(k, rescore_multiplier)
    run = read_search_run(Path(directory))
    if embedder is None:
        from embedrt.runtime.embedder import Embedder

        embedder = Embedder.load(query_model_dir(run, model), threads=threads)
    vectors = embedder.embed([query])
    return search_vectors(run.directory, vectors, k=k, rescore=rescore,
                          rescore_multiplier=rescore_multiplier, cache=cache)[0]


def search_vectors(
    directory: str | Path,
    query_vectors: npt.ArrayLike,
    *,
    k: int = DEFAULT_K,
    rescore: bool = True,
    rescore_multiplier: int = DEFAULT_RESCORE_MULTIPLIER,
    block_rows: int | None = None,
    cache: bool = True,
) -> list[list[SearchHit]]:
    """Top ``k`` rows of the run for each float query vector ``(n_queries, dim)``.

    Args:
        directory: the output directory of ``embed-corpus``.
        query_vectors: float queries embedded with the run's model (need not be normalised).
        k: results per query; fewer when the run has fewer rows.
        rescore: for int8/ubinary runs, rescore ``k * rescore_multiplier`` candidates with the
            float query and dequantised vectors (else scores are the compact first pass's).
        rescore_multiplier: candidates kept for rescoring, as a multiple of ``k``.
        block_rows: rows scored at once (default: about 32 MiB of float32).
        cache: read and write the decoded shards in ``DIR/.search-cache/`` (module docstring).

    Raises:
        SearchError: ``k``/``rescore_multiplier``/``block_rows`` below 1, queries not a 2-D
            float array, a zero or non-finite query, or queries of another dimension.
        CorpusError: ``run.json`` or a shard is missing or invalid (a shard's embedding column
            not of the run's precision and dimension, for one).
        MissingExtraError: pyarrow (the [corpus] extra) is not installed.
    """
    _check_counts(k, rescore_multiplier)
    if block_rows is not None and block_rows < 1:
        raise SearchError(f"block_rows must be at least 1, got {block_rows}")
    run = read_search_run(Path(directory))
    queries = _unit_queries(query_vectors, run.dim)
    quantised = run.precision in ("int8", "ubinary")
    pool = k * rescore_multiplier if quantised and rescore else k
    first = _FirstPass(run, queries)
    rows = block_rows or max(1, min(_BLOCK_BYTES // (4 * run.dim), _SCORES_PER_BLOCK // len(queries)))
    top = _RunningTopK(len(queries), pool, code_width(run.precision, run.dim), CODE_DTYPES[run.precision],
                       keep_codes=quantised)
    for start, codes in _blocks(run, rows, cache):
        top.add(first.scores(codes), start, codes)
    scores, positions = top.scores, top.positions
    if quantised and rescore:
        scores = _rescore(run, queries, top.codes)
    order = np.lexsort((positions, -scores), axis=-1)[:, :k] if scores.size else scores.astype(np.intp)
    best_scores = np.take_along_axis(scores, order, axis=1)
    best_positions = np.take_along_axis(positions, order, axis=1)
    ids = _ids_at(run, np.unique(best_positions))
    return [
        [SearchHit(ids[int(p)], float(s)) for s, p in zip(row_scores, row_positions, strict=True)]
        for row_scores, row_positions in zip(best_scores, best_positions, strict=True)
    ]


class _FirstPass:
    """Scores of every stored row for each query, in the precision's own space."""

    def __init__(self, run: SearchRun, queries: npt.NDArray[np.float32]) -> None:
        self.precision = run.precision
        self.dim = run.dim
        self.packed: npt.NDArray[Any] | None = None  # ubinary queries as words, for popcount
        if run.precision == "int8":
            codes = quantize_embeddings(queries, "int8", run.calibration)
            exact32 = run.dim <= _EXACT_FLOAT32_DOT_DIM
            self.dtype: type[np.floating[Any]] = np.float32 if exact32 else np.float64
            self.queries = codes.astype(self.dtype)
        elif run.precision == "ubinary":
            self.dtype = np.float32
            if hasattr(np, "bitwise_count"):  # Hamming distance by popcount (numpy >= 2)
                # on 8-byte words where the code width allows
                self.words = np.uint64 if code_width("ubinary", run.dim) % 8 == 0 else np.uint8
                self.packed = quantize_embeddings(queries, "ubinary").view(self.words)
            else:  # numpy 1.x: the same scores as a product of +-1 vectors
                self.queries = np.where(queries > 0, np.float32(1), np.float32(-1))
        else:
            self.dtype = np.float32
            self.queries = queries

    def scores(self, codes: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
        # ubinary: for +-1 vectors dot = dim - 2 * hamming, so dot / dim = 1 - 2 * hamming / dim
        # (padding bits are 0 in both codes, so they never count)
        if self.packed is not None:
            words = np.ascontiguousarray(codes).view(self.words)
            hamming = np.empty((len(self.packed), len(codes)), np.int64)
            for row, query in enumerate(self.packed):
                hamming[row] = np.bitwise_count(words ^ query).sum(axis=1, dtype=np.int64)
            return (self.dim - 2 * hamming) / self.dim
        if self.precision == "ubinary":
            bits = np.unpackbits(codes, axis=-1, count=self.dim).astype(np.float32)
            bits *= 2
            bits -= 1
            agreement: npt.NDArray[np.float64] = (self.queries @ bits.T).astype(np.float64)
            agreement /= self.dim
            return agreement
        block = codes.astype(self.dtype, copy=False)
        dots: npt.NDArray[np.float64] = (self.queries @ block.T).astype(np.float64)
        if self.precision == "int8":
            return dots
        # float32 sums (relative error ~2e-7 at 384 dimensions) take an eighth of float64's time
        norms = np.sqrt(np.einsum("ij,ij->i", block, block)).astype(np.float64)
        dots /= np.maximum(norms, 1e-12)
        return dots


class _RunningTopK:
    """The best ``size`` rows per query seen so far: highest score first, then lowest position.

    Ties are broken by position, so the result does not depend on how the rows were cut into
    blocks (ubinary's Hamming scores tie often). The held rows stay in position order, which
    makes "lowest position" the same as "leftmost column" in each merge.
    """

    def __init__(
        self, n_queries: int, size: int, width: int, dtype: type[np.generic], keep_codes: bool
    ) -> None:
        self.size = size
        self.scores = np.empty((n_queries, 0), np.float64)
        self.positions = np.empty((n_queries, 0), np.int64)
        self.codes = np.empty((n_queries, 0, width), dtype) if keep_codes else None

    def add(self, scores: npt.NDArray[np.float64], start: int, codes: npt.NDArray[Any]) -> None:
        """Merge a block's ``scores`` ``(queries, rows)``; its first row is at ``start``."""
        held = self.scores.shape[1]
        merged = np.concatenate([self.scores, scores], axis=1)
        width = merged.shape[1]
        if width > self.size:
            threshold = np.partition(merged, width - self.size, axis=1)[:, width - self.size, None]
            above = merged > threshold
            ties = merged == threshold
            wanted = self.size - above.sum(axis=1, keepdims=True)
            keep_mask = above | (ties & (np.cumsum(ties, axis=1) <= wanted))
            keep = np.nonzero(keep_mask)[1].reshape(len(merged), self.size)  # columns, in order
        else:
            keep = np.broadcast_to(np.arange(width), merged.shape)
        old = keep < held
        query_rows = np.broadcast_to(np.arange(len(keep))[:, None], keep.shape)
        positions = np.where(old, 0, start + keep - held).astype(np.int64)
        positions[old] = self.positions[query_rows[old], keep[old]]
        if self.codes is not None:
            kept = np.empty((*keep.shape, self.codes.shape[2]), self.codes.dtype)
            kept[old] = self.codes[query_rows[old], keep[old]]
            kept[~old] = codes[keep[~old] - held]
            self.codes = kept
        self.scores = np.take_along_axis(merged, keep, axis=1)
        self.positions = positions


def _rescore(
    run: SearchRun, queries: npt.NDArray[np.float32], codes: npt.NDArray[Any] | None
) -> npt.NDArray[np.float64]:
    """Cosine of each float query with the dequantised vectors of its candidates."""
    if codes is None or codes.shape[1] == 0:
        return np.empty((len(queries), 0), np.float64)
    n_queries, pool, width = codes.shape
    vectors = dequantize_embeddings(codes.reshape(-1, width), run.precision, run.calibration, dim=run.dim)
    vectors = vectors.reshape(n_queries, pool, run.dim).astype(np.float64)
    norms = np.maximum(np.linalg.norm(vectors, axis=2), 1e-12)
    return np.einsum("qd,qkd->qk", queries.astype(np.float64), vectors) / norms  # type: ignore[no-any-return]


def _unit_queries(query_vectors: npt.ArrayLike, dim: int) -> npt.NDArray[np.float32]:
    queries = np.asarray(query_vectors)
    if queries.ndim != 2 or len(queries) == 0 or not np.issubdtype(queries.dtype, np.floating):
        raise SearchError(
            f"query vectors must be a non-empty 2-D float array (queries x dimension), got a "
            f"{queries.ndim}-D {queries.dtype.name} array of shape {queries.shape}"
        )
    if queries.shape[1] != dim:
        raise SearchError(
            f"the query vectors have dimension {queries.shape[1]}, the run's vectors {dim}; embed the "
            "queries with the model the run used (run.json names it)"
        )
    norms = np.linalg.norm(queries.astype(np.float64), axis=1)
    if not (np.isfinite(norms).all() and (norms > 0).all()):
        raise SearchError("every query vector must be finite and non-zero")
    unit: npt.NDArray[np.float32] = (queries / norms[:, None]).astype(np.float32)
    return unit


def _check_counts(k: int, rescore_multiplier: int) -> None:
    for name, value in (("k", k), ("rescore_multiplier", rescore_multiplier)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SearchError(f"{name} must be a whole number of at least 1, got {value!r}")


def _pyarrow_parquet() -> Any:  # pyarrow ships no type information to check against
    try:
        import pyarrow.parquet as pq
    except ImportError as err:
        raise MissingExtraError("corpus", "searching an embedded corpus", "pyarrow") from err
    return pq


def _blocks(run: SearchRun, rows: int, cache: bool) -> Iterator[tuple[int, npt.NDArray[Any]]]:
    """``(position of the first row, codes (rows, width))`` over every shard, in run order.

    Decoding Parquet's nested lists costs more than scoring, so shards are decoded (or their
    cache files mapped) by a few threads ahead of the scoring (pyarrow releases the GIL): at
    most ``readers + 1`` decoded shards wait at a time, so memory stays bounded by the shard
    size, not the corpus size.
    """
    pq = _pyarrow_parquet()
    width = code_width(run.precision, run.dim)
    dtype = np.dtype(CODE_DTYPES[run.precision])
    readers = max(1, min(usable_cpus(), _MAX_READERS))
    shards = iter(run.shards)
    start = 0
    with ThreadPoolExecutor(max_workers=readers) as pool:
        pending: deque[Future[npt.NDArray[Any]]] = deque()

        def read_next() -> None:
            shard = next(shards, None)
            if shard is not None:
                pending.append(pool.submit(_shard_codes, pq, shard, run, width, dtype, cache))

        for _ in range(readers + 1):
            read_next()
        while pending:
            codes = pending.popleft().result()
            read_next()
            for offset in range(0, len(codes), rows):
                yield start + offset, codes[offset : offset + rows]
            start += len(codes)


def _shard_codes(
    pq: Any, shard: Path, run: SearchRun, width: int, dtype: np.dtype[Any], cache: bool
) -> npt.NDArray[Any]:
    """A shard's embedding column as ``(rows, width)`` codes, checked against the run.

    From the shard's cache file when ``cache`` and one matches, else decoded from Parquet (and
    then cached when ``cache``).
    """
    parquet = _open_shard(pq, shard)
    rows = parquet.metadata.num_rows
    cached = _cache_path(run, shard) if cache else None
    if cached is not None:
        codes = _read_cache(cached, (rows, width), dtype)
        if codes is not None:
            return codes
    _check_embedding_column(parquet.schema_arrow, shard, run, width, dtype)
    column = parquet.read(columns=["embedding"], use_threads=False).column(0).combine_chunks()
    if column.null_count:
        raise CorpusError(f"{shard}: the embedding column has {column.null_count} empty rows")
    values = column.values if column.offset == 0 else column.flatten()  # .values: no copy
    decoded: npt.NDArray[Any] = values.to_numpy(zero_copy_only=False).reshape(-1, width)
    if cached is not None:
        _write_cache(cached, shard.stem, decoded)
    return decoded


def _cache_path(run: SearchRun, shard: Path) -> Path | None:
    """``DIR/.search-cache/<shard>.<size>-<mtime_ns>.npy``; None when the shard is missing."""
    try:
        stat = shard.stat()
    except OSError:
        return None
    return run.directory / SEARCH_CACHE_DIR / f"{shard.stem}.{stat.st_size}-{stat.st_mtime_ns}.npy"


def _read_cache(path: Path, shape: tuple[int, int], dtype: np.dtype[Any]) -> npt.NDArray[Any] | None:
    """The cached codes, memory-mapped; None (logged) when absent, unreadable or not as expected."""
    if not path.is_file():
        return None
    try:
        with _NPY_HEADER_LOCK:
            codes: npt.NDArray[Any] = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        logger.warning("search cache %s is unreadable (%s): decoding the shard instead", path, err)
        return None
    if codes.shape != shape or codes.dtype != dtype:
        logger.warning("search cache %s holds %s %s, expected %s %s: decoding the shard instead",
                       path, codes.dtype, codes.shape, dtype, shape)
        return None
    return codes


def _write_cache(path: Path, stem: str, codes: npt.NDArray[Any]) -> None:
    """Write ``codes`` to ``path`` atomically and drop older cache files of the shard ``stem``.

    A failure is logged, not raised: the search goes on without the cache.
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(exist_ok=True)
        with open(temporary, "wb") as file:
            np.save(file, codes, allow_pickle=False)
        os.replace(temporary, path)
        for stale in path.parent.glob(f"{glob.escape(stem)}.*-*.npy"):
            if stale != path and re.fullmatch(r"\d+-\d+\.npy", stale.name[len(stem) + 1 :]):
                stale.unlink(missing_ok=True)
    except OSError as err:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        logger.warning("cannot write the search cache %s (%s): later searches decode the shard again",
                       path, err)


def _open_shard(pq: Any, shard: Path) -> Any:  # pyarrow objects are untyped
    if not shard.is_file():
        raise CorpusError(
            f"{shard}: a shard run.json lists is missing; re-run embed-corpus on the directory"
        )
    try:
        return pq.ParquetFile(shard)
    except Exception as err:  # pyarrow raises ArrowInvalid/OSError variants for a corrupt file
        raise CorpusError(f"{shard}: not a readable Parquet shard ({err})") from err


def _check_embedding_column(
    schema: Any, shard: Path, run: SearchRun, width: int, dtype: np.dtype[Any]  # pyarrow schema
) -> None:
    import pyarrow as pa

    if "embedding" not in schema.names or "id" not in schema.names:
        raise CorpusError(f"{shard}: expected columns id and embedding, found {', '.join(schema.names)}")
    kind = schema.field("embedding").type
    item = pa.from_numpy_dtype(dtype)
    if not (pa.types.is_fixed_size_list(kind) and kind.value_type == item and kind.list_size == width):
        raise SearchError(
            f"{shard}: embedding column is {kind}, but run.json says {run.precision} vectors of "
            f"dimension {run.dim} (a fixed-size list of {width} {item}); the shard does not belong "
            "to this run"
        )


def _ids_at(run: SearchRun, positions: npt.NDArray[np.int64]) -> dict[int, str]:
    """The ``id`` of each row position (positions count rows across shards in run order)."""
    pq = _pyarrow_parquet()
    found: dict[int, str] = {}
    start = 0
    for shard in run.shards:
        if len(found) == len(positions):
            break
        parquet = pq.ParquetFile(shard)
        stop = start + parquet.metadata.num_rows
        inside = positions[(positions >= start) & (positions < stop)]
        if inside.size:
            ids = parquet.read(columns=["id"]).column("id").take(inside - start).to_pylist()
            found.update(zip(inside.tolist(), ids, strict=True))
        start = stop
    return found
