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
index holds no vector at all, so there is no other kind's search to slow down), except the
index options (``IndexOptions``: storage ``vector`` or ``halfvec``, HNSW ``m`` and
``ef_construction``), which are per size (``idxr.embedding_index_settings``), and
``switch_index``, which rebuilds one size's index concurrently when its options changed.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from idxr_pg.db import hnsw_memory
from idxr_pg.db.advisory import HNSW_BUILD_KEY
from idxr_pg.errors import IdxrError

__all__ = [
    "DEFAULT_OPTIONS",
    "INDEX_NAME",
    "STORAGES",
    "IndexOptions",
    "IndexState",
    "build_embedding_index",
    "can_drop_embedding_index",
    "drop_embedding_index",
    "embedding_index_exists",
    "ensure_index",
    "has_embeddings",
    "index_options",
    "index_state",
    "index_states",
    "set_index_options",
    "switch_index",
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
   AND c.relname ~ '^search_index_embedding_hnsw_\\d+(_next)?$'
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
        _set_build_settings(conn, maintenance_work_mem, parallel_workers, local=True)
        conn.execute(_BUILD_SQL)
    return True


STORAGES = ("vector", "halfvec")
"""What an HNSW index may hold: float32 (``vector``, 4 bytes a dimension) or float16
(``halfvec``, 2 bytes). The column keeps float32 either way."""


@dataclass(frozen=True)
class IndexOptions:
    """How one vector size's HNSW index is built (``idxr.embedding_index_settings``)."""

    storage: str = "halfvec"
    m: int = 16
    ef_construction: int = 64


DEFAULT_OPTIONS = IndexOptions()
"""What a size without a settings row gets (mirrors ``idxr.embedding_index_options``, the
owner): halfvec, pgvector's m and ef_construction; docs/benchmarks.md, "Index storage and
build parameters"."""


@dataclass(frozen=True)
class IndexState:
    """One HNSW index of a vector size as the catalog has it."""

    name: str
    storage: str
    m: int
    ef_construction: int
    valid: bool
    bytes: int

    @property
    def options(self) -> IndexOptions:
        return IndexOptions(self.storage, self.m, self.ef_construction)


_OPTIONS_SQL = "SELECT storage, m, ef_construction FROM idxr.embedding_index_options(%s)"
_SET_OPTIONS_SQL = "SELECT idxr.set_embedding_index_options(%s, %s, %s, %s)"
_STATE_SQL = (
    "SELECT index_name, storage, m, ef_construction, valid,"
    " pg_catalog.pg_relation_size(('idxr.' || quote_ident(index_name))::regclass)"
    " FROM idxr.embedding_index_state(%s)"
)
_SIZES_SQL = "SELECT d FROM idxr.embedding_sizes() d ORDER BY d"
_NAMES_SQL = "SELECT idxr.embedding_index_name(%s), idxr.embedding_index_next_name(%s)"
_DDL_SQL = "SELECT idxr.embedding_index_ddl(%s, %s, true)"
# The HNSW build's memory and parallel workers: for its transaction (``local``, the bulk
# build) or the session (a concurrent build, which cannot run in a transaction block).
_BUILD_SETTINGS_SQL = (
    "SELECT pg_catalog.set_config('maintenance_work_mem', %(memory)s, %(local)s), "
    "pg_catalog.set_config('max_parallel_maintenance_workers', %(workers)s, %(local)s)"
)
_RESET_BUILD_SETTINGS_SQL = "RESET maintenance_work_mem; RESET max_parallel_maintenance_workers"
_SESSION_LOCK_SQL = "SELECT pg_catalog.pg_advisory_lock(%s, %s)"
_SESSION_UNLOCK_SQL = "SELECT pg_catalog.pg_advisory_unlock(%s, %s)"


def index_options(conn: psycopg.Connection, dimensions: int) -> IndexOptions:
    """How the index of ``dimensions``-sized vectors is to be built (defaults when unset)."""
    row = conn.execute(_OPTIONS_SQL, [dimensions]).fetchone()
    return IndexOptions(*row) if row else DEFAULT_OPTIONS


def index_state(conn: psycopg.Connection, dimensions: int) -> list[IndexState]:
    """The index of ``dimensions``-sized vectors (first) and one being switched to, if any."""
    return [IndexState(*row) for row in conn.execute(_STATE_SQL, [dimensions]).fetchall()]


def index_states(conn: psycopg.Connection) -> dict[int, list[IndexState]]:
    """Per vector size in use (``idxr.embedding_sizes``): its index and one being switched to
    (``index_state``); an empty list where the size has no index (searches scan exactly)."""
    sizes = [row[0] for row in conn.execute(_SIZES_SQL).fetchall()]
    return {size: index_state(conn, size) for size in sizes}


def set_index_options(
    conn: psycopg.Connection,
    dimensions: int,
    *,
    storage: str | None = None,
    m: int | None = None,
    ef_construction: int | None = None,
) -> IndexOptions:
    """Record how the index of ``dimensions``-sized vectors is built (None: keep); builds
    nothing (``switch_index`` does). Raises IdxrError naming the option pgvector would refuse."""
    try:
        with conn.transaction():
            conn.execute(_SET_OPTIONS_SQL, [dimensions, storage, m, ef_construction])
    except (psycopg.errors.RaiseException, psycopg.errors.InvalidParameterValue) as exc:
        hint = exc.diag.message_hint
        raise IdxrError(f"{exc.diag.message_primary}. {hint or ''}".strip()) from None
    return index_options(conn, dimensions)


def _set_build_settings(
    conn: psycopg.Connection, memory: str, parallel_workers: int, *, local: bool
) -> None:
    conn.execute(
        _BUILD_SETTINGS_SQL,
        {"memory": memory, "workers": str(parallel_workers), "local": local},
    )


def _drop_concurrently(conn: psycopg.Connection, name: str) -> None:
    conn.execute(
        sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier("idxr", name))
    )


def switch_index(
    conn: psycopg.Connection,
    dimensions: int,
    *,
    maintenance_work_mem: str = "auto",
    parallel_workers: int = 1,
) -> bool:
    """Make the index of ``dimensions``-sized vectors match its options, without a moment
    where search has no index: build the new definition ``CONCURRENTLY`` beside the old one
    (``..._next``), drop the old one ``CONCURRENTLY``, rename the new one. Writes go on
    meanwhile (a concurrent build does not block them). True when an index was built.

    Needs an autocommit connection owning ``idxr.search_index``. Interrupted at any step, the
    old index or the new one keeps serving (the search functions use whichever is valid,
    ``idxr.embedding_index_storage``) and the next call (or ``ensure_embedding_index``)
    finishes the switch. Holds the HNSW build lock for the session, so a bulk backfill's
    build waits for it."""
    if not conn.autocommit:
        raise ValueError("switch_index needs an autocommit connection (CREATE INDEX CONCURRENTLY)")
    conn.execute(_SESSION_LOCK_SQL, HNSW_BUILD_KEY)
    try:
        wanted = index_options(conn, dimensions)
        name, next_name = conn.execute(_NAMES_SQL, [dimensions, dimensions]).fetchone()  # type: ignore[misc]
        states = {state.name: state for state in index_state(conn, dimensions)}
        current, pending = states.get(name), states.get(next_name)
        if current and current.valid and current.options == wanted:
            if pending:
                _drop_concurrently(conn, next_name)
            return False
        built = False
        if pending and not (pending.valid and pending.options == wanted):
            _drop_concurrently(conn, next_name)
            pending = None
        if pending is None:
            memory = hnsw_memory.build_memory(conn, maintenance_work_mem)
            _set_build_settings(conn, memory, parallel_workers, local=False)
            ddl = conn.execute(_DDL_SQL, [dimensions, next_name]).fetchone()[0]  # type: ignore[index]
            try:
                conn.execute(ddl)
            finally:
                conn.execute(_RESET_BUILD_SETTINGS_SQL)
            built = True
        if current:
            _drop_concurrently(conn, name)
        conn.execute(
            sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                sql.Identifier("idxr", next_name), sql.Identifier(name)
            )
        )
        return built
    finally:
        conn.execute(_SESSION_UNLOCK_SQL, HNSW_BUILD_KEY)
