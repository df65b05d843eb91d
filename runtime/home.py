r"""Where exported models live by default, so a command finds them from any directory.

The home is ``$EMBEDRT_HOME`` if set, else the platform's per-user data directory
(``$XDG_DATA_HOME/embedrt`` or ``~/.local/share/embedrt`` on Linux,
``~/Library/Application Support/embedrt`` on macOS, ``%LOCALAPPDATA%\\embedrt`` on
Windows). An artefact lives at ``<home>/models/<model-name>/<variant>/``.

The default model is ``$EMBEDRT_MODEL`` if set, else the catalogue's default model in the
home, its first exported variant of :data:`DEFAULT_VARIANTS`: ``auto`` (the artefact
``embedrt export --variant auto`` chose by measuring on this machine), else ``int8``, else ``fp32``.
"""

from __future__ import annotations

import json
import os
import sys
from importlib import resources
from pathlib import Path

from .errors import ArtefactNotFoundError
from .manifest import MANIFEST_FILE

HOME_ENV = "EMBEDRT_HOME"
MODEL_ENV = "EMBEDRT_MODEL"
# The artefact ``embedrt export --variant auto`` writes: the candidate measured fastest here.
AUTO_VARIANT = "auto"
# The variants a command uses by default, best first: the one measured fastest here (``auto``,
# which passed the int8 fidelity gate), else int8 when it was exported.
DEFAULT_VARIANTS = (AUTO_VARIANT, "int8", "fp32")


class NoModelError(ArtefactNotFoundError):
    """No model was given and none is exported where embedrt looks by default."""


def home() -> Path:
    """The per-user directory of embedrt (it may not exist yet)."""
    configured = os.environ.get(HOME_ENV)
    if configured:
        return Path(configured).expanduser()
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "embedrt"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "embedrt"
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "share") / "embedrt"


def models_dir() -> Path:
    """``<home>/models``: one folder per model, one subfolder per variant."""
    return home() / "models"


def artefact_dir(model_name: str, variant: str) -> Path:
    """``<home>/models/<model_name>/<variant>``: where ``embedrt export`` writes by default."""
    return models_dir() / model_name / variant


def default_model_name() -> str:
    """The catalogue's default model (``models/catalogue.json``, ``"default"``)."""
    text = resources.files("embedrt.models").joinpath("catalogue.json").read_text(encoding="utf-8")
    return str(json.loads(text)["default"])


def default_model_dir() -> Path:
    """The artefact a command uses when none is given.

    ``$EMBEDRT_MODEL`` if set, else the first of ``<home>/models/<default model>/auto``,
    ``.../int8`` and ``.../fp32`` that is exported.

    Raises:
        NoModelError: none is exported (the message names where it looked and the fixes).
    """
    configured = os.environ.get(MODEL_ENV)
    if configured:
        return Path(configured).expanduser()
    name = default_model_name()
    candidates = [artefact_dir(name, variant) for variant in DEFAULT_VARIANTS]
    for candidate in candidates:
        if (candidate / MANIFEST_FILE).is_file():
            return candidate
    raise NoModelError(
        f"no model given and none exported in {models_dir() / name} (looked for "
        f"{', '.join(DEFAULT_VARIANTS[:-1])} and {DEFAULT_VARIANTS[-1]}). Run 'embedrt export' "
        f"(add '--variant auto' for the fastest artefact that keeps int8 fidelity on this CPU) to "
        f"export {name} there, pass --model DIR, or set {MODEL_ENV}=DIR "
        f"(the home is ${HOME_ENV}, else {_platform_home_hint()})"
    )


def _platform_home_hint() -> str:
    if sys.platform == "win32":
        return r"%LOCALAPPDATA%\embedrt"
    if sys.platform == "darwin":
        return "~/Library/Application Support/embedrt"
    return "$XDG_DATA_HOME/embedrt or ~/.local/share/embedrt"
