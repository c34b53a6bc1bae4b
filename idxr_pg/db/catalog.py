"""Catalog look-ups: is idxr-pg installed here, which tables and columns exist.

The one place that asks PostgreSQL's catalog about the database idxr-pg runs in: the server
version and extensions, configured table names resolved to relations, their columns, key types
and partitions, and the size of the index's embedding column.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import psycopg
from psycopg import sql

from idxr_pg.errors import IdxrError

__all__ = [
    "Relation",
    "UnknownTableError",
    "available_extensions",
    "embedding_dimensions",
    "idxr_installed",
    "index_leads_with",
    "partition_tree",
    "probe_row_expression",
    "resolve_table",
    "server_version",
    "table_columns",
]

_IDXR_INSTALLED_SQL = "SELECT pg_catalog.to_regclass('idxr.search_index') IS NOT NULL"
_SERVER_VERSION_SQL = (
    "SELECT pg_catalog.current_setting('server_version_num')::int,"
    " pg_catalog.current_setting('server_version')"
)
_EXTENSIONS_SQL = (
    "SELECT name, default_version FROM pg_catalog.pg_available_extensions WHERE name = ANY(%s)"
)
_RELATION_SQL = """
SELECT c.oid, n.nspname, c.relname, c.relkind
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.oid = pg_catalog.to_regclass(%s)
"""
_COLUMNS_SQL = """
SELECT attname, pg_catalog.format_type(atttypid, atttypmod)
  FROM pg_catalog.pg_attribute
 WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped
 ORDER BY attnum
"""
_PARTITION_TREE_SQL = """
SELECT n.nspname, c.relname
  FROM pg_catalog.pg_partition_tree(%s::oid::regclass) AS pt
  JOIN pg_catalog.pg_class c ON c.oid = pt.relid
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 ORDER BY pt.level, n.nspname, c.relname
"""
_EMBEDDING_DIMENSIONS_SQL = """
SELECT atttypmod FROM pg_catalog.pg_attribute
 WHERE attrelid = 'idxr.search_index'::regclass AND attname = 'embedding'
"""
_INDEX_LEADS_WITH_SQL = """
SELECT EXISTS (
    SELECT 1 FROM pg_catalog.pg_index i
    JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
    WHERE i.indrelid = pg_catalog.to_regclass(%(regclass)s) AND a.attname = %(column)s
)
"""
_RELKINDS = {"v": "a view", "m": "a materialized view", "f": "a foreign table"}


class UnknownTableError(IdxrError):
    """A configured table name resolves to no relation (``str``: ``table <name> does not exist``)."""

    def __init__(self, table: str) -> None:
        super().__init__(f"table {table} does not exist")
        self.table = table


@dataclass(frozen=True)
class Relation:
    """A configured table name as the catalog knows it."""

    oid: int
    schema: str
    name: str
    relkind: str  # pg_class.relkind: 'r' table, 'p' partitioned table, 'v' view, ...

    @property
    def qualified(self) -> str:
        """``schema.name``, unquoted (for messages and bookkeeping)."""
        return f"{self.schema}.{self.name}"

    @property
    def identifier(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    @property
    def is_table(self) -> bool:
        """A plain or partitioned table (what capture triggers can be put on)."""
        return self.relkind in ("r", "p")

    @property
    def description(self) -> str:
        """What the relation is, for "... is a view" messages."""
        if self.is_table:
            return "a table"
        return _RELKINDS.get(self.relkind, f"not a table (relkind {self.relkind!r})")


def idxr_installed(conn: psycopg.Connection) -> bool:
    """Whether the idxr schema (its index table) exists in the connected database."""
    row = conn.execute(_IDXR_INSTALLED_SQL).fetchone()
    return bool(row and row[0])


def server_version(conn: psycopg.Connection) -> tuple[int, str]:
    """``(server_version_num, server_version)``, e.g. ``(150008, '15.8 (Debian ...)')``."""
    number, text = conn.execute(_SERVER_VERSION_SQL).fetchone()
    return int(number), text


def available_extensions(conn: psycopg.Connection, names: Iterable[str]) -> dict[str, str | None]:
    """Default version of each named extension the server can install (None: unavailable)."""
    wanted = list(names)
    available: dict[str, str | None] = dict.fromkeys(wanted)
    available.update(dict(conn.execute(_EXTENSIONS_SQL, [wanted]).fetchall()))
    return available


def resolve_table(conn: psycopg.Connection, table: str) -> Relation:
    """The relation a configured ``'table'`` or ``'schema.table'`` names.

    Each part is taken literally (as a quoted identifier); an unqualified name is looked up on
    the search_path. Raises `UnknownTableError` when there is none.
    """
    regclass = sql.Identifier(*table.split(".")).as_string(conn)
    row = conn.execute(_RELATION_SQL, [regclass]).fetchone()
    if row is None:
        raise UnknownTableError(table)
    return Relation(*row)


def table_columns(conn: psycopg.Connection, oid: int) -> dict[str, str]:
    """``{column: SQL type as format_type spells it}`` of a relation, in column order."""
    return dict(conn.execute(_COLUMNS_SQL, [oid]).fetchall())


def partition_tree(conn: psycopg.Connection, relation: Relation) -> tuple[tuple[str, str], ...]:
    """``(schema, name)`` of the relation and every partition below it, root first."""
    rows = conn.execute(_PARTITION_TREE_SQL, [relation.oid]).fetchall()
    return tuple((schema, name) for schema, name in rows) or ((relation.schema, relation.name),)


def probe_row_expression(
    conn: psycopg.Connection, expression: str, schema: str, table: str
) -> None:
    """Check that ``expression`` (trusted config SQL) evaluates over a row of the table.

    Runs ``SELECT (<expression>)::text FROM <schema.table> AS <table> LIMIT 0`` under
    ``search_path = pg_catalog, pg_temp`` (the capture functions' path), prepared so that it is
    one statement only, inside a rolled-back transaction; reads no row. Raises `psycopg.Error`.
    """
    probe = sql.SQL("SELECT ({expression})::text FROM {table} AS {alias} LIMIT 0").format(
        expression=sql.SQL(expression),  # trusted config SQL, like a view definition
        table=sql.Identifier(schema, table),
        alias=sql.Identifier(table),
    )
    with conn.transaction(force_rollback=True):  # also undoes the SET LOCAL
        conn.execute("SET LOCAL search_path = pg_catalog, pg_temp")
        conn.execute(probe, prepare=True)


def embedding_dimensions(conn: psycopg.Connection) -> int | None:
    """The declared size of ``idxr.search_index.embedding`` (None: a bare ``vector``)."""
    row = conn.execute(_EMBEDDING_DIMENSIONS_SQL).fetchone()
    return row[0] if row and row[0] > 0 else None


def index_leads_with(conn: psycopg.Connection, schema: str, table: str, column: str) -> bool:
    """Whether some index of ``schema.table`` has ``column`` as its first column (so that key
    order range scans can use it)."""
    regclass = sql.Identifier(schema, table).as_string(conn)
    row = conn.execute(_INDEX_LEADS_WITH_SQL, {"regclass": regclass, "column": column}).fetchone()
    return bool(row and row[0])
