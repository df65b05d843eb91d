"""Checks of a manifest's values that its field types cannot say (ranges, names, cross-references).

The typed-record reader has checked every field's type; these check what the values mean:
known pooling and activation names, positive sizes, Dense stages that chain into ``dim``
and are checksummed, a default prompt that exists, a chosen candidate that was measured.
Each failure is a :class:`~embedrt.runtime.manifest_records.ManifestFieldError` naming the
file and the field.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .manifest_records import DENSE_ACTIVATIONS, REEXPORT, ManifestFieldError, SelectionRecord, pooling_modes

if TYPE_CHECKING:
    from .manifest import Manifest


def check_manifest(manifest: Manifest, origin: str) -> None:
    """Check the values of a manifest whose fields have their declared types.

    Args:
        manifest: the manifest read from ``origin``.
        origin: the file (or other source) named in errors.

    Raises:
        ManifestFieldError: a value out of range, an unknown name, or a broken cross-reference.
    """
    try:
        pooling_modes(manifest.pooling)
    except ValueError as err:
        raise ManifestFieldError(origin, "pooling", str(err)) from err
    for name in ("dim", "max_seq_length"):
        value = getattr(manifest, name)
        if value <= 0:
            raise ManifestFieldError(origin, name, f"must be positive, got {value}")
    if not manifest.inputs:
        raise ManifestFieldError(origin, "inputs", "must be a non-empty list of names")
    _check_dense(manifest, origin)
    default = manifest.default_prompt_name
    if default is not None and default not in manifest.prompts:
        raise ManifestFieldError(
            origin, "default_prompt_name",
            f"{default!r} is not one of the manifest's prompts "
            f"({', '.join(map(repr, manifest.prompts)) or 'none'})",
        )
    if manifest.selection is not None:
        _check_selection(manifest.selection, origin)


def _check_dense(manifest: Manifest, origin: str) -> None:
    """Each Dense stage has a known activation and a checksummed file, and the stages chain into ``dim``."""
    for i, stage in enumerate(manifest.dense):
        where = f"dense[{i}]"
        if stage.activation not in DENSE_ACTIVATIONS:
            raise ManifestFieldError(
                origin, f"{where}.activation",
                f"{stage.activation!r} is not one of {', '.join(DENSE_ACTIVATIONS)}; {REEXPORT}",
            )
        if min(stage.in_features, stage.out_features) <= 0:
            raise ManifestFieldError(origin, where, "in_features and out_features must be positive")
        if stage.file not in manifest.files:
            raise ManifestFieldError(
                origin, where, f"its file {stage.file!r} has no sha256 in 'files'; {REEXPORT}"
            )
        following = manifest.dense[i + 1].in_features if i + 1 < len(manifest.dense) else manifest.dim
        if stage.out_features != following:
            raise ManifestFieldError(
                origin, where,
                f"out_features {stage.out_features} does not match what follows it "
                f"({following}: the next stage's in_features, or dim); {REEXPORT}",
            )


def _check_selection(selection: SelectionRecord, origin: str) -> None:
    names = [c.name for c in selection.candidates]
    if selection.chosen not in names:
        raise ManifestFieldError(
            origin, "selection.chosen",
            f"{selection.chosen!r} is not one of its candidates ({', '.join(map(repr, names)) or 'none'}); "
            f"{REEXPORT}",
        )
