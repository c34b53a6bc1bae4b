"""EmbeddingService: dedupe, truncate, cache, batch by token budget, retry — in that order."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from idxr_pg.config import EmbeddingSettings
from idxr_pg.embedding.base import Embedder, EmbeddingError, TokenIdEmbedder
from idxr_pg.embedding.batching import batch_budget, iter_batches
from idxr_pg.embedding.cache import EmbeddingCache, text_hash
from idxr_pg.embedding.truncation import char_bound, precut

__all__ = ["EmbedRequest", "EmbeddedText", "EmbeddingService", "EmbeddingStats"]

RETRY_BASE_DELAY = 0.2  # seconds; attempt n waits base * 2**(n-1) before the next one


@dataclass(frozen=True, slots=True)
class EmbedRequest:
    """One text to embed; ``key`` names its entity (e.g. 'subscription:42') in errors."""

    key: str
    text: str


@dataclass(slots=True)
class EmbeddedText:
    """The vector for one request; ``truncation`` is the strategy used when the text was cut."""

    vector: np.ndarray
    truncation: str | None
    cached: bool


@dataclass(slots=True)
class EmbeddingStats:
    """Cumulative counters. Texts are counted once per distinct text within a call."""

    model_calls: int = 0  # embedder.embed invocations, failed attempts included
    texts_embedded: int = 0  # texts the model returned vectors for
    cache_hits: int = 0  # texts served from the cache
    truncated: int = 0  # texts cut to the model's max tokens
    deduplicated: int = 0  # requests served by an identical text in the same call
    retries: int = 0  # failed model calls that were tried again

    def snapshot(self) -> EmbeddingStats:
        return replace(self)


@dataclass(slots=True)
class _Distinct:
    """A distinct (possibly truncated) text of a call and the requests it serves."""

    text: str
    tokens: int
    ids: list[int] | None  # its token ids, where the embedder embeds ids (tokenized once)
    requests: list[int] = field(default_factory=list)


class EmbeddingService:
    """Embeds requests with one embedder, never embedding a text twice per model.

    Per call: identical texts are embedded once; over-long texts are cut by the configured
    strategy, first by characters (`truncation.precut`, so memory and time are bounded by the
    model window) and then on the model's own tokenizer (so the model never truncates
    silently); the cache answers what it can; the rest go to the model longest first, in
    token-budgeted batches (see ``batching``), each retried with exponential backoff, and
    their vectors go to the cache in one write at the end of the call (also when a later
    batch fails). A batch that keeps failing raises ``EmbeddingError`` naming its entity
    keys, and nothing is returned for the call.
    """

    def __init__(
        self,
        embedder: Embedder,
        settings: EmbeddingSettings,
        cache: EmbeddingCache | None = None,
        *,
        token_budget: int | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.embedder = embedder
        self.settings = settings
        self.cache = cache
        # An embedder may name its numeric path in the key (`embedding_cache_key`).
        self.model_key = (
            getattr(embedder, "cache_key", None) or f"{embedder.name}@{embedder.version}"
        )
        self.max_tokens = embedder.max_tokens
        self.token_budget = token_budget or batch_budget(
            self.max_tokens, settings.max_batch_size, settings.safe_margin_percent
        )
        self.stats = EmbeddingStats()
        self._stats_lock = threading.Lock()
        # Texts are tokenized once: their ids, counted for truncation and batching, are what
        # the model embeds (where the embedder can take ids).
        self._by_ids: TokenIdEmbedder | None = (
            embedder
            if isinstance(embedder, TokenIdEmbedder) and embedder.embeds_token_ids
            else None
        )
        self._sleep = sleep

    def embed(self, requests: Sequence[EmbedRequest]) -> list[EmbeddedText]:
        """Vectors aligned with ``requests``."""
        if not requests:
            return []
        distinct, truncation, hash_of = self._prepare(requests)
        vectors = {} if self.cache is None else self.cache.get_many(self.model_key, list(distinct))
        cached = set(vectors)
        misses = sorted((h for h in distinct if h not in cached), key=lambda h: -distinct[h].tokens)
        self._count(cache_hits=len(cached), deduplicated=len(requests) - len(distinct))
        tokens = [distinct[h].tokens for h in misses]
        fresh: dict[str, np.ndarray] = {}
        try:
            for batch in iter_batches(
                misses, tokens, self.token_budget, self.settings.max_batch_size
            ):
                fresh.update(self._embed_batch(batch, distinct, requests))
        except EmbeddingError:
            self._keep(fresh)  # what the batches before the failing one computed
            raise
        self._keep(fresh)
        vectors.update(fresh)
        return [
            EmbeddedText(vectors[hash_of[i]], truncation[i], hash_of[i] in cached)
            for i in range(len(requests))
        ]

    def text_hashes(self, texts: Sequence[str]) -> list[str]:
        """The cache address of each text as `embed` would look it up (after truncation)."""
        requests = [EmbedRequest(key="", text=text) for text in texts]
        return self._prepare(requests)[2] if requests else []

    def reset_stats(self) -> EmbeddingStats:
        """Return the counters so far and start again from zero."""
        with self._stats_lock:
            previous, self.stats = self.stats, EmbeddingStats()
        return previous

    def _prepare(
        self, requests: Sequence[EmbedRequest]
    ) -> tuple[dict[str, _Distinct], list[str | None], list[str]]:
        """Distinct texts by hash (after truncation), each request's truncation and hash."""
        by_text: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            by_text.setdefault(request.text, []).append(index)
        originals = list(by_text)
        strategy = self.settings.truncation
        # Cut by characters first: only a bounded text is ever tokenized (a 20 MB field
        # would otherwise be tokenized whole, twice).
        max_chars = char_bound(self.max_tokens)
        bounded = [precut(text, max_chars, strategy) for text in originals]
        ids: list[list[int]] | list[None]
        if self._by_ids is not None:
            ids = self._by_ids.token_ids(bounded)
            counts = [len(row) for row in ids]
        else:
            ids, counts = [None] * len(bounded), self.embedder.count_tokens(bounded)
        distinct: dict[str, _Distinct] = {}
        truncation: list[str | None] = [None] * len(requests)
        hash_of = [""] * len(requests)
        cut = 0
        for original, text, tokens, text_ids in zip(originals, bounded, counts, ids, strict=True):
            used = strategy if len(original) > max_chars else None
            if tokens > self.max_tokens:
                text = self.embedder.truncate(text, self.max_tokens, strategy)
                tokens = self.max_tokens  # an upper bound is all batching needs
                used = strategy
                if self._by_ids is not None:
                    text_ids = self._by_ids.token_ids([text])[0]
            cut += used is not None
            hash_ = text_hash(text)
            entry = distinct.setdefault(hash_, _Distinct(text, tokens, text_ids))
            for index in by_text[original]:
                entry.requests.append(index)
                truncation[index] = used
                hash_of[index] = hash_
        self._count(truncated=cut)
        return distinct, truncation, hash_of

    def _embed_batch(
        self, batch: list[str], distinct: dict[str, _Distinct], requests: Sequence[EmbedRequest]
    ) -> dict[str, np.ndarray]:
        """Vectors by hash for one batch, retried with backoff; EmbeddingError when it fails."""
        texts = [distinct[h].text for h in batch]
        ids = [distinct[h].ids for h in batch]
        attempts = self.settings.max_attempts
        for attempt in range(1, attempts + 1):
            self._count(model_calls=1)
            try:
                vectors = _checked(
                    self._model_call(texts, ids), len(texts), self.embedder.dimensions
                )
            except Exception as exc:
                if attempt == attempts:
                    keys = [requests[i].key for h in batch for i in distinct[h].requests]
                    raise EmbeddingError(
                        keys,
                        f"model {self.model_key} failed on a batch of {len(texts)} texts "
                        f"{attempts} times; last error: {type(exc).__name__}: {exc}",
                    ) from exc
                self._count(retries=1)
                self._sleep(RETRY_BASE_DELAY * 2 ** (attempt - 1))
            else:
                self._count(texts_embedded=len(texts))
                return dict(zip(batch, vectors, strict=True))
        raise AssertionError("unreachable")  # the last attempt returns or raises

    def _keep(self, fresh: dict[str, np.ndarray]) -> None:
        """Store a call's new vectors in the cache: one write (one transaction) per call."""
        if self.cache is not None and fresh:
            self.cache.put_many(self.model_key, fresh)

    def _model_call(self, texts: list[str], ids: list[list[int] | None]) -> np.ndarray:
        """One model call: from the token ids counted already where every text has them."""
        if self._by_ids is not None and all(row is not None for row in ids):
            return self._by_ids.embed_token_ids(ids)  # type: ignore[arg-type]
        return self.embedder.embed(texts)

    def _count(self, **increments: int) -> None:
        with self._stats_lock:
            for name, value in increments.items():
                setattr(self.stats, name, getattr(self.stats, name) + value)


def _checked(vectors: np.ndarray, count: int, dimensions: int) -> np.ndarray:
    """The model's output as float32, or ValueError when it is not ``count`` finite vectors."""
    array = np.asarray(vectors, dtype=np.float32)
    if array.shape != (count, dimensions):
        raise ValueError(f"model returned shape {array.shape}, expected ({count}, {dimensions})")
    if not np.isfinite(array).all():
        raise ValueError("model returned non-finite values (NaN or infinity)")
    return array
