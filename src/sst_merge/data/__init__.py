"""Evaluation data sets: where the local data directory is, and loaders that return plain records."""
