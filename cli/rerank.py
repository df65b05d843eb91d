"""``embedrt rerank``: score documents against a query with a cross-encoder, best first."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from embedrt.runtime.reranker import Reranker

from ._common import CommandLineError, ThreadsOption


def command(
    query: Annotated[str, typer.Argument(help="The query.")],
    documents: Annotated[str, typer.Argument(help="A file of documents, one per line, or '-' for stdin.")],
    reranker: Annotated[
        Path, typer.Option("--reranker", "-r", help="A reranker artefact directory (a cross-encoder export).")
    ],
    top_k: Annotated[
        int | None, typer.Option("--top-k", "-k", min=1, help="Print only the best this many.")
    ] = None,
    table: Annotated[bool, typer.Option(help="A plain table instead of JSON lines.")] = False,
    truncate: Annotated[
        bool, typer.Option(help="Cut pairs over the model's length limit (longest_first); else refuse them.")
    ] = True,
    threads: ThreadsOption = None,
) -> None:
    """Rerank documents for a query: one JSON line per document (index, score, text), best first.

    ``index`` counts the documents' lines from 0; ties keep line order, as sentence-transformers'
    CrossEncoder.rank does.

    Example: embedrt rerank "how do I reset my password" docs.txt --reranker models/my-reranker/int8
    """
    if documents == "-":
        lines = sys.stdin.read().splitlines()
    else:
        lines = Path(documents).read_text(encoding="utf-8").splitlines()
    if not lines:
        raise CommandLineError(f"no documents in {documents!r}: give one per line")
    model = Reranker.load(reranker, threads=threads)
    ranked = model.rank(query, lines, top_k=top_k, return_documents=True, truncate=truncate)
    if table:
        width = max(len(str(r.index)) for r in ranked)
        out = [f"{'rank':>4}  {'index':>{max(width, 5)}}  {'score':>10}  text"]
        out += [
            f"{n:>4}  {r.index:>{max(width, 5)}}  {r.score:>10.6f}  {r.text}"
            for n, r in enumerate(ranked, start=1)
        ]
        sys.stdout.write("\n".join(out) + "\n")
        return
    sys.stdout.write(
        "".join(json.dumps({"index": r.index, "score": r.score, "text": r.text}) + "\n" for r in ranked)
    )
