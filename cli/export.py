"""``embedrt export``: a sentence-transformers model to a checked ONNX artefact ([export] extra).

The options are checked before anything heavy loads: a wrong ``--variant`` or ``--isa``
fails in a fraction of a second, not after the torch export.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from embedrt.runtime.home import AUTO_VARIANT, artefact_dir

from ._common import EXPORT_MODULES, CommandLineError, ThreadsOption, missing_module, require


def command(
    source: Annotated[
        str | None,
        typer.Argument(help="A local sentence-transformers folder or a known model name. "
                       "Default: the catalogue's default model (all-MiniLM-L6-v2)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Default: <home>/models/<model-name>/<variant>/, where the "
                     "other commands look; the home is $EMBEDRT_HOME, else the user data directory "
                     "(~/.local/share/embedrt on Linux)."),
    ] = None,
    variant: Annotated[
        str, typer.Option(help="fp32, fp32-optimised, int8 (CPU serving), int8-edge, int4-edge, bf16 "
                          "(OpenVINO at bfloat16 precision; the [openvino] extra), or auto: build "
                          "those that fit this CPU, measure each here and keep the fastest that "
                          "passes the int8 fidelity gate (a few minutes).")
    ] = "fp32",
    check: Annotated[bool, typer.Option(help="Check parity against torch.")] = True,
    isa: Annotated[
        str | None,
        typer.Option(help="x86 CPU a quantised recipe targets: avx512_vnni, avx_vnni, avx512, avx2, or "
                     "avx2_reduced (7-bit s8 weights for CPUs without VNNI: no saturation, less "
                     "accurate; never detected). Default: this machine's. arm64 runs the "
                     "avx512_vnni file (what an ARM machine exports): one int8 file serves x86 "
                     "with VNNI and arm64."),
    ] = None,
    min_cosine: Annotated[
        float | None,
        typer.Option(min=0.0, max=1.0, help="Quantised variants: keep the most sensitive nodes "
                     "in float until the min per-sentence cosine to torch on calibration "
                     "sentences reaches this; fail if nothing does."),
    ] = None,
    threads: ThreadsOption = None,
    reranker: Annotated[
        bool,
        typer.Option("--reranker", help="SOURCE is a sentence-transformers CrossEncoder folder: export "
                     "a reranker (fp32, int8 or bf16), checked against CrossEncoder.predict."),
    ] = False,
) -> None:
    """Export a sentence-transformers model to ONNX and check it against torch.

    Example: embedrt export --variant int8
    """
    if reranker:
        _export_reranker(source, out, variant, check, isa, threads)
        return
    if variant == AUTO_VARIANT:
        _export_auto(source, out, check, isa, min_cosine, threads)
        return
    # embedrt.export's package is light (no torch at import); its options check themselves.
    from embedrt.export import ExportOptions

    options = ExportOptions(
        variant=variant, check=check, threads=threads, isa=isa, min_cosine=min_cosine
    )
    require("export", "embedrt export", EXPORT_MODULES)
    from embedrt.export import export_model
    from embedrt.export.source import resolve_source

    started = time.perf_counter()
    target = out if out is not None else artefact_dir(resolve_source(source)[1], options.variant)
    with _Progress("export") as progress:
        manifest = export_model(source, target, options, progress=progress.step)
    size = (target / "model.onnx").stat().st_size
    typer.echo(f"wrote {target} ({manifest.variant}, model.onnx {size / 1e6:.1f} MB) "
               f"in {time.perf_counter() - started:.1f} s")
    if manifest.parity is not None:
        p = manifest.parity
        typer.echo(f"parity vs torch on {p.sentences} sentences: min cosine "
                   f"{p.min_cosine:.7f}, max |diff| {p.max_abs_diff:.2e}")


def _export_reranker(
    source: str | None, out: Path | None, variant: str, check: bool, isa: str | None, threads: int | None
) -> None:
    """``--reranker``: a CrossEncoder folder to a reranker artefact."""
    if source is None:
        raise typer.BadParameter("give the CrossEncoder folder to export", param_hint="SOURCE")
    from embedrt.export import ExportOptions

    options = ExportOptions(variant=variant, check=check, threads=threads, isa=isa)
    require("export", "embedrt export", EXPORT_MODULES)
    from embedrt.export import export_cross_encoder

    started = time.perf_counter()
    target = out if out is not None else artefact_dir(Path(source).name, options.variant)
    with _Progress("export") as progress:
        manifest = export_cross_encoder(source, target, options, progress=progress.step)
    typer.echo(f"wrote {target} (reranker, {manifest.variant}) in {time.perf_counter() - started:.1f} s")
    parity = (manifest.rerank or {}).get("parity")
    if isinstance(parity, dict):
        typer.echo("parity vs CrossEncoder.predict: " + ", ".join(
            f"{key} {value}" for key, value in parity.items() if isinstance(value, (int, float))))


def _export_auto(
    source: str | None, out: Path | None, check: bool, isa: str | None, min_cosine: float | None,
    threads: int | None,
) -> None:
    """``--variant auto``: see :mod:`embedrt.bench.auto_variant`; prints the choice in one line."""
    given = [name for name, value in (("--no-check", not check), ("--isa", isa is not None),
                                      ("--min-cosine", min_cosine is not None)) if value]
    if given:
        raise CommandLineError(
            f"{', '.join(given)} cannot be combined with --variant auto: it builds this CPU's "
            "recipes and checks every candidate against the fidelity gate itself; drop "
            f"{'them' if len(given) > 1 else 'it'}, or export a named variant"
        )
    require("export", "embedrt export", EXPORT_MODULES)
    from embedrt.bench.auto_rank import summary_line
    from embedrt.bench.auto_variant import AutoOptions, export_auto

    started = time.perf_counter()
    with _Progress("export") as progress:
        manifest = export_auto(source, out, AutoOptions(threads=threads), progress.step, progress.note)
    if manifest.selection is None:  # export_auto always records it
        raise RuntimeError("export_auto wrote no selection record")
    typer.echo(summary_line(manifest.selection))
    typer.echo(f"wrote {out or artefact_dir(manifest.model_name, AUTO_VARIANT)} ({manifest.variant}) "
               f"in {time.perf_counter() - started:.1f} s")


class _Progress:
    """A spinner with the current step, on stderr, only when stderr is a terminal."""

    def __init__(self, title: str) -> None:
        self.title = title
        self._status: Any = None  # a rich Status, imported only on a terminal

    def __enter__(self) -> _Progress:
        if sys.stderr.isatty() and missing_module(("rich",)) is None:  # [export] brings rich
            from rich.console import Console

            self._status = Console(stderr=True).status(self.title)
            self._status.__enter__()
        return self

    def step(self, message: str) -> None:
        """Show the step that starts now."""
        if self._status is not None:
            self._status.update(f"{self.title}: {message}")
        else:
            typer.echo(f"{self.title}: {message}", err=True)

    def note(self, line: str) -> None:
        """Print a line that stays (above the spinner on a terminal)."""
        if self._status is not None:
            self._status.console.print(line, markup=False, highlight=False)
        else:
            typer.echo(line, err=True)

    def __exit__(self, *exc: object) -> None:
        if self._status is not None:
            self._status.__exit__(*exc)
