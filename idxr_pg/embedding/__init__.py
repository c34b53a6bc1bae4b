"""Embedding: turning ``"{path}: {value}"`` texts into vectors, each distinct text once per model.

- ``load_embedder(settings)``: the configured model (offline), cached per process.
- ``EmbeddingService(embedder, settings, cache)``: dedupe, truncation, cache, token-budgeted
  batches, retries; ``embed(requests) -> list[EmbeddedText]``.
- ``EmbeddingCache``: the content-addressed vectors in ``idxr.embedding_cache``.
"""

from idxr_pg.embedding.base import Embedder, EmbeddingError, ModelLoadError
from idxr_pg.embedding.batching import Batch, batch_budget, iter_batches, plan_batches
from idxr_pg.embedding.cache import EmbeddingCache, text_hash
from idxr_pg.embedding.deterministic import DETERMINISTIC_MODEL, DeterministicEmbedder
from idxr_pg.embedding.loader import forget_loaded_embedders, load_embedder
from idxr_pg.embedding.service import EmbeddedText, EmbeddingService, EmbeddingStats, EmbedRequest
from idxr_pg.embedding.truncation import STRATEGIES as TRUNCATION_STRATEGIES

__all__ = [
    "DETERMINISTIC_MODEL",
    "TRUNCATION_STRATEGIES",
    "Batch",
    "DeterministicEmbedder",
    "EmbedRequest",
    "EmbeddedText",
    "Embedder",
    "EmbeddingCache",
    "EmbeddingError",
    "EmbeddingService",
    "EmbeddingStats",
    "ModelLoadError",
    "batch_budget",
    "forget_loaded_embedders",
    "iter_batches",
    "load_embedder",
    "plan_batches",
    "text_hash",
]
