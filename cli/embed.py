"""``embedrt embed``: texts in, vectors out (JSON lines or .npy)."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from embedrt.runtime.embedder import DEFAULT_BATCH_SIZE, Embedder

from ._common import ModelOption, ThreadsOption, model_dir, read_texts, write_npy, write_text


class OutputFormat(str, Enum):
    """What ``--format`` accepts."""

    jsonl = "jsonl"
    npy = "npy"


def command(
    texts: Annotated[
        list[str] | None, typer.Argument(help="Texts to embed; '-' reads one text per line from stdin.")
    ] = None,
    file: Annotated[Path | None, typer.Option("--file", "-f", help="Read one text per line.")] = None,
    model: ModelOption = None,
    output_format: Annotated[OutputFormat, typer.Option("--format")] = OutputFormat.jsonl,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write here, not stdout.")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = DEFAULT_BATCH_SIZE,
    truncate: Annotated[bool, typer.Option(help="Cut inputs at max_seq_length (else fail).")] = True,
    prompt_name: Annotated[str | None, typer.Option(
        "--prompt-name", help="Prepend the model's prompt of this name ('embedrt info' lists them). "
        "Default: the model's default prompt, if it has one.")] = None,
    prompt: Annotated[str | None, typer.Option(
        "--prompt", help="Prepend this text (wins over --prompt-name; --prompt '' turns the "
        "default prompt off).")] = None,
    truncate_dim: Annotated[int | None, typer.Option(
        "--truncate-dim", help="Keep the first N dimensions (Matryoshka models), normalised "
        "again when the model normalises.")] = None,
    threads: ThreadsOption = None,
) -> None:
    """Embed texts: JSON lines on stdout by default, or a .npy array with --format npy.

    Example: embedrt embed "first text" "second text" --format npy -o vectors.npy
    Example: embedrt embed --prompt-name query "what is a bank?" --truncate-dim 128
    """
    inputs = read_texts(texts or [], file)
    embedder = Embedder.load(model_dir(model), threads=threads, batch_size=batch_size,
                             truncate_dim=truncate_dim)
    result = embedder.encode(inputs, truncate=truncate, prompt_name=prompt_name, prompt=prompt)
    if output_format is OutputFormat.npy:
        write_npy(result.vectors, output)
        return
    truncated = set(result.truncated)
    lines = (
        json.dumps({"index": i, "tokens": int(result.token_counts[i]), "truncated": i in truncated,
                    "embedding": [round(float(x), 7) for x in row]})
        for i, row in enumerate(result.vectors)
    )
    write_text("\n".join(lines) + ("\n" if inputs else ""), output)
