"""Reads of the application's own source tables: entity documents, key pages, orphans.

Identifiers come from the resolved entity kind (`idxr_pg.indexing.registry.RegisteredKind`)
and are always quoted. The document of an entity is a JSON object: by default the row itself
(``to_jsonb``; only the configured ``columns`` when given, so the document depends on nothing
the capture triggers ignore); a configured ``document`` SQL replaces it. Either way
`load_documents` returns ``{entity key as text: document}`` for the keys asked; a key
without a row is absent (its entity was deleted).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import psycopg
from psycopg import sql

from idxr_pg.config import EntityConfig

__all__ = [
    "SourceKind",
    "check_document_query",
    "count_keys",
    "document_query",
    "iter_key_pages",
    "iter_orphan_batches",
    "load_documents",
    "reading_source",
]


class SourceKind(Protocol):
    """What these reads need of an entity kind (a `RegisteredKind` has it)."""

    @property
    def config(self) -> EntityConfig: ...
    @property
    def name(self) -> str: ...
    @property
    def schema(self) -> str: ...
    @property
    def table(self) -> str: ...
    @property
    def key(self) -> str: ...
    @property
    def key_type(self) -> str: ...


def _table(kind: SourceKind) -> sql.Identifier:
    return sql.Identifier(kind.schema, kind.table)


# Every read of an application table runs with these settings (issue 12, item 8), as whatever
# the table's owner attached to it (a domain CHECK, a function in a document query) runs as the
# worker: READ ONLY, so it cannot write anything; a fixed search_path, so no object of the
# owner's shadows a catalog one (these queries qualify every table: `document` SQL must too);
# row_security off, so a row-level security policy makes the read fail (a worker that neither
# owns the table nor has BYPASSRLS) instead of silently hiding rows from the index, and the
# policy's own functions never run.
_SOURCE_READ_SETTINGS = (
    "SET LOCAL transaction_read_only = on;"
    " SET LOCAL search_path = pg_catalog, pg_temp;"
    " SET LOCAL row_security = off"
)


@contextmanager
def reading_source(conn: psycopg.Connection) -> Iterator[None]:
    """A transaction for reads of application tables with the settings above: rolled back at
    the end (it only reads), so inside the caller's transaction it is a savepoint whose
    settings are undone with it."""
    with conn.transaction(force_rollback=True):
        conn.execute(_SOURCE_READ_SETTINGS)
        yield


# --------------------------------------------------------------------------- documents


_NOT_KEYS_PLACEHOLDER = re.compile(r"%(?!\(keys\)s)")


def document_query(kind: SourceKind) -> sql.Composed:
    """SQL returning ``(key text, document jsonb)`` for the keys in ``%(keys)s`` (text[]).

    In a configured ``document`` SQL only ``%(keys)s`` is a placeholder: every other ``%``
    is literal (``LIKE '%x%'``), escaped here for psycopg."""
    config = kind.config
    if config.document:
        custom = _NOT_KEYS_PLACEHOLDER.sub("%%", config.document.strip().rstrip(";"))
        # The user's SQL is trusted config (like a view definition); we only normalise its
        # two output columns to text and jsonb.
        return sql.SQL("SELECT d.k::text, d.doc::jsonb FROM ({}) AS d(k, doc)").format(
            sql.SQL(custom)
        )
    key = sql.Identifier(kind.key)
    if config.columns:
        picked = sql.SQL(", ").join(sql.Identifier("t", c) for c in config.columns)
        document = sql.SQL("(SELECT to_jsonb(s) FROM (SELECT {}) AS s)").format(picked)
    else:
        document = sql.SQL("to_jsonb(t)")
    return sql.SQL(
        "SELECT t.{key}::text, {document} FROM {table} AS t "
        "WHERE t.{key} = ANY(%(keys)s::{key_type}[])"
    ).format(key=key, document=document, table=_table(kind), key_type=sql.SQL(kind.key_type))


def check_document_query(conn: psycopg.Connection, kind: SourceKind) -> None:
    """Raise `psycopg.Error` unless the kind's document query plans: EXPLAIN (never run over
    data), with the settings it runs with (`reading_source`: read only, the fixed search_path),
    in a savepoint that is rolled back."""
    with reading_source(conn), conn.cursor() as cur:
        cur.execute(sql.SQL("EXPLAIN ") + document_query(kind), {"keys": []})


def load_documents(
    conn: psycopg.Connection, kind: SourceKind, keys: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """``{key: document}`` for the keys that have a row now; one query."""
    if not keys:
        return {}
    # JSON numbers as Decimal (integers stay int): a float would turn numeric 29.90 into 29.9
    # and 12345678901234567.89 into 12345678901234568. Registered on this cursor only.
    import json
    from decimal import Decimal
    from functools import partial

    from psycopg.types.json import set_json_loads

    with reading_source(conn), conn.cursor() as cur:
        set_json_loads(partial(json.loads, parse_float=Decimal), cur)
        rows = cur.execute(document_query(kind), {"keys": list(keys)}).fetchall()
    return {key: doc for key, doc in rows if key is not None}


# --------------------------------------------------------------------------- keys


def _first_page_sql(kind: SourceKind) -> sql.Composed:
    return sql.SQL(
        "SELECT t.{key}::text FROM {table} AS t WHERE t.{key} IS NOT NULL "
        "ORDER BY t.{key} LIMIT %(limit)s"
    ).format(key=sql.Identifier(kind.key), table=_table(kind))


def _next_page_sql(kind: SourceKind) -> sql.Composed:
    return sql.SQL(
        "SELECT t.{key}::text FROM {table} AS t WHERE t.{key} > %(after)s::{key_type} "
        "ORDER BY t.{key} LIMIT %(limit)s"
    ).format(key=sql.Identifier(kind.key), table=_table(kind), key_type=sql.SQL(kind.key_type))


def _count_sql(kind: SourceKind) -> sql.Composed:
    return sql.SQL("SELECT count(*) FROM {table} AS t WHERE t.{key} IS NOT NULL").format(
        key=sql.Identifier(kind.key), table=_table(kind)
    )


def _orphans_sql(kind: SourceKind) -> sql.Composed:
    """Indexed entity ids of the kind without a source row (a hash anti-join on the key text)."""
    return sql.SQL(
        "SELECT DISTINCT s.entity_id FROM idxr.search_index AS s "
        "WHERE s.entity_kind = %(kind)s AND NOT EXISTS ("
        "SELECT 1 FROM {table} AS t WHERE t.{key}::text = s.entity_id) "
        "ORDER BY s.entity_id"
    ).format(key=sql.Identifier(kind.key), table=_table(kind))


def count_keys(conn: psycopg.Connection, kind: SourceKind) -> int:
    """Rows of the source table with a key."""
    with reading_source(conn):
        return conn.execute(_count_sql(kind)).fetchone()[0]


def iter_key_pages(
    conn: psycopg.Connection, kind: SourceKind, *, after: str | None, page_size: int
) -> Iterator[list[str]]:
    """Pages of keys (as text) in key order, strictly after ``after``; one statement per page
    (an index range scan, so no transaction or snapshot stays open between pages)."""
    first, rest = _first_page_sql(kind), _next_page_sql(kind)
    while True:
        with reading_source(conn):
            if after is None:
                rows = conn.execute(first, {"limit": page_size}).fetchall()
            else:
                rows = conn.execute(rest, {"after": after, "limit": page_size}).fetchall()
        if not rows:
            return
        keys = [row[0] for row in rows]
        yield keys
        if len(keys) < page_size:
            return
        after = keys[-1]


def iter_orphan_batches(
    conn: psycopg.Connection, kind: SourceKind, batch_size: int
) -> Iterator[list[str]]:
    """Batches of indexed ids whose source row is gone, from a server-side cursor on ``conn``
    (a connection of its own, not in autocommit: the cursor lives in its transaction, which
    is rolled back at the end)."""
    with reading_source(conn), conn.cursor(name="idxr_backfill_orphans") as cur:
        cur.itersize = batch_size
        cur.execute(_orphans_sql(kind), {"kind": kind.name})
        while True:
            rows = cur.fetchmany(batch_size)
            if not rows:
                break
            yield [row[0] for row in rows]
    conn.rollback()
