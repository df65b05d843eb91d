"""Options and input/output helpers the commands share."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, BinaryIO

import numpy as np
import typer
from embedrt.runtime.errors import EmbedrtError, MissingExtraError
from embedrt.runtime.home import MODEL_ENV, default_model_dir
from embedrt.runtime.pooling import FloatArray

MODEL_HELP = (
    f"Artefact directory. Default: ${MODEL_ENV}, else the default model in the embedrt home "
    "(auto, which 'embedrt export --variant auto' chose on this CPU; else int8 if exported, "
    "else fp32; see 'embedrt export')."
)
ModelOption = Annotated[Path | None, typer.Option("--model", "-m", help=MODEL_HELP)]
ThreadsOption = Annotated[
    int | None, typer.Option(min=1, help="Inference threads (onnxruntime's; OpenVINO's for a bf16 "
                             "artefact). Default: the CPUs this process may use.")
]


# The modules the [export] extra brings: export and similarity --reference check for them
# before starting, so a missing extra is the first and only thing they print.
EXPORT_MODULES = ("torch", "transformers", "optimum", "onnx", "sentence_transformers")
# What each command that needs an extra cannot run without: (extra, modules). On an install
# without them, ``embedrt --help`` marks the command and its own --help says what to install.
COMMAND_EXTRAS: dict[str, tuple[str, tuple[str, ...]]] = {
    "export": ("export", EXPORT_MODULES),
    "serve": ("serve", ("starlette", "uvicorn")),
    "bench": ("bench", ("matplotlib", "rich")),
    "search": ("corpus", ("pyarrow",)),
    "embed-corpus": ("corpus", ("pyarrow",)),
}


def missing_module(modules: Sequence[str]) -> str | None:
    """The first of ``modules`` that cannot be imported (checked without importing it), or None."""
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # blocked, or set to None in sys.modules
            found = False
        if not found:
            return name
    return None


def require(extra: str, feature: str, modules: Sequence[str]) -> None:
    """Check that ``modules`` can be imported, without importing them.

    Raises:
        MissingExtraError: one is missing (named, with the extra that brings it).
    """
    missing = missing_module(modules)
    if missing is not None:
        raise MissingExtraError(extra, feature, missing)


class CommandLineError(EmbedrtError, ValueError):
    """The arguments given together make no sense (the message says which to change)."""


def model_dir(model: Path | None) -> Path:
    """``--model``, else the default model.

    Raises:
        NoModelError: no ``--model`` and no default model is exported.
    """
    return model if model is not None else default_model_dir()


def read_texts(texts: Sequence[str], file: Path | None) -> list[str]:
    """Texts from the arguments, ``--file``, or stdin (``-``), one per line.

    Raises:
        CommandLineError: both or neither were given.
        OSError: the file cannot be read.
    """
    if file is not None and texts:
        raise CommandLineError("give texts as arguments or with --file, not both")
    if file is not None:
        return file.read_text(encoding="utf-8").splitlines()
    if list(texts) == ["-"]:
        return sys.stdin.read().splitlines()
    if not texts:
        raise CommandLineError("no texts given: pass them as arguments, with --file, or '-' for stdin")
    return list(texts)


def write_npy(vectors: FloatArray, output: Path | None) -> None:
    """Write ``vectors`` as a .npy file to ``output``, or to stdout when it is not a terminal.

    The array is written with plain ``write`` calls, so a closed pipe raises
    :class:`BrokenPipeError` (a quiet end) and a full disk raises an :class:`OSError`
    naming the problem, instead of numpy's "N requested and M written".

    Raises:
        CommandLineError: stdout is a terminal and no ``--output`` was given.
        OSError: the file cannot be written.
    """
    if output is not None:
        try:
            with open(output, "wb") as handle:
                _write_array(handle, vectors)
        except OSError as err:  # a full disk: name the file, not numpy's byte counts
            raise OSError(err.errno, err.strerror, str(output)) from err
        return
    if sys.stdout.isatty():
        raise CommandLineError("--format npy writes binary: pass --output FILE or redirect stdout")
    sys.stdout.flush()
    _write_array(sys.stdout.buffer, vectors)
    sys.stdout.buffer.flush()


def _write_array(handle: BinaryIO, vectors: FloatArray) -> None:
    array = np.ascontiguousarray(vectors)
    header = np.lib.format.header_data_from_array_1_0(array)
    np.lib.format.write_array_header_1_0(handle, header)
    handle.write(array.data.cast("B"))


def write_text(text: str, output: Path | None) -> None:
    """Write ``text`` to ``output``, or to stdout.

    Raises:
        OSError: the file cannot be written.
    """
    if output is not None:
        output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
