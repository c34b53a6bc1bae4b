"""Rows of ``idxr.embedding_cache``: (model key, text hash) → vector.

`idxr_pg.embedding.cache.EmbeddingCache` owns the connection and the transactions; these are
its statements.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import psycopg

from idxr_pg.db import staging

__all__ = ["cached_hashes", "insert_vectors", "select_vectors"]

_SELECT = (
    "SELECT text_hash, embedding FROM idxr.embedding_cache WHERE model = %s AND text_hash = ANY(%s)"
)
_CACHED = "SELECT text_hash FROM idxr.embedding_cache WHERE model = %s AND text_hash = ANY(%s)"
_INSERT = (
    "INSERT INTO idxr.embedding_cache (model, text_hash, embedding) VALUES (%s, %s, %s) "
    "ON CONFLICT (model, text_hash) DO NOTHING"
)
_STAGE_TABLE = "idxr_stage_embedding_cache"
_STAGE_COLUMNS = (("model", "text"), ("text_hash", "text"), ("embedding", "vector"))
# In (model, hash) order so that concurrent writers of overlapping sets cannot deadlock.
_INSERT_STAGED = (
    "INSERT INTO idxr.embedding_cache (model, text_hash, embedding) "
    "SELECT model, text_hash, embedding FROM pg_temp.idxr_stage_embedding_cache "
    "ORDER BY model, text_hash ON CONFLICT (model, text_hash) DO NOTHING"
)


def select_vectors(
    conn: psycopg.Connection, model_key: str, text_hashes: Sequence[str]
) -> list[tuple[str, Any]]:
    """``(text_hash, vector)`` for the cached ones among ``text_hashes``. Binary results: a
    vector loads as its float32 bytes instead of being parsed from text (ten times faster)."""
    return conn.execute(_SELECT, [model_key, list(text_hashes)], binary=True).fetchall()


def cached_hashes(conn: psycopg.Connection, model_key: str, text_hashes: Sequence[str]) -> set[str]:
    """The ones among ``text_hashes`` that are cached (no vectors read)."""
    return {row[0] for row in conn.execute(_CACHED, [model_key, list(text_hashes)])}


def insert_vectors(conn: psycopg.Connection, rows: Iterable[tuple[str, str, Any]]) -> None:
    """Insert ``(model_key, text_hash, vector)`` rows in (model, hash) order; cached ones stay.
    One binary COPY into the session's staging table and one INSERT from it
    (`idxr_pg.db.staging`), or one INSERT per row without the TEMPORARY right."""
    if not staging.can_stage(conn):
        with conn.cursor() as cur:
            cur.executemany(_INSERT, sorted(rows, key=lambda row: row[:2]))
        return
    staging.copy_into_stage(conn, _STAGE_TABLE, _STAGE_COLUMNS, rows)
    conn.execute(_INSERT_STAGED)
