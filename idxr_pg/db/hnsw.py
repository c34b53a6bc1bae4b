"""The HNSW indexes over ``idxr.search_index.embedding``: one per vector size, and the bulk
backfill's drop-and-build-once.

The embedding column is a bare ``vector`` (kinds of different models have different sizes);
each size N in use has a partial expression index ``idxr.search_index_embedding_hnsw_N``
(``(embedding::vector(N)) WHERE vector_dims(embedding) = N``). Its definition and name live
once, in ``schema/020_dimensions.sql`` (``idxr.ensure_embedding_index``,
``idxr.embedding_index_name``); the sizes in use are those of the kinds' active and building
index versions (``idxr.embedding_sizes``). While an index is absent the planner has no index to
use for that size and every search of it is an exact scan: correct, slower.

The functions below act on the indexes of every size in use (a bulk backfill runs when the
index holds no vector at all, so there is no other kind's search to slow down).
"""

from __future__ import annotations

import psycopg

from idxr_pg.db.advisory import HNSW_BUILD_KEY

__all__ = [
    "INDEX_NAME",
    "build_embedding_index",
    "can_drop_embedding_index",
    "drop_embedding_index",
    "embedding_index_exists",
    "ensure_index",
    "has_embeddings",
]

INDEX_NAME = "idxr.search_index_embedding_hnsw_<dimensions>"
"""The HNSW indexes' names, for messages (one per vector size)."""

_MISSING_SQL = """
SELECT count(*) FROM idxr.embedding_sizes() d
 WHERE to_regclass('idxr.' || idxr.embedding_index_name(d)) IS NULL
"""
_INDEXES_SQL = """
SELECT c.relname FROM pg_catalog.pg_class c
 WHERE c.relnamespace = 'idxr'::regnamespace AND c.relkind = 'i'
   AND c.relname ~ '^search_index_embedding_hnsw_\\d+$'
"""
_HAS_EMBEDDINGS_SQL = "SELECT EXISTS (SELECT 1 FROM idxr.search_index WHERE embedding IS NOT NULL)"
# Dropping or building an index needs ownership of the table (or membership in its owner).
_OWNS_SQL = (
    "SELECT pg_catalog.pg_has_role(current_user, c.relowner, 'USAGE') "
    "FROM pg_catalog.pg_class c WHERE c.oid = 'idxr.search_index'::regclass"
)
_BUILD_SQL = "SELECT idxr.ensure_embedding_indexes()"
_ENSURE_SQL = "SELECT idxr.ensure_embedding_index(%s)"
_BUILD_LOCK_SQL = "SELECT pg_catalog.pg_advisory_xact_lock(%s, %s)"


def embedding_index_exists(conn: psycopg.Connection) -> bool:
    """True when every vector size in use has its HNSW index."""
    row = conn.execute(_MISSING_SQL).fetchone()
    return bool(row) and row[0] == 0


def has_embeddings(conn: psycopg.Connection) -> bool:
    """True when any kind holds a vector: dropping the indexes would slow its search."""
    row = conn.execute(_HAS_EMBEDDINGS_SQL).fetchone()
    return bool(row and row[0])


def can_drop_embedding_index(conn: psycopg.Connection) -> bool:
    row = conn.execute(_OWNS_SQL).fetchone()
    return bool(row and row[0])


def drop_embedding_index(conn: psycopg.Connection) -> None:
    """Drop every HNSW index in its own short transaction."""
    with conn.transaction():
        names = [name for (name,) in conn.execute(_INDEXES_SQL).fetchall()]
        for name in names:
            conn.execute(f'DROP INDEX IF EXISTS idxr."{name}"')


def ensure_index(conn: psycopg.Connection, dimensions: int) -> bool:
    """Create the index of ``dimensions``-sized vectors if it is missing (instant while no row
    has that size); True when created. Needs ownership of ``idxr.search_index``."""
    row = conn.execute(_ENSURE_SQL, [dimensions]).fetchone()
    return bool(row and row[0])


def build_embedding_index(
    conn: psycopg.Connection, *, maintenance_work_mem: str, parallel_workers: int
) -> bool:
    """(Re)build the missing HNSW indexes, once, with ``maintenance_work_mem`` and
    ``max_parallel_maintenance_workers`` raised for this transaction only. True when built.

    Two bulk backfills (of two kinds) may end at the same moment: the build takes an
    advisory lock first (`HNSW_BUILD_KEY`, held to commit), so the second waits for the
    first build, then finds the indexes and returns False, instead of both running CREATE
    INDEX (whose IF NOT EXISTS is checked before the build, not after)."""
    with conn.transaction():
        conn.execute(_BUILD_LOCK_SQL, HNSW_BUILD_KEY)
        if embedding_index_exists(conn):
            return False
        conn.execute(
            "SELECT pg_catalog.set_config('maintenance_work_mem', %s, true), "
            "pg_catalog.set_config('max_parallel_maintenance_workers', %s, true)",
            [maintenance_work_mem, str(parallel_workers)],
        )
        conn.execute(_BUILD_SQL)
    return True
