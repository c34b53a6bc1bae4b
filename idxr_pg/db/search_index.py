"""The runtime SQL of ``idxr.search_index``: stored hashes, upserts, deletes; and the kind
refresh stamp in ``idxr.entity_kinds`` (`stamp_kind`; `idxr_pg.db.kinds.refresh_state` reads it)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from idxr_pg.db import staging

__all__ = [
    "ROW_COLUMNS",
    "UPSERT_SET",
    "delete_entities",
    "delete_paths",
    "stamp_kind",
    "stored_state",
    "trim_chunks",
    "upsert_records",
]

# One row per field (chunk 0; schema/019_chunks.sql); `cut`: stored truncated, not chunked.
# One index probe per entity id, whatever the statistics say: the subquery is kept apart from
# the join (OFFSET 0), so it is planned for one id at a time. The plain form (entity_id =
# ANY(ids)) let the planner, with statistics from when the table was smaller (a bulk load
# grows it faster than autoanalyze follows), scan the whole kind and filter it instead of
# probing 256 ids: a backfill's batch time then grew with the table (149 -> 688 ms per batch
# from 10k to 1M records, docs/benchmarks.md, Throughput, fourth pass).
_STORED_SQL = """
SELECT s.entity_id, s.path::text, s.content_hash, s.truncation IS NOT NULL AND s.chunk_start IS NULL
FROM (SELECT DISTINCT unnest(%(ids)s::text[])) AS k(entity_id)
CROSS JOIN LATERAL (
    SELECT r.entity_id, r.path, r.content_hash, r.truncation, r.chunk_start
    FROM idxr.search_index AS r
    WHERE r.entity_kind = %(kind)s AND r.entity_id = k.entity_id AND r.chunk = 0
    OFFSET 0
) AS s
"""

# updated_at moves only for rows written here: the pipeline writes changed rows only.
# The staged form (binary COPY into pg_temp, then this one statement) is the write path;
# _UPSERT_SQL, one INSERT per row, serves sessions without the TEMPORARY right.
_STAGE_TABLE = "idxr_stage_search_index"
# The columns of a row as the pipeline hands it over (also `db/versions.VersionRows`'s).
ROW_COLUMNS = (
    ("entity_kind", "text"),
    ("entity_id", "text"),
    ("path", "text"),
    ("value", "text"),
    ("value_type", "text"),
    ("content_hash", "text"),
    ("embedding", "vector"),
    ("truncation", "text"),
    ("chunk", "integer"),
    ("chunk_start", "integer"),
    ("chunk_end", "integer"),
)
# What an upsert changes in a row that exists: one clause for the staged and the per-row path
# (and for the rows of versions that are not active, `db/versions.py`).
UPSERT_SET = """
    value = excluded.value,
    value_type = excluded.value_type,
    content_hash = excluded.content_hash,
    embedding = excluded.embedding,
    truncation = excluded.truncation,
    chunk_start = excluded.chunk_start,
    chunk_end = excluded.chunk_end,
    updated_at = now()
"""
_ON_CONFLICT_UPDATE = "ON CONFLICT (entity_kind, entity_id, path, chunk) DO UPDATE SET" + UPSERT_SET

# ORDER BY: rows go in key order, so writers of overlapping rows lock them in one order.
_UPSERT_STAGED_SQL = (
    """
INSERT INTO idxr.search_index AS s
    (entity_kind, entity_id, path, value, value_type, content_hash, embedding, truncation,
     chunk, chunk_start, chunk_end, updated_at)
SELECT t.entity_kind, t.entity_id, t.path::ltree, t.value, t.value_type::idxr.value_type,
       t.content_hash, t.embedding, t.truncation, t.chunk, t.chunk_start, t.chunk_end, now()
FROM pg_temp.idxr_stage_search_index AS t
ORDER BY t.entity_kind, t.entity_id, t.path, t.chunk
"""
    + _ON_CONFLICT_UPDATE
)

_UPSERT_SQL = (
    """
INSERT INTO idxr.search_index AS s
    (entity_kind, entity_id, path, value, value_type, content_hash, embedding, truncation,
     chunk, chunk_start, chunk_end, updated_at)
VALUES (%s, %s, %s::ltree, %s, %s::idxr.value_type, %s, %s::vector, %s, %s, %s, %s, now())
"""
    + _ON_CONFLICT_UPDATE
)

_DELETE_PATHS_SQL = """
DELETE FROM idxr.search_index AS s
USING unnest(%(ids)s::text[], %(paths)s::ltree[]) AS d(entity_id, path)
WHERE s.entity_kind = %(kind)s AND s.entity_id = d.entity_id AND s.path = d.path
"""

# The chunk rows of a rewritten field beyond its new number of chunks.
_TRIM_CHUNKS_SQL = """
DELETE FROM idxr.search_index AS s
USING unnest(%(ids)s::text[], %(paths)s::ltree[], %(keep)s::integer[]) AS d(entity_id, path, keep)
WHERE s.entity_kind = %(kind)s AND s.entity_id = d.entity_id AND s.path = d.path
  AND s.chunk >= d.keep
"""

_DELETE_ENTITIES_SQL = """
DELETE FROM idxr.search_index WHERE entity_kind = %(kind)s AND entity_id = ANY(%(ids)s::text[])
"""

_STAMP_SQL = """
UPDATE idxr.entity_kinds
SET last_refresh_at = now(),
    last_embedded_at = CASE WHEN %(wrote)s THEN now() ELSE last_embedded_at END
WHERE name = %(kind)s
"""


def stored_state(
    conn: psycopg.Connection, kind: str, ids: Sequence[str]
) -> tuple[dict[str, dict[str, str]], list[tuple[str, str]]]:
    """``{entity_id: {path: content_hash}}`` for the ids (ids without rows are absent), and
    the (entity_id, path) of the fields stored truncated (not chunked), which a pass that
    chunks their path re-embeds."""
    out: dict[str, dict[str, str]] = {}
    cut: list[tuple[str, str]] = []
    if not ids:
        return out, cut
    rows = conn.execute(_STORED_SQL, {"kind": kind, "ids": list(ids)})
    for entity_id, path, hash_, truncated in rows:
        out.setdefault(entity_id, {})[path] = hash_
        if truncated:
            cut.append((entity_id, path))
    return out, cut


def upsert_records(conn: psycopg.Connection, rows: Sequence[Sequence[Any]]) -> int:
    """Upsert rows of (kind, entity_id, path, value, value_type, content_hash, vector|None,
    truncation, chunk, chunk_start, chunk_end) in the caller's transaction: one binary COPY into the session's staging table
    and one INSERT ... ON CONFLICT from it (`idxr_pg.db.staging`), or one INSERT per row
    where the session may not create temporary tables. Returns how many rows were written."""
    if not rows:
        return 0
    if not staging.can_stage(conn):
        with conn.cursor() as cur:
            cur.executemany(_UPSERT_SQL, rows)
        return len(rows)
    staging.copy_into_stage(conn, _STAGE_TABLE, ROW_COLUMNS, rows)
    conn.execute(_UPSERT_STAGED_SQL)
    return len(rows)


def delete_paths(conn: psycopg.Connection, kind: str, pairs: Sequence[tuple[str, str]]) -> int:
    """Delete (entity_id, path) rows of ``kind``; returns how many went."""
    if not pairs:
        return 0
    ids = [entity_id for entity_id, _ in pairs]
    paths = [path for _, path in pairs]
    return conn.execute(_DELETE_PATHS_SQL, {"kind": kind, "ids": ids, "paths": paths}).rowcount


def trim_chunks(conn: psycopg.Connection, kind: str, trims: Sequence[tuple[str, str, int]]) -> int:
    """Delete the chunk rows of rewritten fields beyond the chunks they keep: (entity_id,
    path, chunks kept) of ``kind``; returns how many went."""
    if not trims:
        return 0
    ids, paths, keep = (list(column) for column in zip(*trims, strict=True))
    params = {"kind": kind, "ids": ids, "paths": paths, "keep": keep}
    return conn.execute(_TRIM_CHUNKS_SQL, params).rowcount


def delete_entities(conn: psycopg.Connection, kind: str, ids: Sequence[str]) -> int:
    """Delete every row of these entities; returns how many went."""
    if not ids:
        return 0
    return conn.execute(_DELETE_ENTITIES_SQL, {"kind": kind, "ids": list(ids)}).rowcount


def stamp_kind(conn: psycopg.Connection, kind: str, *, wrote: bool) -> None:
    """Record that the kind's queue was processed (and, if rows changed, that it was written)."""
    conn.execute(_STAMP_SQL, {"kind": kind, "wrote": wrote})
