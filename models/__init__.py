"""Known models, as data: ``catalogue.json`` (weights package, dimension, length limit)."""
