"""The global HNSW index over ``idxr.search_index.embedding`` during a bulk backfill.

One index, ``idxr.search_index_embedding_hnsw``, serves every kind; its definition lives once,
in ``idxr.set_embedding_dimensions`` (``schema/020_dimensions.sql``): called with the
dimensions the column already has, it only creates the index if it is missing, so
`build_embedding_index` reuses it. While the index is absent the planner has no index to use
and every search is an exact scan: correct, slower.
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
    "has_embeddings",
]

INDEX_NAME = "idxr.search_index_embedding_hnsw"

_EXISTS_SQL = "SELECT to_regclass('idxr.search_index_embedding_hnsw') IS NOT NULL"
_HAS_EMBEDDINGS_SQL = "SELECT EXISTS (SELECT 1 FROM idxr.search_index WHERE embedding IS NOT NULL)"
# Dropping or building an index needs ownership of the table (or membership in its owner).
_OWNS_SQL = (
    "SELECT pg_catalog.pg_has_role(current_user, c.relowner, 'USAGE') "
    "FROM pg_catalog.pg_class c WHERE c.oid = 'idxr.search_index'::regclass"
)
_DROP_SQL = "DROP INDEX IF EXISTS idxr.search_index_embedding_hnsw"
_BUILD_SQL = "SELECT idxr.set_embedding_dimensions(idxr.embedding_dimensions())"
_BUILD_LOCK_SQL = "SELECT pg_catalog.pg_advisory_xact_lock(%s, %s)"


def embedding_index_exists(conn: psycopg.Connection) -> bool:
    row = conn.execute(_EXISTS_SQL).fetchone()
    return bool(row and row[0])


def has_embeddings(conn: psycopg.Connection) -> bool:
    """True when any kind holds a vector: dropping the shared index would slow its search."""
    row = conn.execute(_HAS_EMBEDDINGS_SQL).fetchone()
    return bool(row and row[0])


def can_drop_embedding_index(conn: psycopg.Connection) -> bool:
    row = conn.execute(_OWNS_SQL).fetchone()
    return bool(row and row[0])


def drop_embedding_index(conn: psycopg.Connection) -> None:
    """Drop the HNSW index in its own short transaction."""
    with conn.transaction():
        conn.execute(_DROP_SQL)


def build_embedding_index(
    conn: psycopg.Connection, *, maintenance_work_mem: str, parallel_workers: int
) -> bool:
    """(Re)build the HNSW index if it is missing, once, with ``maintenance_work_mem`` and
    ``max_parallel_maintenance_workers`` raised for this transaction only. True when built.

    Two bulk backfills (of two kinds) may end at the same moment: the build takes an
    advisory lock first (`HNSW_BUILD_KEY`, held to commit), so the second waits for the
    first build, then finds the index and returns False, instead of both running CREATE
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
