"""Rows of ``idxr.embedding_cache``: (model key, text hash) → vector.

`idxr_pg.embedding.cache.EmbeddingCache` owns the connection and the transactions; these are
its statements.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import psycopg

__all__ = ["cached_hashes", "insert_vectors", "select_vectors"]

_SELECT = (
    "SELECT text_hash, embedding FROM idxr.embedding_cache WHERE model = %s AND text_hash = ANY(%s)"
)
_CACHED = "SELECT text_hash FROM idxr.embedding_cache WHERE model = %s AND text_hash = ANY(%s)"
_INSERT = (
    "INSERT INTO idxr.embedding_cache (model, text_hash, embedding) VALUES (%s, %s, %s) "
    "ON CONFLICT (model, text_hash) DO NOTHING"
)


def select_vectors(
    conn: psycopg.Connection, model_key: str, text_hashes: Sequence[str]
) -> list[tuple[str, Any]]:
    """``(text_hash, vector)`` for the cached ones among ``text_hashes``."""
    return conn.execute(_SELECT, [model_key, list(text_hashes)]).fetchall()


def cached_hashes(conn: psycopg.Connection, model_key: str, text_hashes: Sequence[str]) -> set[str]:
    """The ones among ``text_hashes`` that are cached (no vectors read)."""
    return {row[0] for row in conn.execute(_CACHED, [model_key, list(text_hashes)])}


def insert_vectors(conn: psycopg.Connection, rows: Iterable[tuple[str, str, Any]]) -> None:
    """Insert ``(model_key, text_hash, vector)`` rows, in the order given; cached ones stay."""
    with conn.cursor() as cur:
        cur.executemany(_INSERT, rows)
