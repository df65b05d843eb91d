"""Known models, as data: ``catalogue.json``. Exported artefacts land beside it (git-ignored)."""
