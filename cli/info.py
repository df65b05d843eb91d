"""``embedrt info``: an artefact's manifest, after checking its files' checksums."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from embedrt.runtime.embedder import verify_files
from embedrt.runtime.manifest import MODEL_FILE, Manifest, SelectionRecord

from ._common import model_dir


def command(
    model: Annotated[
        Path | None, typer.Argument(help="Artefact directory. Default: as --model of the other commands.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw manifest.")] = False,
    verify: Annotated[
        bool, typer.Option(help="Check every file's sha256 against the manifest (reads the model).")
    ] = True,
) -> None:
    """Show an artefact's manifest; exit 1 if a file does not match its checksum.

    Example: embedrt info ~/.local/share/embedrt/models/all-MiniLM-L6-v2/int8
    """
    directory = model_dir(model)
    manifest = Manifest.load(directory)
    checked = verify_files(directory, manifest) if verify else ()
    if as_json:
        typer.echo(json.dumps(manifest.to_dict(), indent=2))
        return
    rows = [("artefact", str(directory)), *_describe(manifest, directory)]
    rows.append(("checksums", f"ok: sha256 of {', '.join(checked)} match the manifest" if verify
                 else "not verified (--no-verify)"))
    for label, value in rows:
        typer.echo(f"{label:<16}{value}")


def _describe(manifest: Manifest, directory: Path) -> list[tuple[str, str]]:
    model_file = directory / MODEL_FILE
    size = model_file.stat().st_size if model_file.exists() else 0
    rows = [
        ("model", manifest.model_name),
        ("variant", manifest.variant),
        ("dimension", str(manifest.dim)),
        ("pipeline", _pipeline(manifest)),
        ("max tokens", str(manifest.max_seq_length)),
        ("prompts", _prompts(manifest)),
        ("graph", f"inputs {', '.join(manifest.inputs)} -> {manifest.output}"),
        ("engine", ", ".join(filter(None, (manifest.recipe.backend, manifest.recipe.dtype)))),
        ("model.onnx", f"{size / 1e6:.1f} MB"),
        ("recipe", json.dumps(manifest.recipe.to_dict())),
        ("source", f"{manifest.source.path} (sha256 {manifest.source.weights_sha256[:12]}...)"),
        ("exported", manifest.created_at),
        ("versions", ", ".join(f"{k} {v}" for k, v in manifest.versions.items())),
    ]
    if manifest.parity is not None:
        p = manifest.parity
        rows.append(("parity", f"{p.sentences} sentences vs torch: min cosine {p.min_cosine:.7f}, "
                     f"max |diff| {p.max_abs_diff:.2e}"))
    if manifest.selection is not None:
        rows += _selection(manifest.selection)
    return rows


def _selection(selection: SelectionRecord) -> list[tuple[str, str]]:
    """How ``--variant auto`` chose: the reason, the measuring setup, one row per candidate."""
    rows = [
        ("auto choice", f"{selection.chosen}: {selection.reason}"),
        ("measured on", f"{selection.cpu_model} ({', '.join(selection.cpu_flags) or 'no flags read'}), "
         f"{selection.threads} threads, batch {selection.batch_size}, median of {selection.repeats}, "
         f"{selection.seconds:.0f} s"),
        ("gate", f"held-out min cosine >= {selection.gate_min_cosine}, mean >= "
         f"{selection.gate_mean_cosine} ({selection.fidelity_texts} texts), invariance >= "
         f"{selection.gate_invariance}"),
    ]
    for i, c in enumerate(selection.candidates):
        fidelity = ("not measured" if c.min_cosine is None else
                    f"min {c.min_cosine:.4f} mean {c.mean_cosine or 0.0:.5f} inv {c.invariance or 0.0:.7f}")
        speed = ", ".join(f"{bucket} {_rate(rate)}/s" for bucket, rate in c.texts_per_s.items())
        ratio = "" if c.speedup is None else f" ({c.speedup:.2f}x)"
        verdict = "passed" if c.passed else f"failed: {c.reason}"
        rows.append(("candidates" if i == 0 else "",
                     f"{c.name}: {verdict}; {fidelity}; {speed or 'speed not measured'}{ratio}"))
    return rows


def _rate(texts_per_s: float) -> str:
    """Three significant figures without an exponent: ``1466``, ``95.5``, ``1.83``."""
    return f"{texts_per_s:.0f}" if texts_per_s >= 100 else f"{texts_per_s:.3g}"


def _pipeline(manifest: Manifest) -> str:
    """What follows the transformer: ``mean pooling -> Dense 384->256 tanh -> L2 normalise``."""
    steps = [f"{manifest.pooling} pooling"]
    steps += [f"Dense {s.in_features}->{s.out_features}{'' if s.bias else ' no bias'} {s.activation}"
              f" ({s.file})" for s in manifest.dense]
    if manifest.normalize:
        steps.append("L2 normalise")
    return " -> ".join(steps)


def _prompts(manifest: Manifest) -> str:
    """``query: 'query: ', passage: 'passage: ' (default: query)``, or ``none``."""
    named = ", ".join(f"{name}: {text!r}" for name, text in manifest.prompts.items()) or "none"
    default = manifest.default_prompt_name
    return named + (f" (default: {default})" if default is not None else "")
