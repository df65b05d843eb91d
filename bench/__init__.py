"""Benchmarks: speed and quality of embedrt variants against the field."""
