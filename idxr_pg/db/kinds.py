"""Rows of ``idxr.entity_kinds`` and ``idxr.embedding_models``: what `register` records.

Each upsert writes only when something changed, so registering the same kinds again (every
worker and backfill start) touches no row. ``paused_at`` (`idxr-pg pause` / `resume`) is set
and cleared here only; registering a kind leaves it as it is. The model's fingerprint and
shape (``schema_fingerprint``, ``schema_shape``: what the index was built with) and the
change seen since (``schema_change``) are written by `record_schema` / `mark_schema_change`
only, on the decisions of `idxr_pg.indexing.schema_state`; the upsert leaves them alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

__all__ = [
    "RecordedSchema",
    "kind_has_rows",
    "mark_schema_change",
    "model_has_vectors",
    "pause_kind",
    "record_schema",
    "recorded_model_version",
    "recorded_schema",
    "refresh_state",
    "resume_kind",
    "set_composite",
    "set_text_search_config",
    "upsert_embedding_model",
    "upsert_entity_kind",
]

_UPSERT_MODEL_SQL = """
INSERT INTO idxr.embedding_models (name, version, dimensions, max_tokens)
VALUES (%s, %s, %s, %s)
ON CONFLICT (name) DO UPDATE SET
    version = excluded.version, dimensions = excluded.dimensions, max_tokens = excluded.max_tokens
WHERE (idxr.embedding_models.version, idxr.embedding_models.dimensions,
       idxr.embedding_models.max_tokens)
      IS DISTINCT FROM (excluded.version, excluded.dimensions, excluded.max_tokens)
"""
_UPSERT_KIND_SQL = """
INSERT INTO idxr.entity_kinds (name, model_name, source_table, refresh_policy)
VALUES (%s, %s, %s, %s)
ON CONFLICT (name) DO UPDATE SET
    model_name = excluded.model_name, source_table = excluded.source_table,
    refresh_policy = excluded.refresh_policy, updated_at = now()
WHERE (idxr.entity_kinds.model_name, idxr.entity_kinds.source_table,
       idxr.entity_kinds.refresh_policy)
      IS DISTINCT FROM (excluded.model_name, excluded.source_table, excluded.refresh_policy)
"""
_RECORDED_SCHEMA_SQL = """
SELECT schema_fingerprint, schema_shape, schema_change FROM idxr.entity_kinds WHERE name = %s
"""
_RECORD_SCHEMA_SQL = """
UPDATE idxr.entity_kinds
   SET schema_fingerprint = %(fingerprint)s, schema_shape = %(shape)s, schema_change = NULL,
       updated_at = now()
 WHERE name = %(kind)s
   AND (schema_fingerprint, schema_shape, schema_change)
       IS DISTINCT FROM (%(fingerprint)s, %(shape)s::jsonb, NULL::jsonb)
"""
_MARK_CHANGE_SQL = """
UPDATE idxr.entity_kinds SET schema_change = %(change)s
 WHERE name = %(kind)s AND schema_change IS DISTINCT FROM %(change)s::jsonb
"""
_KIND_HAS_ROWS_SQL = "SELECT EXISTS (SELECT 1 FROM idxr.search_index WHERE entity_kind = %s)"
# Pausing a kind the database has not registered yet creates its row (the worker's `register`
# fills in the rest). Pausing twice keeps the first paused_at. RETURNING: the paused_at now.
_PAUSE_SQL = """
INSERT INTO idxr.entity_kinds (name, paused_at) VALUES (%s, now())
ON CONFLICT (name) DO UPDATE SET paused_at = COALESCE(idxr.entity_kinds.paused_at, now())
RETURNING paused_at, paused_at < now() AS already
"""
# RETURNING the old paused_at (NULL: it was not paused) via a self-join on the locked row.
_RESUME_SQL = """
UPDATE idxr.entity_kinds AS ek SET paused_at = NULL
  FROM idxr.entity_kinds AS old
 WHERE ek.name = %s AND old.name = ek.name
RETURNING old.paused_at
"""
# One look-up per worker cycle and kind: paused, and whether an 'every' interval has passed.
_REFRESH_STATE_SQL = """
SELECT paused_at IS NOT NULL,
       %(interval)s::float8 IS NULL OR last_refresh_at IS NULL
           OR last_refresh_at + make_interval(secs => %(interval)s::float8) <= now()
FROM idxr.entity_kinds WHERE name = %(kind)s
"""
# SECURITY DEFINER (045_hybrid.sql): records the configuration, builds the kind's GIN index
# when it is missing or was built with another configuration; a no-op otherwise.
_TEXT_SEARCH_SQL = "SELECT idxr.set_text_search_config(%s, %s::regconfig)::text"
_COMPOSITE_SQL = """
UPDATE idxr.entity_kinds SET composite = %(template)s
 WHERE name = %(kind)s AND composite IS DISTINCT FROM %(template)s
"""
_MODEL_VERSION_SQL = "SELECT version FROM idxr.embedding_models WHERE name = %s"
_MODEL_HAS_VECTORS_SQL = """
SELECT EXISTS (
    SELECT 1 FROM idxr.search_index si
    JOIN idxr.entity_kinds ek ON ek.name = si.entity_kind
    WHERE ek.model_name = %s AND si.embedding IS NOT NULL
)
"""


def upsert_embedding_model(
    conn: psycopg.Connection, name: str, version: str, dimensions: int, max_tokens: int
) -> None:
    conn.execute(_UPSERT_MODEL_SQL, [name, version, dimensions, max_tokens])


def upsert_entity_kind(
    conn: psycopg.Connection,
    name: str,
    model_name: str,
    source_table: str,
    refresh_policy: str,
) -> None:
    conn.execute(_UPSERT_KIND_SQL, [name, model_name, source_table, refresh_policy])


@dataclass(frozen=True)
class RecordedSchema:
    """What ``idxr.entity_kinds`` holds about a kind's model (each None: not recorded)."""

    fingerprint: str | None
    shape: dict[str, Any] | None  # {"fields": {...}, "exclude_paths": [...]}
    change: dict[str, Any] | None  # the change last seen; None: up to date


def recorded_schema(conn: psycopg.Connection, kind: str) -> RecordedSchema | None:
    """The recorded fingerprint, shape and change of ``kind`` (None: no row)."""
    row = conn.execute(_RECORDED_SCHEMA_SQL, [kind]).fetchone()
    return None if row is None else RecordedSchema(row[0], row[1], row[2])


def record_schema(
    conn: psycopg.Connection, kind: str, fingerprint: str, shape: dict[str, Any]
) -> bool:
    """Record the model the index of ``kind`` now matches (clears the change); True if it
    wrote (a row already equal is left as it is)."""
    params = {"kind": kind, "fingerprint": fingerprint, "shape": Jsonb(shape)}
    return conn.execute(_RECORD_SCHEMA_SQL, params).rowcount > 0


def mark_schema_change(conn: psycopg.Connection, kind: str, change: dict[str, Any] | None) -> None:
    """Record what differs in the model (None: nothing); writes only when it is news."""
    conn.execute(
        _MARK_CHANGE_SQL, {"kind": kind, "change": None if change is None else Jsonb(change)}
    )


def kind_has_rows(conn: psycopg.Connection, kind: str) -> bool:
    """Whether ``idxr.search_index`` holds any row of ``kind``."""
    row = conn.execute(_KIND_HAS_ROWS_SQL, [kind]).fetchone()
    return bool(row and row[0])


def recorded_model_version(conn: psycopg.Connection, name: str) -> str | None:
    """The version recorded for embedding model ``name`` (None: never registered)."""
    row = conn.execute(_MODEL_VERSION_SQL, [name]).fetchone()
    return None if row is None else row[0]


def model_has_vectors(conn: psycopg.Connection, name: str) -> bool:
    """Whether ``idxr.search_index`` holds vectors of kinds recorded with model ``name``."""
    row = conn.execute(_MODEL_HAS_VECTORS_SQL, [name]).fetchone()
    return bool(row and row[0])


def pause_kind(conn: psycopg.Connection, name: str) -> tuple[datetime, bool]:
    """Pause ``name``: (since when it is paused, whether it already was)."""
    row = conn.execute(_PAUSE_SQL, [name]).fetchone()
    assert row is not None
    return row[0], bool(row[1])


def resume_kind(conn: psycopg.Connection, name: str) -> datetime | None:
    """Resume ``name``; returns since when it had been paused (None: it was not paused)."""
    row = conn.execute(_RESUME_SQL, [name]).fetchone()
    return None if row is None else row[0]


@dataclass(frozen=True)
class RefreshState:
    paused: bool  # `idxr-pg pause KIND`
    due: bool  # its refresh interval has passed since the last refresh (by any worker)


def refresh_state(
    conn: psycopg.Connection, name: str, interval: float | None = None
) -> RefreshState:
    """Whether ``name`` is paused, and whether ``interval`` seconds have passed since it was
    last refreshed (always due without an interval). A kind without a row is neither paused
    nor ever refreshed."""
    params = {"kind": name, "interval": None if interval is None else float(interval)}
    row = conn.execute(_REFRESH_STATE_SQL, params).fetchone()
    if row is None:
        return RefreshState(paused=False, due=True)
    return RefreshState(paused=bool(row[0]), due=bool(row[1]))


def set_text_search_config(conn: psycopg.Connection, kind: str, config: str | None) -> str:
    """Record the kind's text search configuration (None: the default) and build its full-text
    index if missing or built with another one; returns the configuration in use."""
    return conn.execute(_TEXT_SEARCH_SQL, [kind, config]).fetchone()[0]


def set_composite(conn: psycopg.Connection, kind: str, template: str | None) -> None:
    """Record the kind's composite template (None: none); entity search reads it."""
    conn.execute(_COMPOSITE_SQL, {"kind": kind, "template": template})
