"""Content-addressed embedding cache in ``idxr.embedding_cache``: (model, sha256(text)) → vector.

Identical texts, across entities and across time, are embedded once per model and numeric
path: the model key (`embedding_cache_key`) names the model, its files' fingerprint, and
the backend and precision that computed the vectors, so torch float32, torch bfloat16,
ONNX float32 and ONNX int8 vectors of one text are four entries, never mixed. Reads and
writes are each their own short transaction, never part of a caller's transaction. The two
statements live in `idxr_pg.db.embedding_cache`.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from psycopg.pq import TransactionStatus

from idxr_pg.db import embedding_cache as rows_db
from idxr_pg.db.connection import commit_asynchronously, connect

__all__ = ["EmbeddingCache", "embedding_cache_key", "text_hash"]

log = logging.getLogger(__name__)

_PLAIN_PATH = ("torch", "float32")


def embedding_cache_key(name: str, fingerprint: str, backend: str, precision: str) -> str:
    """The cache's model key: ``name@fingerprint`` for torch float32 (the key from before
    backends existed, so those cached vectors stay valid), else
    ``name@fingerprint+backend-precision``."""
    if (backend, precision) == _PLAIN_PATH:
        return f"{name}@{fingerprint}"
    return f"{name}@{fingerprint}+{backend}-{precision}"


def text_hash(text: str) -> str:
    """Hex sha256 of the (possibly truncated) embedding text: the cache's content address."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class EmbeddingCache:
    """Vectors by (model key, text hash). Give a connection string (the cache then keeps one
    autocommit connection of its own, reopened when lost, whose commits are asynchronous:
    `idxr_pg.db.connection.commit_asynchronously`) or an open psycopg connection that is
    not inside a transaction when ``put_many`` runs."""

    def __init__(self, conninfo_or_connection: str | psycopg.Connection) -> None:
        if isinstance(conninfo_or_connection, str):
            self._conninfo: str | None = conninfo_or_connection
            self._conn: psycopg.Connection | None = None
        else:
            self._conninfo = None
            self._conn = conninfo_or_connection
        self._lock = threading.Lock()

    def get_many(self, model_key: str, text_hashes: Sequence[str]) -> dict[str, np.ndarray]:
        """The cached vectors among ``text_hashes`` (missing ones are absent from the result)."""
        if not text_hashes:
            return {}
        with self._connection() as conn, conn.transaction():
            rows = rows_db.select_vectors(conn, model_key, text_hashes)
        # pgvector >= 0.5 loads `vector` values as pgvector.Vector, not numpy arrays.
        return {hash_: vector.to_numpy().astype(np.float32) for hash_, vector in rows}

    def cached(self, model_key: str, text_hashes: Sequence[str]) -> set[str]:
        """Which of ``text_hashes`` are cached (reads only the hashes)."""
        if not text_hashes:
            return set()
        with self._connection() as conn, conn.transaction():
            return rows_db.cached_hashes(conn, model_key, text_hashes)

    def put_many(self, model_key: str, vectors: Mapping[str, np.ndarray]) -> None:
        """Store vectors by text hash; hashes already cached are left as they are.

        Rows go in hash order so that concurrent writers of overlapping sets cannot deadlock.
        On a database that refuses writes (a hot standby) nothing is stored and nothing raised.
        """
        if not vectors:
            return
        rows = [
            (model_key, hash_, np.asarray(vectors[hash_], dtype=np.float32))
            for hash_ in sorted(vectors)
        ]
        with self._connection() as conn:
            if conn.info.transaction_status != TransactionStatus.IDLE:
                raise RuntimeError(
                    "EmbeddingCache.put_many needs a connection outside a transaction: cache "
                    "writes commit on their own so they never hold locks for a caller"
                )
            try:
                with conn.transaction():
                    rows_db.insert_vectors(conn, rows)
            except psycopg.errors.ReadOnlySqlTransaction:
                # A hot standby (or a read-only session): reads still hit the cache the
                # primary fills; the vectors just computed are returned, only not kept.
                log.debug("embedding cache is read-only here: %d vectors not stored", len(rows))

    def close(self) -> None:
        """Close the connection the cache opened itself (a given connection stays open)."""
        with self._lock:
            if self._conninfo is not None and self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> EmbeddingCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        with self._lock:
            if self._conninfo is not None and (self._conn is None or self._conn.broken):
                if self._conn is not None:
                    self._conn.close()
                self._conn = connect(self._conninfo, autocommit=True)  # keepalives, pgvector
                commit_asynchronously(self._conn)  # a lost cache write is only recomputed
            assert self._conn is not None
            _ensure_vector_registered(self._conn)
            yield self._conn


def _ensure_vector_registered(conn: psycopg.Connection) -> None:
    """Register pgvector's types on a given connection once, ending only our own look-up."""
    if conn.adapters.types.get("vector") is not None:
        return
    was_idle = conn.info.transaction_status == TransactionStatus.IDLE
    register_vector(conn)
    if was_idle and conn.info.transaction_status == TransactionStatus.INTRANS:
        conn.commit()
