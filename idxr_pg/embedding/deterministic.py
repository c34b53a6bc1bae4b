"""A model-free Embedder for concurrency and crash tests: fast, stable, meaningless vectors.

Never a default: only the model name ``deterministic-test`` selects it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np

from idxr_pg.embedding.truncation import Span, fit

__all__ = ["DETERMINISTIC_MODEL", "DeterministicEmbedder"]

DETERMINISTIC_MODEL = "deterministic-test"
_WORDS = re.compile(r"\S+")


class DeterministicEmbedder:
    """Unit vectors seeded by sha256 of the text: the same text gives the same vector in every
    process. Tokens are whitespace-separated words (no special tokens)."""

    name = DETERMINISTIC_MODEL
    device = "cpu"
    precision = "float32"

    def __init__(self, dimensions: int = 384, max_tokens: int = 256) -> None:
        self.dimensions = dimensions
        self.version = f"1-{dimensions}d"
        self.max_tokens = max_tokens

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(text.split()) for text in texts]

    def truncate(self, text: str, max_tokens: int, strategy: str) -> str:
        return fit(text, max_tokens, strategy, spans=_word_spans, count=lambda t: len(t.split()))

    def token_spans(self, text: str) -> list[Span]:
        return _word_spans(text)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        vectors = np.empty((len(texts), self.dimensions), dtype=np.float32)
        for row, text in enumerate(texts):
            digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
            rng = np.random.default_rng(int.from_bytes(digest[:16], "big"))
            vector = rng.standard_normal(self.dimensions)
            vectors[row] = vector / np.linalg.norm(vector)
        return vectors

    def __repr__(self) -> str:
        return f"DeterministicEmbedder(dimensions={self.dimensions})"


def _word_spans(text: str) -> list[Span]:
    return [m.span() for m in _WORDS.finditer(text)]
