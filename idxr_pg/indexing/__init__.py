"""Indexing one batch: entity kinds (registry), the pipeline, failure recording."""
