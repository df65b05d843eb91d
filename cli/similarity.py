"""``embedrt similarity``: the cosine similarity of two texts, optionally against torch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from embedrt.runtime.embedder import Embedder
from embedrt.runtime.pooling import cosine_similarity

from ._common import EXPORT_MODULES, ModelOption, ThreadsOption, model_dir, require


def command(
    a: Annotated[str, typer.Argument(help="First text.")],
    b: Annotated[str, typer.Argument(help="Second text.")],
    model: ModelOption = None,
    reference: Annotated[
        bool, typer.Option(help="Also compute it with the original model on torch (needs [export]).")
    ] = False,
    threads: ThreadsOption = None,
) -> None:
    """Cosine similarity of two texts.

    Example: embedrt similarity "I deposited money in the bank." "I sat by the river bank." --reference
    """
    if reference:  # fail before printing anything, not after the first score
        require("export", "similarity --reference", EXPORT_MODULES)
    embedder = Embedder.load(model_dir(model), threads=threads)
    left, right = embedder.embed([a, b])
    score = cosine_similarity(left, right)
    typer.echo(f"embedrt ({embedder.manifest.variant}): {score:.6f}")
    if reference:
        from embedrt.export.parity import reference_embeddings

        ref_left, ref_right = reference_embeddings(Path(embedder.manifest.source.path), [a, b])
        ref_score = cosine_similarity(ref_left, ref_right)
        typer.echo(f"torch reference:    {ref_score:.6f}")
        typer.echo(f"difference:         {abs(score - ref_score):.2e}")
