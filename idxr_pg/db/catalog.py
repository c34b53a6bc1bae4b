"""Catalog look-ups: is idxr-pg installed here, which tables and columns exist.

The one place that asks PostgreSQL's catalog about the database idxr-pg runs in: the server
version and extensions, configured table names resolved to relations, their columns, key types
and partitions, and the size of the index's embedding column.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from idxr_pg.errors import IdxrError

__all__ = [
    "ExpressionRefs",
    "FunctionRef",
    "Relation",
    "UnknownTableError",
    "available_extensions",
    "current_schema",
    "embedding_dimensions",
    "idxr_installed",
    "index_leads_with",
    "partition_tree",
    "read_only_reason",
    "resolve_table",
    "row_expression_refs",
    "server_version",
    "table_columns",
    "unique_columns",
]

_IDXR_INSTALLED_SQL = "SELECT pg_catalog.to_regclass('idxr.search_index') IS NOT NULL"
# A hot standby (in recovery) refuses every write; a session can also be read-only by
# setting (default_transaction_read_only, e.g. ALTER ROLE ... SET, or target_session_attrs).
_READ_ONLY_SQL = (
    "SELECT pg_catalog.pg_is_in_recovery(),"
    " pg_catalog.current_setting('transaction_read_only')::boolean"
)
_SERVER_VERSION_SQL = (
    "SELECT pg_catalog.current_setting('server_version_num')::int,"
    " pg_catalog.current_setting('server_version')"
)
_EXTENSIONS_SQL = (
    "SELECT name, default_version FROM pg_catalog.pg_available_extensions WHERE name = ANY(%s)"
)
_RELATION_SQL = """
SELECT c.oid, n.nspname, c.relname, c.relkind, c.relrowsecurity
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
# Columns that alone are the key of a valid, immediate (not DEFERRABLE: no duplicates at the end
# of a statement), non-partial unique index or primary key of the relation.
_UNIQUE_COLUMNS_SQL = """
SELECT DISTINCT a.attname::text
  FROM pg_catalog.pg_index i
  JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
 WHERE i.indrelid = %s AND i.indisunique AND i.indimmediate AND i.indisvalid
   AND i.indnkeyatts = 1 AND i.indpred IS NULL AND i.indexprs IS NULL
 ORDER BY 1
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
    # pg_class.relrowsecurity: ROW LEVEL SECURITY enabled (keyword-only: subclasses add fields)
    row_security: bool = field(default=False, kw_only=True)

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


def read_only_reason(conn: psycopg.Connection) -> str | None:
    """Why nothing can be written through ``conn`` (a hot standby, or a read-only session),
    or None when writes are possible. Reads state only, so it works on a standby."""
    in_recovery, read_only = conn.execute(_READ_ONLY_SQL).fetchone()
    if in_recovery:
        return "is a hot standby in recovery (pg_is_in_recovery())"
    if read_only:
        return "is read-only for this session (transaction_read_only is on)"
    return None


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


def current_schema(conn: psycopg.Connection) -> str:
    """The schema an unqualified new table is created in (the first of the search_path)."""
    return conn.execute("SELECT current_schema()").fetchone()[0]


def resolve_table(conn: psycopg.Connection, table: str) -> Relation:
    """The relation a configured ``'table'`` or ``'schema.table'`` names.

    Each part is taken literally (as a quoted identifier); an unqualified name is looked up on
    the search_path. Raises `UnknownTableError` when there is none.
    """
    regclass = sql.Identifier(*table.split(".")).as_string(conn)
    row = conn.execute(_RELATION_SQL, [regclass]).fetchone()
    if row is None:
        raise UnknownTableError(table)
    oid, schema, name, relkind, row_security = row
    return Relation(oid, schema, name, relkind, row_security=row_security)


def table_columns(conn: psycopg.Connection, oid: int) -> dict[str, str]:
    """``{column: SQL type as format_type spells it}`` of a relation, in column order.

    Spelled under ``search_path = pg_catalog, pg_temp`` (in a rolled-back savepoint), so a
    type outside pg_catalog comes schema-qualified: the worker's reads of application tables
    (`idxr_pg.db.source.reading_source`) and the capture functions run with that path."""
    with conn.transaction(force_rollback=True):
        conn.execute("SET LOCAL search_path = pg_catalog, pg_temp")
        return dict(conn.execute(_COLUMNS_SQL, [oid]).fetchall())


def unique_columns(conn: psycopg.Connection, oid: int) -> frozenset[str]:
    """Columns that each alone are unique in the relation at the end of every statement: the
    key column of a valid, non-deferrable, non-partial one-column unique index or primary key."""
    return frozenset(row[0] for row in conn.execute(_UNIQUE_COLUMNS_SQL, [oid]))


def partition_tree(conn: psycopg.Connection, relation: Relation) -> tuple[tuple[str, str], ...]:
    """``(schema, name)`` of the relation and every partition below it, root first."""
    rows = conn.execute(_PARTITION_TREE_SQL, [relation.oid]).fetchall()
    return tuple((schema, name) for schema, name in rows) or ((relation.schema, relation.name),)


@dataclass(frozen=True)
class FunctionRef:
    """A function an expression calls (directly, or as an operator's implementation)."""

    schema: str
    name: str
    volatility: str  # pg_proc.provolatile: 'i' immutable, 's' stable, 'v' volatile

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True)
class ExpressionRefs:
    """What a row expression refers to beyond the row's own table, as the catalog knows it."""

    functions: tuple[FunctionRef, ...]
    relations: tuple[Relation, ...]  # other relations it reads (subqueries)
    row_security: tuple[str, ...]  # of those, the ones with row level security enabled
    domains: tuple[str, ...]  # domain types outside pg_catalog (their checks call functions)


_PROBE_VIEW = "idxr_key_probe"
_PROBE_TREE_SQL = f"""
SELECT r.ev_action::text FROM pg_catalog.pg_rewrite r
 WHERE r.ev_class = 'pg_temp.{_PROBE_VIEW}'::pg_catalog.regclass
"""
# Everything the view's rule records a dependency on (pinned built-ins are not recorded).
_PROBE_DEPENDS_SQL = f"""
SELECT d.refclassid::pg_catalog.regclass::text, d.refobjid
  FROM pg_catalog.pg_depend d
  JOIN pg_catalog.pg_rewrite r ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass
                               AND d.objid = r.oid
 WHERE r.ev_class = 'pg_temp.{_PROBE_VIEW}'::pg_catalog.regclass
"""
_PROBE_FUNCTIONS_SQL = """
SELECT DISTINCT n.nspname, p.proname, p.provolatile
  FROM pg_catalog.pg_proc p
  JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
 WHERE p.oid = ANY(%(functions)s::oid[])
    OR p.oid IN (SELECT o.oprcode FROM pg_catalog.pg_operator o
                  WHERE o.oid = ANY(%(operators)s::oid[]))
 ORDER BY 1, 2
"""
_PROBE_RELATIONS_SQL = """
SELECT c.oid, n.nspname, c.relname, c.relkind, c.relrowsecurity
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.oid = ANY(%(relations)s::oid[]) AND c.oid <> %(table)s
   AND c.oid <> 'pg_temp.{view}'::pg_catalog.regclass
 ORDER BY 2, 3
""".replace("{view}", _PROBE_VIEW)
_PROBE_DOMAINS_SQL = """
SELECT pg_catalog.format_type(t.oid, NULL)
  FROM pg_catalog.pg_type t
 WHERE t.oid = ANY(%(types)s::oid[]) AND t.typtype = 'd'
   AND t.typnamespace <> 'pg_catalog'::pg_catalog.regnamespace
 ORDER BY 1
"""
# Node fields of a stored query tree (pg_node_tree text) that name what it calls or reads.
_NODE_FUNCTION = re.compile(r":(?:funcid|opfuncid|aggfnoid|winfnoid) (\d+)")
_NODE_OPERATOR = re.compile(r":opno (\d+)")
_NODE_OPERATORS = re.compile(r":opnos \(o ([\d ]+)\)")
_NODE_RELATION = re.compile(r":relid (\d+)")


def row_expression_refs(
    conn: psycopg.Connection, expression: str, schema: str, table: str
) -> ExpressionRefs:
    """Parse ``expression`` (config SQL over a row of ``schema.table``) without running it, and
    list the functions, operators, relations and domains it refers to.

    Method: inside a transaction that is always rolled back, under the capture functions'
    ``search_path = pg_catalog, pg_temp``, create ``CREATE TEMP VIEW idxr_key_probe AS SELECT
    (<expression>)::text FROM <schema.table> AS <table>`` (sent as one prepared statement, so
    a second statement cannot ride along). Creating a view only parses and analyses the query:
    no function is called, no row is read, nothing is planned (planning would fold immutable
    calls, i.e. run them). Then the catalog says what it refers to: the rule's stored query
    tree (``pg_rewrite.ev_action``) names every function, aggregate, window function, operator
    and relation by oid, built-ins included, and ``pg_depend`` lists every non-built-in object
    the rule depends on (functions, relations, types). Both are resolved through ``pg_proc``
    (operators through ``pg_operator.oprcode``), ``pg_class`` and ``pg_type``. EXPLAIN would
    give the calls only as text. Raises `psycopg.Error` when the expression does not parse.
    """
    view = sql.SQL("CREATE TEMP VIEW {view} AS SELECT ({expression})::text FROM {table} AS {alias}")
    probe = view.format(
        view=sql.Identifier(_PROBE_VIEW),
        expression=sql.SQL(expression),  # lexically checked config SQL; parsed, never run
        table=sql.Identifier(schema, table),
        alias=sql.Identifier(table),
    )
    with conn.transaction(force_rollback=True):  # also undoes the SET LOCAL and the view
        conn.execute("SET LOCAL search_path = pg_catalog, pg_temp")
        conn.execute(probe, prepare=True)
        (tree,) = conn.execute(_PROBE_TREE_SQL).fetchone()
        depends = conn.execute(_PROBE_DEPENDS_SQL).fetchall()
        table_oid = conn.execute(
            "SELECT %s::pg_catalog.regclass::oid", [sql.Identifier(schema, table).as_string(conn)]
        ).fetchone()[0]
        by_class: dict[str, set[int]] = {}
        for class_name, oid in depends:
            by_class.setdefault(class_name.rsplit(".", 1)[-1], set()).add(int(oid))
        functions = {int(o) for o in _NODE_FUNCTION.findall(tree)} | by_class.get("pg_proc", set())
        operators = {int(o) for o in _NODE_OPERATOR.findall(tree)} | by_class.get(
            "pg_operator", set()
        )
        for group in _NODE_OPERATORS.findall(tree):
            operators.update(int(o) for o in group.split())
        relations = {int(o) for o in _NODE_RELATION.findall(tree)} | by_class.get("pg_class", set())
        found_functions = conn.execute(
            _PROBE_FUNCTIONS_SQL, {"functions": sorted(functions), "operators": sorted(operators)}
        ).fetchall()
        found_relations = conn.execute(
            _PROBE_RELATIONS_SQL, {"relations": sorted(relations), "table": table_oid}
        ).fetchall()
        domains = conn.execute(
            _PROBE_DOMAINS_SQL, {"types": sorted(by_class.get("pg_type", set()))}
        ).fetchall()
    return ExpressionRefs(
        functions=tuple(FunctionRef(*row) for row in found_functions),
        relations=tuple(
            Relation(oid, nsp, name, kind) for oid, nsp, name, kind, _ in found_relations
        ),
        row_security=tuple(f"{nsp}.{name}" for _, nsp, name, _, rls in found_relations if rls),
        domains=tuple(name for (name,) in domains),
    )


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
