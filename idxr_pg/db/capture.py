"""The rows of ``idxr.capture_triggers``: which capture functions idxr-pg installed, and where.

The capture DDL itself (functions, triggers) is built in `idxr_pg.capture.triggers`; this module
holds the bookkeeping around it: the install lock, the record of each installed function, and
the list of installed functions with the triggers that really call them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import psycopg
from psycopg import sql

__all__ = [
    "INSTALL_LOCK_KEY",
    "forget_statement",
    "installed_readers",
    "installed_rows",
    "lock_installs",
    "record_statement",
]

INSTALL_LOCK_KEY = 0x1D58_CA97  # pg_advisory_xact_lock key serialising installs and drops

_LOCK_SQL = "SELECT pg_catalog.pg_advisory_xact_lock(%s)"

# Per recorded function: the triggers calling it on its source table, the tables of the
# source's partition tree that lack some of the four, the distinct firing modes
# (pg_trigger.tgenabled: O origin, A always, R replica, D disabled) of all its triggers, and the
# row-level triggers on its source table calling its replica function (``--always``), whose
# name is the recorded one with the prefix %(prefix)s replaced by %(replica_prefix)s.
_INSTALLED_SQL = """
SELECT ct.function_name, ct.entity_kind, ct.source_table,
       (SELECT COALESCE(array_agg(t.tgname::text ORDER BY t.tgname), '{}')
          FROM pg_catalog.pg_trigger t
         WHERE t.tgfoid = f.oid AND t.tgrelid = src.rel),
       (SELECT COALESCE(array_agg(pt.relid::regclass::text ORDER BY 1), '{}')
          FROM pg_catalog.pg_partition_tree(src.rel) AS pt
         WHERE (SELECT count(*) FROM pg_catalog.pg_trigger t
                 WHERE t.tgfoid = f.oid AND t.tgrelid = pt.relid) < 4),
       (SELECT COALESCE(array_agg(DISTINCT t.tgenabled::text ORDER BY t.tgenabled::text), '{}')
          FROM pg_catalog.pg_trigger t
         WHERE t.tgfoid = f.oid),
       (SELECT COALESCE(array_agg(t.tgname::text ORDER BY t.tgname), '{}')
          FROM pg_catalog.pg_trigger t
          JOIN pg_catalog.pg_proc rf ON rf.oid = t.tgfoid
         WHERE rf.pronamespace = 'idxr'::regnamespace AND rf.pronargs = 0
           AND rf.proname = %(replica_prefix)s::text
               || pg_catalog.substr(ct.function_name, pg_catalog.length(%(prefix)s::text) + 1)
           AND t.tgrelid = src.rel)
  FROM idxr.capture_triggers ct
 CROSS JOIN LATERAL pg_catalog.to_regclass(pg_catalog.format('%%I.%%I',
     pg_catalog.split_part(ct.source_table, '.', 1),
     pg_catalog.split_part(ct.source_table, '.', 2))) AS src (rel)
  LEFT JOIN pg_catalog.pg_proc f
         ON f.proname = ct.function_name
        AND f.pronamespace = 'idxr'::regnamespace AND f.pronargs = 0
 WHERE %(kinds)s::text[] IS NULL OR ct.entity_kind = ANY(%(kinds)s::text[])
 ORDER BY 2, 3
"""


_READERS_SQL = """
SELECT entity_kind, source_table, readers FROM idxr.capture_triggers
 WHERE %(kinds)s::text[] IS NULL OR entity_kind = ANY(%(kinds)s::text[])
 ORDER BY 1, 2
"""


def installed_readers(
    conn: psycopg.Connection, kinds: Iterable[str] | None = None
) -> list[tuple[str, str, list[dict[str, Any]]]]:
    """``(kind, source table, readers)`` as recorded at install: what each capture reads."""
    params = {"kinds": None if kinds is None else list(kinds)}
    return [(k, t, list(r)) for k, t, r in conn.execute(_READERS_SQL, params).fetchall()]


def lock_installs(conn: psycopg.Connection) -> None:
    """Serialise trigger installs and drops (transaction-scoped advisory lock)."""
    conn.execute(_LOCK_SQL, [INSTALL_LOCK_KEY])


def installed_rows(
    conn: psycopg.Connection,
    kinds: Iterable[str] | None = None,
    *,
    replica_prefix: tuple[str, str] = ("capture_", "replica_"),
) -> list[tuple[str, str, str, list[str], list[str], list[str], list[str]]]:
    """``(function, kind, source table, triggers on it, partitions missing triggers, firing
    modes of its triggers, row-level replica triggers on the source table)`` per row.

    ``replica_prefix``: (prefix of a capture function's name, the prefix that replaces it in
    the name of the kind's replica function).
    """
    kind_list = None if kinds is None else list(kinds)
    prefix, replica = replica_prefix
    params = {"kinds": kind_list, "prefix": prefix, "replica_prefix": replica}
    return conn.execute(_INSTALLED_SQL, params).fetchall()


def record_statement(
    function_name: str, kind: str, source_table: str, readers: Sequence[Mapping[str, Any]]
) -> sql.Composed:
    """Upsert of the row recording one installed capture function (part of the install script)."""
    return sql.SQL(
        "INSERT INTO idxr.capture_triggers (function_name, entity_kind, source_table, readers)\n"
        "VALUES ({name}, {kind}, {table}, {readers}::jsonb)\n"
        "ON CONFLICT (function_name) DO UPDATE\n"
        "   SET entity_kind = EXCLUDED.entity_kind, source_table = EXCLUDED.source_table,\n"
        "       readers = EXCLUDED.readers, installed_at = now()"
    ).format(
        name=sql.Literal(function_name),
        kind=sql.Literal(kind),
        table=sql.Literal(source_table),
        readers=sql.Literal(json.dumps(list(readers))),
    )


def forget_statement(function_name: str) -> sql.Composed:
    """Delete of the row recording one capture function (part of a drop script)."""
    return sql.SQL("DELETE FROM idxr.capture_triggers WHERE function_name = {}").format(
        sql.Literal(function_name)
    )
