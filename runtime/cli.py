"""The ``embedrt`` command line: export, embed, similarity, info (and bench when installed).

Every error embedrt raises on purpose becomes one line on stderr and exit status 1;
a traceback means a bug.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Sequence
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import numpy as np
import typer

# embedrt.bench's CLI module is light (typer only); its measurement code loads when run.
from embedrt.bench.cli import register as register_bench

from .embedder import DEFAULT_BATCH_SIZE, Embedder
from .errors import EmbedrtError
from .manifest import Manifest
from .server_cli import register as register_serve

DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"
MODEL_ENV = "EMBEDRT_MODEL"

app = typer.Typer(
    help="Run sentence-embedding models on CPUs: export to ONNX, embed, compare.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
F = TypeVar("F", bound=Callable[..., Any])


class OutputFormat(str, Enum):
    jsonl = "jsonl"
    npy = "npy"


def default_model_dir() -> Path:
    """$EMBEDRT_MODEL, else models/all-MiniLM-L6-v2/int8 if exported, else .../fp32."""
    if os.environ.get(MODEL_ENV):
        return Path(os.environ[MODEL_ENV])
    base = Path("models") / DEFAULT_MODEL_NAME
    int8 = base / "int8"
    return int8 if (int8 / "manifest.json").is_file() else base / "fp32"


def _fail(message: str) -> typer.Exit:
    typer.echo(f"embedrt: error: {message}", err=True)
    return typer.Exit(1)


def _reports_errors(command: F) -> F:
    """Turn embedrt's errors into one line on stderr and exit status 1."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except EmbedrtError as err:
            raise _fail(str(err)) from err
        except OSError as err:  # unreadable input files, a closed pipe, a full disk
            raise _fail(f"{err.filename or ''}: {err.strerror or err}") from err

    return wrapper  # type: ignore[return-value]


ModelOption = Annotated[
    Path | None,
    typer.Option(
        "--model", "-m", help=f"Artefact directory. Default: ${MODEL_ENV}, else "
        f"models/{DEFAULT_MODEL_NAME}/int8 if exported, else .../fp32."
    ),
]
ThreadsOption = Annotated[
    int | None, typer.Option(min=1, help="onnxruntime threads. Default: the CPUs this process may use.")
]


@app.command()
@_reports_errors
def export(
    source: Annotated[
        str | None,
        typer.Argument(help="A local sentence-transformers folder or a known model name. "
                       f"Default: the bundled {DEFAULT_MODEL_NAME}."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Default: models/<model-name>/<variant>/")
    ] = None,
    variant: Annotated[
        str, typer.Option(help="fp32, fp32-optimised, int8 (CPU serving), int8-edge or int4-edge.")
    ] = "fp32",
    check: Annotated[bool, typer.Option(help="Check parity against torch.")] = True,
    isa: Annotated[
        str | None,
        typer.Option(help="CPU a quantised recipe targets: avx512_vnni, avx_vnni, avx512, avx2, "
                     "arm64. Default: this machine's."),
    ] = None,
    min_cosine: Annotated[
        float | None,
        typer.Option(min=0.0, max=1.0, help="Quantised variants: keep the most sensitive nodes "
                     "in float until the min per-sentence cosine to torch on calibration "
                     "sentences reaches this; fail if nothing does."),
    ] = None,
    threads: ThreadsOption = None,
) -> None:
    """Export a sentence-transformers model to ONNX and check it against torch.

    Example: embedrt export --variant int8 --out models/all-MiniLM-L6-v2/int8
    """
    import time

    from embedrt.export import ExportOptions, export_model

    started = time.perf_counter()
    options = ExportOptions(
        variant=variant, check=check, threads=threads, isa=isa, min_cosine=min_cosine
    )
    with _progress("export") as step:
        manifest = export_model(source, out, options, progress=step)
    target = out or Path("models") / manifest.model_name / manifest.variant
    size = (target / "model.onnx").stat().st_size
    typer.echo(f"wrote {target} ({manifest.variant}, model.onnx {size / 1e6:.1f} MB) "
               f"in {time.perf_counter() - started:.1f} s")
    if manifest.parity:
        p = manifest.parity
        typer.echo(f"parity vs torch on {p['sentences']} sentences: min cosine "
                   f"{p['min_cosine']:.7f}, max |diff| {p['max_abs_diff']:.2e}")


@app.command()
@_reports_errors
def embed(
    texts: Annotated[
        list[str] | None, typer.Argument(help="Texts to embed; '-' reads one text per line from stdin.")
    ] = None,
    file: Annotated[Path | None, typer.Option("--file", "-f", help="Read one text per line.")] = None,
    model: ModelOption = None,
    output_format: Annotated[OutputFormat, typer.Option("--format")] = OutputFormat.jsonl,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write here, not stdout.")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = DEFAULT_BATCH_SIZE,
    truncate: Annotated[bool, typer.Option(help="Cut inputs at max_seq_length (else fail).")] = True,
    threads: ThreadsOption = None,
) -> None:
    """Embed texts: JSON lines on stdout by default, or a .npy array with --format npy.

    Example: embedrt embed "first text" "second text" --format npy -o vectors.npy
    """
    inputs = _read_texts(texts or [], file)
    embedder = Embedder.load(model or default_model_dir(), threads=threads, batch_size=batch_size)
    result = embedder.encode(inputs, truncate=truncate)
    if output_format is OutputFormat.npy:
        _write_npy(result.vectors, output)
        return
    truncated = set(result.truncated)
    lines = (
        json.dumps({"index": i, "tokens": int(result.token_counts[i]), "truncated": i in truncated,
                    "embedding": [round(float(x), 7) for x in row]})
        for i, row in enumerate(result.vectors)
    )
    _write_text("\n".join(lines) + ("\n" if inputs else ""), output)


@app.command()
@_reports_errors
def similarity(
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
    from .pooling import cosine_similarity

    embedder = Embedder.load(model or default_model_dir(), threads=threads)
    left, right = embedder.embed([a, b])
    score = cosine_similarity(left, right)
    typer.echo(f"embedrt ({embedder.manifest.variant}): {score:.6f}")
    if reference:
        from embedrt.export.parity import reference_embeddings

        ref_left, ref_right = reference_embeddings(Path(embedder.manifest.source["path"]), [a, b])
        ref_score = cosine_similarity(ref_left, ref_right)
        typer.echo(f"torch reference:    {ref_score:.6f}")
        typer.echo(f"difference:         {abs(score - ref_score):.2e}")


@app.command()
@_reports_errors
def info(
    model: Annotated[Path | None, typer.Argument(help="Artefact directory.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw manifest.")] = False,
) -> None:
    """Show an artefact's manifest.

    Example: embedrt info models/all-MiniLM-L6-v2/fp32
    """
    directory = model or default_model_dir()
    manifest = Manifest.load(directory)
    if as_json:
        typer.echo(json.dumps(manifest.to_dict(), indent=2))
        return
    for label, value in _describe(manifest, directory):
        typer.echo(f"{label:<16}{value}")


def _describe(manifest: Manifest, directory: Path) -> list[tuple[str, str]]:
    size = (directory / "model.onnx").stat().st_size if (directory / "model.onnx").exists() else 0
    rows = [
        ("model", manifest.model_name),
        ("variant", manifest.variant),
        ("dimension", str(manifest.dim)),
        ("pooling", manifest.pooling + (" + L2 normalise" if manifest.normalize else "")),
        ("max tokens", str(manifest.max_seq_length)),
        ("graph", f"inputs {', '.join(manifest.inputs)} -> {manifest.output}"),
        ("model.onnx", f"{size / 1e6:.1f} MB"),
        ("recipe", json.dumps(dict(manifest.recipe))),
        ("source", f"{manifest.source.get('path')} (sha256 "
                   f"{str(manifest.source.get('weights_sha256', ''))[:12]}...)"),
        ("exported", manifest.created_at),
        ("versions", ", ".join(f"{k} {v}" for k, v in manifest.versions.items())),
    ]
    if manifest.parity:
        p = manifest.parity
        rows.append(("parity", f"{p.get('sentences')} sentences vs torch: min cosine "
                     f"{p.get('min_cosine', float('nan')):.7f}, max |diff| "
                     f"{p.get('max_abs_diff', float('nan')):.2e}"))
    return rows


def _read_texts(texts: Sequence[str], file: Path | None) -> list[str]:
    if file is not None and texts:
        raise _fail("give texts as arguments or with --file, not both")
    if file is not None:
        return file.read_text(encoding="utf-8").splitlines()
    if list(texts) == ["-"]:
        return sys.stdin.read().splitlines()
    if not texts:
        raise _fail("no texts given: pass them as arguments, with --file, or '-' for stdin")
    return list(texts)


def _write_npy(vectors: np.ndarray, output: Path | None) -> None:
    if output is not None:
        with open(output, "wb") as handle:
            np.save(handle, vectors)
        return
    if sys.stdout.isatty():
        raise _fail("--format npy writes binary: pass --output FILE or redirect stdout")
    np.save(sys.stdout.buffer, vectors)
    sys.stdout.buffer.flush()


def _write_text(text: str, output: Path | None) -> None:
    if output is not None:
        output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)


class _progress:
    """A spinner with the current step, on stderr, only when stderr is a terminal."""

    def __init__(self, title: str) -> None:
        self.title = title
        self._status: Any = None

    def __enter__(self) -> Callable[[str], None]:
        if sys.stderr.isatty():
            from rich.console import Console

            self._status = Console(stderr=True).status(self.title)
            self._status.__enter__()
        return self.step

    def step(self, message: str) -> None:
        if self._status is not None:
            self._status.update(f"{self.title}: {message}")
        else:
            typer.echo(f"{self.title}: {message}", err=True)

    def __exit__(self, *exc: object) -> None:
        if self._status is not None:
            self._status.__exit__(*exc)


def main() -> None:
    """Console-script entry point: library log lines (truncation counts) go to stderr."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="embedrt: %(message)s")
    app()


# Commands whose code lives beside the core CLI; each imports its extra only when run.
register_serve(app)
register_bench(app)

if __name__ == "__main__":
    main()
