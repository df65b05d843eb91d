"""Second-stage retrieval: rerank a search's candidates with a cross-encoder.

:func:`search` (embedding cosine) keeps ``candidates`` rows; their texts are read back from the
run's own input files (the shards keep ids and vectors only), and a
:class:`~embedrt.runtime.reranker.Reranker` scores each (query, text) pair. The results are
ordered by the reranker's score as ``CrossEncoder.rank`` orders them (ties: the retrieval order).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from embedrt.runtime.reranker import Reranker

from .errors import CorpusError
from .formats import Columns, records
from .inputs import InputFile
from .record import read_run
from .search import SearchError, SearchHit, search


@dataclass(frozen=True)
class RerankedHit:
    """A reranked row: row's ``id``, the reranker's ``score``, the search's ``cosine``, its ``text``."""

    id: str
    score: float
    cosine: float
    text: str


def search_and_rerank(
    directory: str | Path,
    query: str,
    reranker: Reranker,
    *,
    k: int = 10,
    candidates: int = 50,
    model: str | Path | None = None,
    threads: int | None = None,
    cache: bool = True,
) -> list[RerankedHit]:
    """The top ``k`` of the search's ``candidates`` best rows, reordered by ``reranker``.

    Raises:
        SearchError: ``candidates`` is below ``k``, or as :func:`~embedrt.corpus.search.search`.
        CorpusError: an input file of the run is gone or changed, or a hit's text is not found.
        RerankInputError: the reranker has more than one label.
    """
    if candidates < k:
        raise SearchError(f"candidates ({candidates}) must be at least k ({k}): the reranker reorders them")
    hits = search(directory, query, k=candidates, model=model, threads=threads, cache=cache)
    texts = hit_texts(Path(directory), [hit.id for hit in hits])
    ranked = reranker.rank(query, [texts[hit.id] for hit in hits], top_k=k)
    return [
        RerankedHit(hits[r.index].id, r.score, hits[r.index].score, texts[hits[r.index].id]) for r in ranked
    ]


def hit_texts(directory: Path, ids: Sequence[str]) -> dict[str, str]:
    """The input text of each id, read from the run's input files (listed in ``run.json``).

    Raises:
        CorpusError: an input file is missing or changed size since the run, or an id is not found.
    """
    run = read_run(directory)
    columns = Columns(run.settings.text_column, run.settings.id_column)
    wanted, found = set(ids), dict[str, str]()
    for entry in run.inputs:
        source = InputFile(Path(entry.path), entry.label, entry.format, entry.size, entry.sha256)
        if not source.path.is_file() or source.path.stat().st_size != source.size:
            raise CorpusError(
                f"{source.path}: input of the run at {directory} is missing or changed since it was "
                "embedded; the reranker needs the texts: restore it or embed the corpus again"
            )
        for record in records(source, columns):
            ident = record.id if columns.id is not None else f"{source.label}:{record.row}"
            if ident in wanted and record.text is not None:
                found.setdefault(ident, record.text)
        if len(found) == len(wanted):
            break
    missing = wanted - found.keys()
    if missing:
        raise CorpusError(f"{directory}: no text found in the run's inputs for ids {sorted(missing)[:5]}")
    return found


__all__ = ["RerankedHit", "SearchHit", "hit_texts", "search_and_rerank"]
