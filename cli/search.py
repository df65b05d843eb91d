"""``embedrt search``: the top-k rows of an embedded corpus for a query, as JSON lines."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from embedrt.corpus.search import DEFAULT_K, DEFAULT_RESCORE_MULTIPLIER, search

from ._common import ThreadsOption


def command(
    directory: Annotated[
        Path, typer.Argument(help="Output directory of 'embedrt embed-corpus' (it holds run.json).")
    ],
    query: Annotated[str, typer.Argument(help="The text to search for.")],
    k: Annotated[int, typer.Option("-k", "--k", min=1, help="How many results.")] = DEFAULT_K,
    model: Annotated[
        Path | None,
        typer.Option(
            "--model", "-m",
            help="Artefact directory to embed the query with. Default: the one the run used "
            "(run.json), refused if it changed since; an explicit --model is trusted.",
        ),
    ] = None,
    rescore: Annotated[
        bool,
        typer.Option(help="int8/ubinary runs: rescore the candidates with the float query and "
                          "dequantised vectors (else scores are the compact first pass's)."),
    ] = True,
    rescore_multiplier: Annotated[
        int, typer.Option(min=1, help="Candidates rescored, as a multiple of -k.")
    ] = DEFAULT_RESCORE_MULTIPLIER,
    threads: ThreadsOption = None,
    cache: Annotated[
        bool,
        typer.Option(help="Read, and on the first search write, the decoded shards in "
                          "DIR/.search-cache (the size of the raw vectors; much faster later searches)."),
    ] = True,
    rerank: Annotated[
        Path | None,
        typer.Option(help="A reranker artefact (cross-encoder): rescore the --candidates best rows with "
                          "it and print the best -k by its score (id, score, cosine, text)."),
    ] = None,
    candidates: Annotated[
        int,
        typer.Option(min=1, help="With --rerank: rows the embedding search keeps for the reranker "
                     "(at least -k)."),
    ] = 50,
) -> None:
    """Search an embedded corpus: exact top-k by cosine, one JSON line per result (id, score).

    With --rerank, the --candidates best rows are scored again by a cross-encoder (their texts
    read from the run's input files) and the best -k by its score are printed.

    Example: embedrt search vectors/ "how do I reset my password" -k 5
    """
    if rerank is not None:
        from embedrt.corpus.rerank import search_and_rerank
        from embedrt.runtime.reranker import Reranker

        reranked = search_and_rerank(directory, query, Reranker.load(rerank, threads=threads), k=k,
                                     candidates=max(candidates, k), model=model, threads=threads, cache=cache)
        sys.stdout.write("".join(
            json.dumps({"id": h.id, "score": h.score, "cosine": h.cosine, "text": h.text}) + "\n"
            for h in reranked
        ))
        return
    hits = search(directory, query, k=k, model=model, threads=threads, rescore=rescore,
                  rescore_multiplier=rescore_multiplier, cache=cache)
    sys.stdout.write("".join(json.dumps({"id": hit.id, "score": hit.score}) + "\n" for hit in hits))
