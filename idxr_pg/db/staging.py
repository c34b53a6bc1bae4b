"""Binary COPY into a session's temporary staging table, for set-based upserts.

A many-row upsert is written as ``COPY ... FROM STDIN (FORMAT BINARY)`` into a temporary
table of the session (``pg_temp``, created on first use, emptied at each commit) followed by
one ``INSERT ... SELECT ... ON CONFLICT`` from it, instead of one INSERT statement per row:
the rows travel in PostgreSQL's binary format (vectors through pgvector's binary dumper) and
the server runs one statement. The caller's transaction holds it all.

Temporary tables need the ``TEMPORARY`` right on the database, which PostgreSQL grants to
``PUBLIC`` by default; `can_stage` says whether this session has it (asked once per
connection), so callers fall back to plain INSERTs where a DBA revoked it.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Sequence
from typing import Any

import psycopg
from psycopg import sql

__all__ = ["can_stage", "copy_into_stage"]

_CAN_STAGE_SQL = "SELECT pg_catalog.has_database_privilege(current_database(), 'TEMPORARY')"

_can_stage: weakref.WeakKeyDictionary[psycopg.Connection, bool] = weakref.WeakKeyDictionary()


def can_stage(conn: psycopg.Connection) -> bool:
    """Whether this session may create its temporary staging tables (cached per connection)."""
    known = _can_stage.get(conn)
    if known is None:
        row = conn.execute(_CAN_STAGE_SQL).fetchone()
        known = _can_stage[conn] = bool(row and row[0])
    return known


def copy_into_stage(
    conn: psycopg.Connection,
    table: str,
    columns: Sequence[tuple[str, str]],
    rows: Iterable[Sequence[Any]],
) -> None:
    """Create ``pg_temp.<table>`` (``columns``: name and type) if this session lacks it, and
    binary-COPY ``rows`` into it. Call inside a transaction: the table is emptied on commit
    (``ON COMMIT DELETE ROWS``), so what was staged is gone after the caller's upsert."""
    name = sql.Identifier("pg_temp", table)
    definition = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(column), sql.SQL(type_)) for column, type_ in columns
    )
    conn.execute(
        sql.SQL("CREATE TEMPORARY TABLE IF NOT EXISTS {} ({}) ON COMMIT DELETE ROWS").format(
            name, definition
        )
    )
    names = sql.SQL(", ").join(sql.Identifier(column) for column, _ in columns)
    copy_sql = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(name, names)
    with conn.cursor() as cur, cur.copy(copy_sql) as copy:
        copy.set_types([type_ for _, type_ in columns])
        for row in rows:
            copy.write_row(row)
