"""The content-addressed embedding cache in PostgreSQL, alone and behind EmbeddingService."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence

import numpy as np
import psycopg
import pytest

from idxr_pg.config import EmbeddingSettings
from idxr_pg.embedding import (
    DeterministicEmbedder,
    Embedder,
    EmbeddingCache,
    EmbeddingService,
    EmbedRequest,
    load_embedder,
    text_hash,
)


class CountingEmbedder:
    """A thin wrapper that counts model calls and texts; ``name`` can pose as another model."""

    def __init__(self, inner: Embedder, name: str | None = None) -> None:
        self.inner = inner
        self.name = name or inner.name
        self.version = inner.version
        self.dimensions = inner.dimensions
        self.max_tokens = inner.max_tokens
        self.calls = 0
        self.texts: list[str] = []

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return self.inner.count_tokens(texts)

    def truncate(self, text: str, max_tokens: int, strategy: str) -> str:
        return self.inner.truncate(text, max_tokens, strategy)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        self.texts.extend(texts)
        return self.inner.embed(texts)


def unique_model() -> str:
    return f"test-{uuid.uuid4().hex[:8]}@1"


def vectors(n: int, seed: int = 0) -> np.ndarray:
    array = np.random.default_rng(seed).standard_normal((n, 384)).astype(np.float32)
    return array / np.linalg.norm(array, axis=1, keepdims=True)


def cached_rows(conn: psycopg.Connection, model: str) -> list[tuple[str, int]]:
    return conn.execute(
        "SELECT text_hash, vector_dims(embedding) FROM idxr.embedding_cache WHERE model = %s "
        "ORDER BY text_hash",
        [model],
    ).fetchall()


def test_put_then_get_returns_the_same_vectors(database_url: str) -> None:
    model = unique_model()
    stored = vectors(3)
    hashes = [text_hash(f"a.b: text {i}") for i in range(3)]
    with EmbeddingCache(database_url) as cache:
        assert cache.get_many(model, hashes) == {}
        cache.put_many(model, dict(zip(hashes, stored, strict=True)))
        found = cache.get_many(model, [*hashes, text_hash("never stored")])
    assert set(found) == set(hashes)
    for hash_, vector in zip(hashes, stored, strict=True):
        assert found[hash_].dtype == np.float32
        assert np.array_equal(found[hash_], vector)


def test_the_cache_commits_its_own_writes_asynchronously(database_url: str) -> None:
    # A cache write can always be recomputed: the cache's own session does not wait for the
    # WAL flush of each commit; a connection the caller gives keeps the caller's setting.
    with EmbeddingCache(database_url) as cache:
        cache.put_many(unique_model(), {text_hash("a.b: async"): vectors(1)[0]})
        with cache._connection() as conn:
            assert conn.execute("SHOW synchronous_commit").fetchone() == ("off",)
    with psycopg.connect(database_url, autocommit=True) as given:
        EmbeddingCache(given).put_many(unique_model(), {text_hash("a.b: sync"): vectors(1)[0]})
        assert given.execute("SHOW synchronous_commit").fetchone() == ("on",)


def test_models_do_not_share_vectors(database_url: str) -> None:
    first, second = unique_model(), unique_model()
    hash_ = text_hash("a.b: shared text")
    with EmbeddingCache(database_url) as cache:
        cache.put_many(first, {hash_: vectors(1)[0]})
        assert cache.get_many(second, [hash_]) == {}
        assert set(cache.get_many(first, [hash_])) == {hash_}


def test_existing_entries_are_kept(database_url: str, db_conn: psycopg.Connection) -> None:
    model = unique_model()
    hash_ = text_hash("a.b: once")
    one, two = vectors(2)
    with EmbeddingCache(database_url) as cache:
        cache.put_many(model, {hash_: one})
        cache.put_many(model, {hash_: two})  # ON CONFLICT DO NOTHING
        assert np.array_equal(cache.get_many(model, [hash_])[hash_], one)
    assert cached_rows(db_conn, model) == [(hash_, 384)]


def test_a_given_connection_is_used_outside_transactions(database_url: str) -> None:
    model = unique_model()
    hash_ = text_hash("a.b: given connection")
    with psycopg.connect(database_url) as conn:  # not autocommit, no vector types yet
        cache = EmbeddingCache(conn)
        cache.put_many(model, {hash_: vectors(1)[0]})
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert set(cache.get_many(model, [hash_])) == {hash_}
        conn.execute("SELECT 1")  # the caller opens a transaction...
        with pytest.raises(RuntimeError, match="outside a transaction"):
            cache.put_many(model, {text_hash("other"): vectors(1)[0]})  # ...so writes refuse
        conn.rollback()
        cache.close()
        assert not conn.closed  # a given connection belongs to the caller


def test_concurrent_overlapping_writes_do_not_deadlock(database_url: str) -> None:
    model = unique_model()
    hashes = [text_hash(f"a.b: concurrent {i}") for i in range(40)]
    stored = dict(zip(hashes, vectors(40), strict=True))
    errors: list[BaseException] = []

    def writer(order: list[str]) -> None:
        try:
            with EmbeddingCache(database_url) as cache:
                for _ in range(5):
                    cache.put_many(model, {h: stored[h] for h in order})
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=writer, args=(hashes,)),
        threading.Thread(target=writer, args=(hashes[::-1],)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    with EmbeddingCache(database_url) as cache:
        assert set(cache.get_many(model, hashes)) == set(hashes)


def test_service_reuses_cached_vectors_and_keys_truncated_text(
    database_url: str, db_conn: psycopg.Connection
) -> None:
    inner = DeterministicEmbedder(dimensions=384, max_tokens=4)
    embedder = CountingEmbedder(inner, name=f"det-{uuid.uuid4().hex[:8]}")
    model = f"{embedder.name}@{embedder.version}"
    long_text = "a.b: one two three four five"
    requests = [
        EmbedRequest("e:1", "a.b: red"),
        EmbedRequest("e:2", "a.b: red"),
        EmbedRequest("e:3", long_text),
    ]
    with EmbeddingCache(database_url) as cache:
        first = EmbeddingService(embedder, EmbeddingSettings(), cache).embed(requests)
        assert embedder.calls == 1 and len(embedder.texts) == 2  # "red" once
        assert [r.cached for r in first] == [False, False, False]
        kept = inner.truncate(long_text, 4, "end")
        assert {h for h, _ in cached_rows(db_conn, model)} == {
            text_hash("a.b: red"),
            text_hash(kept),  # the text the vector is of, not the original
        }
        again = EmbeddingService(embedder, EmbeddingSettings(), cache)
        second = again.embed(requests)
    assert embedder.calls == 1
    assert [r.cached for r in second] == [True, True, True]
    assert [r.truncation for r in second] == [None, None, "end"]
    for a, b in zip(first, second, strict=True):
        assert np.array_equal(a.vector, b.vector)
    assert (again.stats.cache_hits, again.stats.model_calls) == (2, 0)


@pytest.fixture(scope="module")
def real_embedder() -> Embedder:
    return load_embedder(EmbeddingSettings())


@pytest.mark.model
def test_the_same_text_is_never_embedded_twice_per_model(
    database_url: str, real_embedder: Embedder
) -> None:
    texts = [
        "subscription.product.name: Fibre Business 1 Gbit/s",
        "subscription.customer.name: Acme Logistics B.V.",
    ]
    counting = CountingEmbedder(real_embedder)
    with EmbeddingCache(database_url) as cache:
        settings = EmbeddingSettings()
        # Another process may have cached these texts already: start from a known state.
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                "DELETE FROM idxr.embedding_cache WHERE model = %s AND text_hash = ANY(%s)",
                [f"{counting.name}@{counting.version}", [text_hash(t) for t in texts]],
            )
        service = EmbeddingService(counting, settings, cache)
        first = service.embed([EmbedRequest(f"sub:{i}", t) for i, t in enumerate(texts)])
        assert counting.calls == 1

        # Second embedding of the same texts (other entities, later): no model call.
        second = service.embed([EmbedRequest(f"sub:{i + 9}", t) for i, t in enumerate(texts)])
        assert counting.calls == 1
        assert all(r.cached for r in second)
        for a, b in zip(first, second, strict=True):
            assert np.array_equal(a.vector, b.vector)

        # A different model (name) does not see those vectors: it calls its model.
        other = CountingEmbedder(real_embedder, name=f"other-{uuid.uuid4().hex[:8]}")
        third = EmbeddingService(other, settings, cache).embed([EmbedRequest("sub:1", texts[0])])
        assert other.calls == 1 and third[0].cached is False
