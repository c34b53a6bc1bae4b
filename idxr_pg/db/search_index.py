"""The runtime SQL of ``idxr.search_index``: stored hashes, upserts, deletes; and the kind
refresh stamp in ``idxr.entity_kinds`` (`stamp_kind`; `idxr_pg.db.kinds.refresh_state` reads it)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

__all__ = [
    "delete_entities",
    "delete_paths",
    "stamp_kind",
    "stored_hashes",
    "upsert_records",
]

_STORED_SQL = """
SELECT entity_id, path::text, content_hash FROM idxr.search_index
WHERE entity_kind = %(kind)s AND entity_id = ANY(%(ids)s::text[])
"""

# updated_at moves only for rows written here: the pipeline writes changed rows only.
_UPSERT_SQL = """
INSERT INTO idxr.search_index AS s
    (entity_kind, entity_id, path, value, value_type, content_hash, embedding, truncation,
     updated_at)
VALUES (%s, %s, %s::ltree, %s, %s::idxr.value_type, %s, %s::vector, %s, now())
ON CONFLICT (entity_kind, entity_id, path) DO UPDATE SET
    value = excluded.value,
    value_type = excluded.value_type,
    content_hash = excluded.content_hash,
    embedding = excluded.embedding,
    truncation = excluded.truncation,
    updated_at = now()
"""

_DELETE_PATHS_SQL = """
DELETE FROM idxr.search_index AS s
USING unnest(%(ids)s::text[], %(paths)s::ltree[]) AS d(entity_id, path)
WHERE s.entity_kind = %(kind)s AND s.entity_id = d.entity_id AND s.path = d.path
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


def stored_hashes(
    conn: psycopg.Connection, kind: str, ids: Sequence[str]
) -> dict[str, dict[str, str]]:
    """``{entity_id: {path: content_hash}}`` for the ids (ids without rows are absent)."""
    out: dict[str, dict[str, str]] = {}
    if not ids:
        return out
    for entity_id, path, hash_ in conn.execute(_STORED_SQL, {"kind": kind, "ids": list(ids)}):
        out.setdefault(entity_id, {})[path] = hash_
    return out


def upsert_records(conn: psycopg.Connection, rows: Sequence[Sequence[Any]]) -> int:
    """Rows of (kind, entity_id, path, value, value_type, content_hash, vector|None, truncation)."""
    if not rows:
        return 0
    with conn.cursor() as cur:
        cur.executemany(_UPSERT_SQL, rows)
    return len(rows)


def delete_paths(conn: psycopg.Connection, kind: str, pairs: Sequence[tuple[str, str]]) -> int:
    """Delete (entity_id, path) rows of ``kind``; returns how many went."""
    if not pairs:
        return 0
    ids = [entity_id for entity_id, _ in pairs]
    paths = [path for _, path in pairs]
    return conn.execute(_DELETE_PATHS_SQL, {"kind": kind, "ids": ids, "paths": paths}).rowcount


def delete_entities(conn: psycopg.Connection, kind: str, ids: Sequence[str]) -> int:
    """Delete every row of these entities; returns how many went."""
    if not ids:
        return 0
    return conn.execute(_DELETE_ENTITIES_SQL, {"kind": kind, "ids": list(ids)}).rowcount


def stamp_kind(conn: psycopg.Connection, kind: str, *, wrote: bool) -> None:
    """Record that the kind's queue was processed (and, if rows changed, that it was written)."""
    conn.execute(_STAMP_SQL, {"kind": kind, "wrote": wrote})
