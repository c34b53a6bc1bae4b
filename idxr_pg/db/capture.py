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
    "C_EXTENSION",
    "C_FUNCTION",
    "INSTALL_LOCK_KEY",
    "c_extension_schema",
    "create_c_extension",
    "may_execute_c_function",
    "forget_statement",
    "installed_readers",
    "installed_rows",
    "lock_installs",
    "record_statement",
]

INSTALL_LOCK_KEY = 0x1D58_CA97  # pg_advisory_xact_lock key serialising installs and drops
C_EXTENSION = "idxr_capture"  # the trusted extension of idxr_pg/capture/c, created in schema idxr
C_FUNCTION = "idxr_capture"  # its one trigger function, idxr.idxr_capture()

_C_STATE_SQL = """
SELECT (SELECT n.nspname FROM pg_catalog.pg_extension e
          JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
         WHERE e.extname = %(name)s),
       EXISTS (SELECT FROM pg_catalog.pg_available_extensions WHERE name = %(name)s)
"""
_C_EXECUTE_SQL = """
SELECT COALESCE((SELECT pg_catalog.has_function_privilege(p.oid, 'EXECUTE')
                   FROM pg_catalog.pg_proc p
                  WHERE p.pronamespace = 'idxr'::regnamespace AND p.proname = %(name)s
                    AND p.pronargs = 0), false)
"""

_LOCK_SQL = "SELECT pg_catalog.pg_advisory_xact_lock(%s)"

# Per recorded target: the capture triggers on its source table, the tables of the source's
# partition tree that lack some of the four, the distinct firing modes (pg_trigger.tgenabled:
# O origin, A always, R replica, D disabled) of all its triggers, the row-level triggers on its
# source table calling its replica function (``--always``), whose name is the recorded one with
# the prefix %(prefix)s replaced by %(replica_prefix)s, and the (schema, table, trigger) of each
# of its triggers that call the C function anywhere in the tree.
#
# A capture trigger of a target calls either the target's own plpgsql function (named in the
# record) or the shared C function idxr.idxr_capture() with the target's kind and source table
# as its first two arguments (`mine`; pg_trigger.tgargs holds NUL-terminated arguments).
_INSTALLED_SQL = """
SELECT ct.function_name, ct.entity_kind, ct.source_table,
       (SELECT COALESCE(array_agg(t.tgname::text ORDER BY t.tgname), '{}')
          FROM pg_catalog.pg_trigger t
         WHERE t.tgrelid = src.rel AND {mine}),
       (SELECT COALESCE(array_agg(pt.relid::regclass::text ORDER BY 1), '{}')
          FROM pg_catalog.pg_partition_tree(src.rel) AS pt
         WHERE (SELECT count(*) FROM pg_catalog.pg_trigger t
                 WHERE t.tgrelid = pt.relid AND {mine}) < 4),
       (SELECT COALESCE(array_agg(DISTINCT t.tgenabled::text ORDER BY t.tgenabled::text), '{}')
          FROM pg_catalog.pg_trigger t
         WHERE t.tgfoid = f.oid OR (t.tgfoid = cf.oid AND {mine})),
       (SELECT COALESCE(array_agg(t.tgname::text ORDER BY t.tgname), '{}')
          FROM pg_catalog.pg_trigger t
          JOIN pg_catalog.pg_proc rf ON rf.oid = t.tgfoid
         WHERE rf.pronamespace = 'idxr'::regnamespace AND rf.pronargs = 0
           AND rf.proname = %(replica_prefix)s::text
               || pg_catalog.substr(ct.function_name, pg_catalog.length(%(prefix)s::text) + 1)
           AND t.tgrelid = src.rel),
       (SELECT COALESCE(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_array(n.nspname, c.relname,
                                                                         t.tgname)
                                             ORDER BY n.nspname, c.relname, t.tgname), '[]')
          FROM pg_catalog.pg_trigger t
          JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
          JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
         WHERE t.tgfoid = cf.oid AND pg_catalog.position(t.tgargs, k.args) = 1)
  FROM idxr.capture_triggers ct
 CROSS JOIN LATERAL pg_catalog.to_regclass(pg_catalog.format('%%I.%%I',
     pg_catalog.split_part(ct.source_table, '.', 1),
     pg_catalog.split_part(ct.source_table, '.', 2))) AS src (rel)
 CROSS JOIN LATERAL (SELECT pg_catalog.convert_to(ct.entity_kind, pg_catalog.getdatabaseencoding())
                            || pg_catalog.decode('00', 'hex')
                            || pg_catalog.convert_to(ct.source_table,
                                                     pg_catalog.getdatabaseencoding())
                            || pg_catalog.decode('00', 'hex')) AS k (args)
  LEFT JOIN pg_catalog.pg_proc f
         ON f.proname = ct.function_name
        AND f.pronamespace = 'idxr'::regnamespace AND f.pronargs = 0
  LEFT JOIN pg_catalog.pg_proc cf
         ON cf.proname = %(c_function)s
        AND cf.pronamespace = 'idxr'::regnamespace AND cf.pronargs = 0
 WHERE %(kinds)s::text[] IS NULL OR ct.entity_kind = ANY(%(kinds)s::text[])
 ORDER BY 2, 3
""".replace(
    "{mine}",
    "(t.tgfoid = f.oid OR (t.tgfoid = cf.oid AND pg_catalog.position(t.tgargs, k.args) = 1))",
)

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


def c_extension_schema(conn: psycopg.Connection) -> tuple[str | None, bool]:
    """(schema the C capture extension is created in, or None; whether the server has it)."""
    schema, available = conn.execute(_C_STATE_SQL, {"name": C_EXTENSION}).fetchone()
    return schema, bool(available)


def may_execute_c_function(conn: psycopg.Connection) -> bool:
    """Whether the current role may attach idxr.idxr_capture() to a trigger (EXECUTE: granted
    to the role that created the extension only)."""
    return bool(conn.execute(_C_EXECUTE_SQL, {"name": C_FUNCTION}).fetchone()[0])


def create_c_extension(conn: psycopg.Connection) -> str | None:
    """``CREATE EXTENSION IF NOT EXISTS idxr_capture`` (in schema idxr: its control file says
    so) in a savepoint; None if it exists now, else why not (the server's message)."""
    try:
        with conn.transaction():
            conn.execute(
                sql.SQL("CREATE EXTENSION IF NOT EXISTS {}").format(sql.Identifier(C_EXTENSION))
            )
    except psycopg.Error as exc:
        return (exc.diag.message_primary or str(exc)).strip()
    return None


def lock_installs(conn: psycopg.Connection) -> None:
    """Serialise trigger installs and drops (transaction-scoped advisory lock)."""
    conn.execute(_LOCK_SQL, [INSTALL_LOCK_KEY])


def installed_rows(
    conn: psycopg.Connection,
    kinds: Iterable[str] | None = None,
    *,
    replica_prefix: tuple[str, str] = ("capture_", "replica_"),
) -> list[
    tuple[str, str, str, list[str], list[str], list[str], list[str], list[tuple[str, str, str]]]
]:
    """``(function, kind, source table, triggers on it, partitions missing triggers, firing
    modes of its triggers, row-level replica triggers on the source table, (schema, table,
    trigger) of its triggers calling the C function)`` per row.

    ``replica_prefix``: (prefix of a capture function's name, the prefix that replaces it in
    the name of the kind's replica function).
    """
    kind_list = None if kinds is None else list(kinds)
    prefix, replica = replica_prefix
    params = {
        "kinds": kind_list,
        "prefix": prefix,
        "replica_prefix": replica,
        "c_function": C_FUNCTION,
    }
    return [
        (*row[:7], [tuple(t) for t in row[7]])
        for row in conn.execute(_INSTALLED_SQL, params).fetchall()
    ]


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
