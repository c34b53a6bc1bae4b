"""The embedder contract every model adapter satisfies, and the errors of the embedding step."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from idxr_pg.errors import IdxrError

__all__ = ["Embedder", "EmbeddingError", "ModelLoadError", "TokenIdEmbedder"]


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalised float32 vectors with one model.

    ``name`` and ``version`` together identify the vectors: the cache keys on
    ``f"{name}@{version}"``, so two embedders that could return different vectors for the
    same text must differ in one of them. ``max_tokens`` is the per-text limit counted by
    ``count_tokens`` (special tokens included); ``embed`` expects texts within it (see
    ``truncate``) and runs them as one model call: callers do the batching.
    """

    name: str
    version: str
    dimensions: int
    max_tokens: int

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens the model would see for each text, special tokens included, untruncated."""
        ...

    def truncate(self, text: str, max_tokens: int, strategy: str) -> str:
        """The text cut to at most ``max_tokens`` tokens by ``strategy`` ('end' or 'middle_out')."""
        ...

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors of shape (len(texts), dimensions), float32, each of unit length."""
        ...


@runtime_checkable
class TokenIdEmbedder(Protocol):
    """An `Embedder` that can also embed texts it has tokenized already, so a caller that
    counts tokens (the `EmbeddingService`, for truncation and batching) tokenizes each text
    once: ``token_ids`` gives what ``count_tokens`` counts, ``embed_token_ids`` embeds them
    with the same vectors as ``embed`` of the texts. ``embeds_token_ids`` is False where it
    cannot (then callers use ``embed``)."""

    embeds_token_ids: bool

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text, special tokens included, untruncated."""
        ...

    def embed_token_ids(self, ids: Sequence[Sequence[int]]) -> np.ndarray:
        """``embed`` of the texts these ids came from (each within ``max_tokens``)."""
        ...


class EmbeddingError(IdxrError):
    """Embedding a batch failed after its retries; ``keys`` are the entity keys in that batch."""

    def __init__(self, keys: Sequence[str], reason: str) -> None:
        self.keys = list(dict.fromkeys(keys))
        self.reason = reason
        shown = ", ".join(self.keys[:20])
        more = f" and {len(self.keys) - 20} more" if len(self.keys) > 20 else ""
        super().__init__(f"embedding failed for {shown}{more}: {reason}")

    def __reduce__(self):  # keep it picklable despite the custom signature
        return (type(self), (self.keys, self.reason))


class ModelLoadError(IdxrError):
    """The embedding model cannot be found or loaded; the message says where we looked."""
