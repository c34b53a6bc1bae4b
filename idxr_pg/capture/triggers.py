"""Capture: the trigger DDL that turns writes on watched tables into idxr.queue rows.

For every entity kind, its main table and each ``watch`` table get one trigger function in the
``idxr`` schema and four statement-level AFTER triggers calling it: INSERT (NEW TABLE), UPDATE
(OLD and NEW TABLE), DELETE (OLD TABLE) and TRUNCATE. PostgreSQL refuses transition tables on a
trigger with several events, hence one trigger per event. Each statement collects its
affected entity keys; more than `BATCH_THRESHOLD` go into ONE ``idxr.queue_batches`` row as
they are (unsorted; the worker's expansion sorts and coalesces them), fewer into a pending
``idxr.queue`` row per key, coalescing into the key's pending row when it has one (``ON
CONFLICT``: a hot row updated 10,000 times leaves one queue row; see `idxr_pg.db.queue` for
the queue's rules). Only if it queued something new does it send
``pg_notify('idxr_queue', <kind>)``, and only if no other open transaction is ringing for the
kind (``pg_try_advisory_xact_lock``): NOTIFY holds a cluster-wide lock through commit.

- UPDATE compares, per key, the multiset of text projections of the columns the entity reads
  (``columns``, else the whole row) before and after; unchanged rows cancel out, so a no-op
  update enqueues nothing and a key change enqueues the old and the new key. When the kind
  reads the table through one key column that is unique there (its primary key, usually), old
  and new rows are paired by key instead (a FULL JOIN, cheaper than grouping), and the keys
  need no DISTINCT. Comparing the text form works for types without an equality operator
  (json, point, xml) and sees changes that value equality misses but the document shows
  (numeric 1.0 -> 1.00).
- TRUNCATE has no transition table: it enqueues every entity of the kind that is indexed or
  leased (being processed), so the worker deletes (main table) or reloads (child table) them.
- ``notify: false`` on a kind leaves the pg_notify (and its advisory lock) out: the worker then
  finds the rows by polling.
- Functions are SECURITY DEFINER with ``search_path = pg_catalog, pg_temp`` and qualify every
  name, so an application role needs no rights on the idxr schema. Dropping the idxr schema
  (``idxr-pg uninstall``) drops the functions and, with them, every trigger.
- Every identifier from the config is quoted. A watch ``key`` that is not a plain column name is
  an SQL expression over the row. It runs inside the SECURITY DEFINER function, as the
  installer, so it is checked without being run: lexically at config load (one expression: no
  comments, ``;``, dollar quotes, unbalanced parentheses), then at install by
  `idxr_pg.db.catalog.row_expression_refs` (parsed into a rolled-back temporary view, never
  executed or planned), which lists what it calls; functions and operators outside
  pg_catalog (their owners could redefine them), volatile functions, built-ins that run SQL by
  name, views, tables with row level security and domains outside pg_catalog are refused
  unless the watch entry says ``trusted_key: true``. Inside it the
  row's columns can be named bare or qualified by the table's own name (not its schema);
  functions outside pg_catalog must be schema-qualified.

- A partitioned table: statement-level triggers fire only for the table a statement names, so
  every table of its partition tree gets the four triggers. Partitions created or attached later
  are not captured until ``triggers install`` runs again (``triggers list`` reports them).
  Legacy inheritance children are not covered.
- Logical-replication subscribers (``triggers install --always``): a subscription's apply
  worker runs with ``session_replication_role = replica``, so ORIGIN triggers never fire, and
  it fires row-level triggers only (TRUNCATE aside; the initial table copy fires INSERT
  statement triggers). ``--always`` makes the four statement triggers ``ENABLE ALWAYS`` and adds
  a second function, ``idxr.replica_<...>`` (`replica_function_name`), called by row-level
  INSERT/UPDATE/DELETE triggers enabled ``REPLICA`` only: they fire for the apply worker and
  never for the application's own writes, which keep their statement-level cost. The choice is
  sticky: a later install keeps ALWAYS while any trigger of the target is ALWAYS or its replica
  function exists, until ``--no-always``.

- **Two paths** (`LANGUAGES`). Where the server has the ``idxr_capture`` library
  (`idxr_pg.capture.library`, built by ``doctor --install-missing``), ``triggers install``
  creates that trusted extension in schema idxr and points the four triggers of every target it
  covers at its one C function, ``idxr.idxr_capture(kind, source, flags, key, columns, ...)``
  (`c_trigger_ddl`): the same queue rules, a third of the plpgsql body's cost per write. Key
  expressions and ``--always`` targets keep their plpgsql function (`c_unsupported`), as does
  every target where the extension is missing or cannot be created (``auto``: the reason is
  reported, ``--language c``: an error). Re-installing moves a target from one path to the other
  in one transaction; moving to C drops its plpgsql function.

Installed targets are recorded in ``idxr.capture_triggers`` (keyed by the plpgsql function's
name, whichever path is in use); a target's triggers are those calling its plpgsql function, or
the C function with its kind and source table as first arguments (`idxr_pg.db.capture`);
dropping removes exactly those.
The catalog look-ups live in `idxr_pg.db.catalog` and that bookkeeping in `idxr_pg.db.capture`;
this module builds the DDL (pure: `function_ddl`, `trigger_ddl`, `install_ddl`, `drop_ddl`
need no connection) and runs it.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Literal

import psycopg
from psycopg import sql

from idxr_pg.config import EntityConfig, is_identifier, sql_expression_problem
from idxr_pg.db import capture as bookkeeping
from idxr_pg.db import catalog
from idxr_pg.db.capture import INSTALL_LOCK_KEY
from idxr_pg.db.queue import CAPTURE_SETTINGS, WAKE_NAMESPACE, coalesce_one
from idxr_pg.db.queue import CHANNEL as QUEUE_CHANNEL
from idxr_pg.errors import IdxrError
from idxr_pg.schema import SCHEMA as IDXR_SCHEMA

__all__ = [
    "BATCH_THRESHOLD",
    "EVENTS",
    "LANGUAGES",
    "LANGUAGE_ENV",
    "INSTALL_LOCK_KEY",
    "QUEUE_CHANNEL",
    "CaptureError",
    "CaptureTarget",
    "InstallPlan",
    "InstalledCapture",
    "PlannedCapture",
    "Reader",
    "ResolvedTable",
    "c_trigger_ddl",
    "c_unsupported",
    "capture_targets",
    "default_language",
    "drop_ddl",
    "drop_triggers",
    "function_ddl",
    "function_name",
    "install_ddl",
    "install_triggers",
    "installed_captures",
    "plan_install",
    "render_script",
    "replica_function_ddl",
    "replica_function_name",
    "replica_trigger_ddl",
    "resolve_table",
    "trigger_ddl",
    "trigger_name",
]

EVENTS = ("insert", "update", "delete", "truncate")
BATCH_THRESHOLD = 8
"""A statement changing more keys than this writes one idxr.queue_batches row with all of them
(the worker expands it) instead of a queue row per key."""
MAX_IDENTIFIER = 63
LANGUAGES = ("auto", "c", "plpgsql")
"""What `install_triggers` may point triggers at: ``c``, the shared C function of the
``idxr_capture`` extension (`idxr_pg.capture.library`); ``plpgsql``, a function per target;
``auto`` (the default), C for every target it covers when the server has the library, else
plpgsql."""
Language = Literal["c", "plpgsql"]
LANGUAGE_ENV = "IDXR_CAPTURE_LANGUAGE"
"""Environment variable giving the default of `LANGUAGES` (``auto`` when unset); the CLI's
``triggers install --language`` reads it too."""


def default_language() -> str:
    return os.environ.get(LANGUAGE_ENV, "").strip().lower() or "auto"


_BODY_TAG = "$idxr_capture$"
_RUNS_SQL = re.compile(r"_to_xml|_to_xmlschema")  # table_to_xml, query_to_xml, ...


class CaptureError(IdxrError):
    """A capture trigger cannot be installed as configured; the message names kind and table."""


@dataclass(frozen=True)
class Reader:
    """One way an entity kind reads a table: how to get the entity key, which columns matter."""

    origin: str  # "table" (the kind's main table) or "watch[i]"
    key: str  # column name, or (watch only) an SQL expression over the row
    columns: tuple[str, ...] | None  # None: every column
    trusted: bool = False  # watch ``trusted_key``: lifts the checks of what the key calls

    @property
    def key_is_column(self) -> bool:
        return is_identifier(self.key)


@dataclass(frozen=True)
class CaptureTarget:
    """One (entity kind, table) pair: gets one trigger function and four triggers."""

    kind: str
    table: str  # as configured: 'table' or 'schema.table'
    readers: tuple[Reader, ...]
    notify: bool = True  # pg_notify per statement that enqueued something


@dataclass(frozen=True)
class ResolvedTable(catalog.Relation):
    """A watched table as the catalog knows it, with its columns and its partition tree."""

    columns: tuple[str, ...]
    tree: tuple[tuple[str, str], ...]  # (schema, name) of the table and all its partitions
    unique: frozenset[str] = frozenset()  # columns that alone are unique (`catalog.unique_columns`)


@dataclass(frozen=True)
class PlannedCapture:
    target: CaptureTarget
    table: ResolvedTable
    function_name: str
    always: bool = False  # ENABLE ALWAYS + row-level replica triggers (subscribers)
    drop_replica: bool = False  # not always, but a replica function was installed: drop it
    language: Language = "plpgsql"  # what the triggers call (`LANGUAGES`)
    plpgsql_reason: str | None = None  # why plpgsql although C was allowed (``auto``)
    # (schema, table, trigger) of an earlier C install on tables no longer in the tree (a
    # detached partition): dropped by the install, whichever path it takes now
    leftover_c_triggers: tuple[tuple[str, str, str], ...] = ()

    @property
    def unique_keys(self) -> bool:
        """One reader whose key is a column unique in the table: a statement's rows then have
        distinct keys, so the trigger needs no DISTINCT and UPDATE can pair old and new rows
        by key (`_changed_keys`)."""
        readers = self.target.readers
        return (
            len(readers) == 1 and readers[0].key_is_column and readers[0].key in self.table.unique
        )


@dataclass(frozen=True)
class InstalledCapture:
    """A row of idxr.capture_triggers, plus the triggers that really exist for it."""

    function_name: str
    entity_kind: str
    source_table: str
    triggers: tuple[str, ...]  # on the source table itself
    uncovered: tuple[str, ...]  # tables of its partition tree missing some of the 4 triggers
    firing: tuple[str, ...] = ()  # distinct pg_trigger.tgenabled of its statement triggers
    replica: tuple[str, ...] = ()  # row-level triggers calling its replica function
    c_triggers: tuple[tuple[str, str, str], ...] = ()  # (schema, table, trigger) calling C

    @property
    def language(self) -> str:
        """``c`` (its triggers call idxr.idxr_capture()), ``plpgsql`` (its own function), or
        ``mixed`` (some of each on its source table: run `triggers install`)."""
        source = {t for s, n, t in self.c_triggers if f"{s}.{n}" == self.source_table}
        if not source:
            return "plpgsql"
        return "c" if source == set(self.triggers) else "mixed"

    @property
    def complete(self) -> bool:
        return len(self.triggers) == len(EVENTS) and not self.uncovered

    @property
    def always(self) -> bool:
        """Installed with ``--always``: every statement trigger ALWAYS, replica triggers there."""
        return self.firing == ("A",) and bool(self.replica)

    @property
    def sticky_always(self) -> bool:
        """A plain re-install keeps ``--always`` (any sign of it left)."""
        return "A" in self.firing or bool(self.replica)


@dataclass(frozen=True)
class InstallPlan:
    captures: tuple[PlannedCapture, ...]
    stale: tuple[InstalledCapture, ...]  # of the planned kinds, on tables no longer watched


# ---------------------------------------------------------------------------------------------
# Naming


def _short_hash(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:8]


def _bounded_name(parts: Sequence[str], prefix: str, separator: str) -> str:
    """``prefix`` + parts joined by ``separator``; hash-suffixed when too long or ambiguous."""
    name = prefix + separator.join(parts)
    ambiguous = any(separator in p or p.startswith("_") or p.endswith("_") for p in parts)
    if len(name) <= MAX_IDENTIFIER and not ambiguous:
        return name
    suffix = "_" + _short_hash(prefix, *parts)
    return name[: MAX_IDENTIFIER - len(suffix)] + suffix


def function_name(kind: str, schema: str, table: str) -> str:
    """Name of the trigger function (in schema idxr) for one kind on one table.

    ``capture_<kind>__<schema>__<table>``; a hash suffix replaces the tail when the name would
    pass 63 characters or a part contains ``__`` (so two targets never share a name).
    """
    return _bounded_name((kind, schema, table), _FUNCTION_PREFIX, "__")


_FUNCTION_PREFIX = "capture_"
_REPLICA_PREFIX = "replica_"  # same length: a replica name is as bounded as its capture name


def replica_function_name(capture_function: str) -> str:
    """The row-level function of ``--always`` for one capture function: ``replica_<...>``."""
    return _REPLICA_PREFIX + capture_function.removeprefix(_FUNCTION_PREFIX)


def trigger_name(kind: str, event: str) -> str:
    """Name of one trigger on a table (trigger names are per table): ``idxr_<kind>_<event>``."""
    name = f"idxr_{kind}_{event}"
    if len(name) <= MAX_IDENTIFIER:
        return name
    suffix = f"_{_short_hash(kind)}_{event}"
    return name[: MAX_IDENTIFIER - len(suffix)] + suffix


# ---------------------------------------------------------------------------------------------
# From config to targets (pure)


def capture_targets(entity: EntityConfig) -> list[CaptureTarget]:
    """The tables an entity kind reads, each with every way the kind reads it.

    A table listed more than once (e.g. a tree: main table also watched through ``parent_id``)
    becomes one target with several readers; their keys are unioned.
    """
    readers: dict[str, list[Reader]] = {entity.table: []}
    readers[entity.table].append(
        Reader("table", entity.key, tuple(entity.columns) if entity.columns else None)
    )
    for index, watched in enumerate(entity.watch):
        reader = Reader(
            f"watch[{index}]",
            watched.key.strip(),
            tuple(watched.columns) if watched.columns else None,
            watched.trusted_key,
        )
        if not reader.key:
            raise CaptureError(
                f"entity {entity.name!r}: watch[{index}] ({watched.table}): empty key"
            )
        readers.setdefault(watched.table, []).append(reader)
    return [
        CaptureTarget(entity.name, table, tuple(rs), entity.notify) for table, rs in readers.items()
    ]


def _targets(entities: Iterable[EntityConfig]) -> list[CaptureTarget]:
    return [target for entity in entities for target in capture_targets(entity)]


# ---------------------------------------------------------------------------------------------
# Resolving and validating against the database


def resolve_table(conn: psycopg.Connection, kind: str, table: str) -> ResolvedTable:
    """Find the configured table (names taken literally, as quoted identifiers)."""
    try:
        relation = catalog.resolve_table(conn, table)
    except catalog.UnknownTableError as exc:
        raise CaptureError(f"entity {kind!r}: {exc}") from None
    if not relation.is_table:
        raise CaptureError(
            f"entity {kind!r}: {table} is {relation.description}; capture triggers need a plain "
            "or partitioned table"
        )
    columns = tuple(catalog.table_columns(conn, relation.oid))
    tree = catalog.partition_tree(conn, relation)
    unique = catalog.unique_columns(conn, relation.oid)
    return ResolvedTable(
        relation.oid, relation.schema, relation.name, relation.relkind, columns, tree, unique
    )


def _check_reader(
    conn: psycopg.Connection, kind: str, table: ResolvedTable, reader: Reader
) -> None:
    where = f"entity {kind!r}, " + ("" if reader.origin == "table" else f"{reader.origin}, ")
    where += f"table {table.qualified}"
    for column in reader.columns or ():
        if column not in table.columns:
            raise CaptureError(f"{where}: column {column!r} (in columns) does not exist")
    if reader.key_is_column:
        if reader.key not in table.columns:
            raise CaptureError(f"{where}: key column {reader.key!r} does not exist")
        return
    problem = sql_expression_problem(reader.key)
    if problem or _BODY_TAG in reader.key:
        raise CaptureError(
            f"{where}: key expression {reader.key!r} is not one SQL expression: "
            f"{problem or f'{_BODY_TAG} is not allowed'}"
        )
    try:
        refs = catalog.row_expression_refs(conn, reader.key, table.schema, table.name)
    except psycopg.Error as exc:
        message = (exc.diag.message_primary or str(exc)).strip()
        raise CaptureError(
            f"{where}: key expression {reader.key!r} is not valid: {message}"
        ) from None
    if not reader.trusted:
        _check_key_refs(where, reader, refs)


def _check_key_refs(where: str, reader: Reader, refs: catalog.ExpressionRefs) -> None:
    """Refuse a key expression that could do more than compute a key from the row.

    The key runs inside the SECURITY DEFINER capture function, as the installer, on every
    write, so it may only use what no application role can redefine:

    - functions and operators of pg_catalog only: a function elsewhere (an operator's too) can
      be replaced by its owner, who would then run code as the installer on the next write;
    - no volatile function (``nextval``, ``pg_sleep``, ``set_config``, ...): a key must be a
      function of the row (UPDATE compares the keys of the old and new rows), and side effects
      need them; nor the built-ins that read a table or run a query given by name
      (``table_to_xml``, ``query_to_xml``, ...);
    - subqueries may read plain or partitioned tables without row level security only (a
      view's definition or a policy's functions would run as the installer);
    - no domain type outside pg_catalog (its CHECK calls functions).

    ``trusted_key: true`` on the watch entry lifts these checks (the DBA vouches for the owners
    of everything the key calls).
    """
    outside = [f.qualified for f in refs.functions if f.schema != "pg_catalog"]
    unsafe = [
        f.qualified
        for f in refs.functions
        if f.schema == "pg_catalog" and (f.volatility == "v" or _RUNS_SQL.search(f.name))
    ]
    relations = [
        f"{r.qualified} ({r.description})" for r in refs.relations if r.relkind not in ("r", "p")
    ]
    problems = []
    if outside:
        problems.append(f"calls {', '.join(outside)}, outside pg_catalog")
    if unsafe:
        problems.append(
            f"calls {', '.join(unsafe)} (volatile, or runs or reads SQL by name: a key must be "
            "computed from the row alone)"
        )
    if relations:
        problems.append(f"reads {', '.join(relations)}, not a table")
    if refs.row_security:
        problems.append(f"reads {', '.join(refs.row_security)}, a table with row level security")
    if refs.domains:
        problems.append(f"uses domain {', '.join(refs.domains)}, outside pg_catalog")
    if problems:
        raise CaptureError(
            f"{where}: key expression {reader.key!r} {'; '.join(problems)}; it would run as "
            "the installer on every write: set trusted_key: true on the watch entry only if "
            "you trust the owners of all it uses"
        )


def installed_captures(
    conn: psycopg.Connection, kinds: Iterable[str] | None = None
) -> list[InstalledCapture]:
    """Recorded capture functions (all, or of ``kinds``) and the triggers that call them."""
    _require_schema(conn)
    rows = bookkeeping.installed_rows(
        conn, kinds, replica_prefix=(_FUNCTION_PREFIX, _REPLICA_PREFIX)
    )
    return [
        InstalledCapture(
            function,
            kind,
            table,
            tuple(triggers),
            tuple(uncovered),
            tuple(firing),
            tuple(replica),
            tuple(c_triggers),
        )
        for function, kind, table, triggers, uncovered, firing, replica, c_triggers in rows
    ]


def _require_schema(conn: psycopg.Connection) -> None:
    if not catalog.idxr_installed(conn):
        raise CaptureError("the idxr schema is not installed here: run `idxr-pg migrate` first")


def _refuse_row_security(conn: psycopg.Connection, kind: str, table: ResolvedTable) -> None:
    """A table with ROW LEVEL SECURITY needs the entity's ``allow_row_security: true``: the
    index would show every row to whoever reads idxr.search_index."""
    if catalog.resolve_table(conn, table.qualified).row_security:
        raise CaptureError(
            f"entity kind {kind!r}: table {table.qualified} has row level security enabled, and "
            "idxr.search_index would show its readers every row the policies hide (set "
            "allow_row_security: true on the entity to index them anyway; the worker then needs "
            "BYPASSRLS or to own the table)"
        )


def plan_install(
    conn: psycopg.Connection,
    entities: Sequence[EntityConfig],
    always: bool | None = None,
    language: str | None = None,
) -> InstallPlan:
    """Resolve and check every target of ``entities``; errors name kind, table and column.

    ``always``: True installs for a logical-replication subscriber (ENABLE ALWAYS plus the
    row-level replica triggers), False removes that, None keeps what each target has now.
    ``language``: see `LANGUAGES` (None: `default_language`); ``auto`` and ``c`` create the
    ``idxr_capture`` extension in schema idxr if the server has it and it is not there yet
    (rolled back with the transaction when only planning).
    """
    language = language or default_language()
    if language not in LANGUAGES:
        raise CaptureError(f"capture language {language!r}: choose one of {', '.join(LANGUAGES)}")
    _require_schema(conn)
    merged: dict[tuple[str, int], PlannedCapture] = {}
    allow_row_security = {e.name for e in entities if e.allow_row_security}
    for target in _targets(entities):
        table = resolve_table(conn, target.kind, target.table)
        if target.kind not in allow_row_security:
            _refuse_row_security(conn, target.kind, table)
        for reader in target.readers:
            _check_reader(conn, target.kind, table, reader)
        seen = merged.get((target.kind, table.oid))
        if seen is not None:  # one table spelled two ways, e.g. 'items' and 'public.items'
            target = CaptureTarget(
                target.kind, seen.target.table, seen.target.readers + target.readers, target.notify
            )
        merged[(target.kind, table.oid)] = PlannedCapture(
            target, table, function_name(target.kind, table.schema, table.name)
        )
    kinds = {entity.name for entity in entities}
    installed = {c.function_name: c for c in installed_captures(conn, kinds)}
    planned = [_with_firing(p, installed.get(p.function_name), always) for p in merged.values()]
    planned = _with_language(conn, planned, language)
    names = {p.function_name for p in planned}
    stale = [c for name, c in installed.items() if name not in names]
    return InstallPlan(tuple(planned), tuple(stale))


def _with_firing(
    plan: PlannedCapture, installed: InstalledCapture | None, always: bool | None
) -> PlannedCapture:
    """Decide ``--always`` for one target: explicit, else sticky from what is installed."""
    was_always = installed is not None and installed.sticky_always
    chosen = was_always if always is None else always
    had_replica = installed is not None and bool(installed.replica)
    tree = set(plan.table.tree)
    leftover = tuple(
        t for t in (installed.c_triggers if installed else ()) if (t[0], t[1]) not in tree
    )
    return PlannedCapture(
        plan.target,
        plan.table,
        plan.function_name,
        chosen,
        not chosen and had_replica,
        leftover_c_triggers=leftover,
    )


def c_unsupported(plan: PlannedCapture) -> str | None:
    """Why the C function cannot capture this target (it stays plpgsql), or None."""
    expressions = [r.key for r in plan.target.readers if not r.key_is_column]
    if expressions:
        return f"key expression {expressions[0]!r} (the C function reads key columns only)"
    if plan.always:
        return "--always (the replica row triggers are plpgsql)"
    names = [r.key for r in plan.target.readers]
    names += [c for r in plan.target.readers for c in r.columns or ()]
    odd = [n for n in names if "," in n or "\x00" in n]
    if odd:
        return f"column name {odd[0]!r} (a comma cannot pass in the C trigger's arguments)"
    return None


def _c_extension_problem(conn: psycopg.Connection) -> str | None:
    """Why the C function cannot be used in this database (after trying to create its
    extension), or None."""
    schema, available = bookkeeping.c_extension_schema(conn)
    if schema == IDXR_SCHEMA:
        if not available:  # e.g. restored onto a server without the library
            return (
                f"extension {bookkeeping.C_EXTENSION} exists but the server has no library for "
                "it (build it with `idxr-pg doctor --install-missing`, as root on the server's "
                "machine)"
            )
        if not bookkeeping.may_execute_c_function(conn):
            return (
                f"only the role that created extension {bookkeeping.C_EXTENSION} may use "
                f"idxr.{bookkeeping.C_FUNCTION}() (run `triggers install` as that role)"
            )
        return None
    if schema is not None:
        return (
            f"extension {bookkeeping.C_EXTENSION} is in schema {schema}, not idxr (drop it; "
            "`triggers install` creates it in idxr)"
        )
    if not available:
        return (
            f"the server has no {bookkeeping.C_EXTENSION} library (build it with "
            "`idxr-pg doctor --install-missing`, as root on the server's machine)"
        )
    error = bookkeeping.create_c_extension(conn)
    if error is not None:
        return f"CREATE EXTENSION {bookkeeping.C_EXTENSION} failed: {error}"
    return _c_extension_problem(conn)


def _with_language(
    conn: psycopg.Connection, planned: list[PlannedCapture], language: str
) -> list[PlannedCapture]:
    """Point each target at the C function (`c_unsupported` allowing, the extension there or
    created now) or at its plpgsql function; ``language`` ``c`` makes a refusal an error."""
    if language == "plpgsql":
        return planned
    problem = _c_extension_problem(conn) if any(c_unsupported(p) is None for p in planned) else None
    out = []
    for plan in planned:
        why = c_unsupported(plan) or problem
        if why is None:
            out.append(replace(plan, language="c"))
        elif language == "c":
            raise CaptureError(
                f"entity {plan.target.kind!r}, table {plan.table.qualified}: the C capture "
                f"trigger cannot be used: {why}"
            )
        else:
            out.append(replace(plan, plpgsql_reason=why))
    return out


# ---------------------------------------------------------------------------------------------
# DDL


def _projection(reader: Reader, alias: sql.Identifier) -> sql.Composable:
    """The text form of what the reader reads from one row.

    Text, not jsonb or the row type: every type has an output function but not every type has
    an equality (json, point, xml), and jsonb equality would call 1.0 and 1.00 equal although
    the document changes. Byte-wise ("C") comparison; about 2.5x cheaper than jsonb.
    """
    if reader.columns is None:
        row = sql.SQL("({}.*)").format(alias)
    else:
        row = sql.SQL("ROW({})").format(
            sql.SQL(", ").join(
                sql.SQL("{}.{}").format(alias, sql.Identifier(c)) for c in reader.columns
            )
        )
    return sql.SQL('{}::text COLLATE pg_catalog."C"').format(row)


def _key(reader: Reader, alias: sql.Identifier) -> sql.Composable:
    if reader.key_is_column:
        return sql.SQL("({}.{})::text").format(alias, sql.Identifier(reader.key))
    return sql.SQL("({})::text").format(sql.SQL(reader.key))


def _collect(keys: sql.Composable, distinct: bool) -> sql.Composable:
    """Assign the statement's non-NULL entity keys to ``idxr_keys``, unsorted: a bulk statement
    (`_enqueue`) stores them as they are and the worker's expansion sorts and coalesces them.
    ``distinct``: the keys may repeat (several rows per entity), so collapse them here (a hash,
    no sort), which keeps a many-row statement about few entities on the coalescing path;
    False where they are distinct by construction (`PlannedCapture.unique_keys`)."""
    return sql.SQL(
        "idxr_keys := ARRAY(SELECT {distinct}changed.k FROM ({keys}) AS changed (k)\n"
        "                         WHERE changed.k IS NOT NULL);"
    ).format(keys=keys, distinct=sql.SQL("DISTINCT " if distinct else ""))


def _enqueue(plan: PlannedCapture) -> sql.Composable:
    """Queue ``idxr_keys``: one batch row when more than `BATCH_THRESHOLD` (a bulk statement),
    else, key by key, share-lock the key's pending row if it has one or insert one
    (`idxr_pg.db.queue.COALESCE_ONE`): share locks do not conflict, so the order of the keys
    does not matter and writers of one entity never wait for each other. ``enqueued``:
    something new was queued.

    A REPEATABLE READ or SERIALIZABLE transaction always writes a batch row: locking a pending
    row claimed after its snapshot raises a serialization failure there, which the
    application's writes must never get from capture. The worker's expansion coalesces those
    rows instead."""
    queue_one = coalesce_one(
        kind=sql.Literal(plan.target.kind),
        key=sql.SQL("idxr_key"),
        source=sql.Literal(plan.table.qualified),
        operation=sql.SQL("TG_OP"),
        indent=" " * 12,
    )
    return sql.SQL(
        "    IF pg_catalog.cardinality(idxr_keys) > {threshold}\n"
        "       OR (pg_catalog.cardinality(idxr_keys) > 0\n"
        "           AND pg_catalog.current_setting('transaction_isolation') <> 'read committed')"
        " THEN\n"
        "        INSERT INTO idxr.queue_batches (entity_kind, entity_ids, source_table, operation)\n"
        "        VALUES ({kind}, idxr_keys, {source}, TG_OP);\n"
        "        enqueued := true;\n"
        "    ELSIF pg_catalog.cardinality(idxr_keys) > 0 THEN\n"
        "        FOREACH idxr_key IN ARRAY idxr_keys LOOP\n"
        "            {queue_one};\n"
        "            enqueued := enqueued OR FOUND;\n"
        "        END LOOP;\n"
        "    END IF;\n"
    ).format(
        threshold=sql.Literal(BATCH_THRESHOLD),
        kind=sql.Literal(plan.target.kind),
        source=sql.Literal(plan.table.qualified),
        queue_one=queue_one,
    )


def _wake(plan: PlannedCapture) -> sql.Composable:
    """Ring `QUEUE_CHANNEL` if something was queued and no other open transaction rings for the
    kind (`idxr_pg.db.queue.CHANNEL` says why); nothing at all with ``notify: false``."""
    if not plan.target.notify:
        return sql.SQL("    -- notify: false in the config: workers find these rows by polling\n")
    kind = sql.Literal(plan.target.kind)
    return sql.SQL(
        "    IF enqueued THEN\n"
        "        IF pg_catalog.pg_try_advisory_xact_lock({ns}, pg_catalog.hashtext({kind})) THEN\n"
        "            PERFORM pg_catalog.pg_notify({channel}, {kind});\n"
        "        END IF;\n"
        "    END IF;\n"
    ).format(ns=sql.Literal(WAKE_NAMESPACE), kind=kind, channel=sql.Literal(QUEUE_CHANNEL))


def _rows_keys(plan: PlannedCapture, rows: str) -> sql.Composable:
    alias = sql.Identifier(plan.table.name)
    return sql.SQL("\n            UNION ALL ").join(
        sql.SQL("SELECT {key} FROM {rows} AS {alias}").format(
            key=_key(reader, alias), rows=sql.Identifier(rows), alias=alias
        )
        for reader in plan.target.readers
    )


def _changed_keys(plan: PlannedCapture) -> sql.Composable:
    """Keys whose multiset of projections differs between idxr_old and idxr_new.

    With `PlannedCapture.unique_keys` each key is on at most one row per side, so the rows are
    paired by key (a FULL JOIN: a key on one side only, a key change, counts as changed);
    otherwise (a watched child table: many rows per key) the multisets are compared by
    grouping: unchanged rows cancel out."""
    alias = sql.Identifier(plan.table.name)
    if plan.unique_keys:
        (reader,) = plan.target.readers
        side = sql.SQL("SELECT {key} AS k, {proj} AS v FROM {rows} AS {alias}")
        new, old = (
            side.format(
                key=_key(reader, alias),
                proj=_projection(reader, alias),
                rows=sql.Identifier(rows),
                alias=alias,
            )
            for rows in ("idxr_new", "idxr_old")
        )
        return sql.SQL(
            "SELECT COALESCE(n.k, o.k) FROM ({new}) AS n\n"
            "              FULL JOIN ({old}) AS o ON o.k = n.k WHERE n.v IS DISTINCT FROM o.v"
        ).format(new=new, old=old)
    parts = []
    for reader in plan.target.readers:
        side = sql.SQL("SELECT {key} AS k, {proj} AS v, {sign} AS s FROM {rows} AS {alias}")
        new = side.format(
            key=_key(reader, alias),
            proj=_projection(reader, alias),
            sign=sql.Literal(1),
            rows=sql.Identifier("idxr_new"),
            alias=alias,
        )
        old = side.format(
            key=_key(reader, alias),
            proj=_projection(reader, alias),
            sign=sql.Literal(-1),
            rows=sql.Identifier("idxr_old"),
            alias=alias,
        )
        parts.append(
            sql.SQL(
                "SELECT d.k FROM ({new}\n                  UNION ALL {old}) AS d"
                " GROUP BY d.k, d.v HAVING pg_catalog.sum(d.s) <> 0"
            ).format(new=new, old=old)
        )
    return sql.SQL("\n            UNION ALL ").join(parts)


def _truncated_keys(plan: PlannedCapture) -> sql.Composable:
    kind = sql.Literal(plan.target.kind)
    return sql.SQL(
        "SELECT entity_id FROM idxr.search_index WHERE entity_kind = {kind}"
        " UNION SELECT entity_id FROM idxr.leases WHERE entity_kind = {kind}"
    ).format(kind=kind)


def _guard(plan: PlannedCapture) -> sql.Composed:
    """Refuse to run for any table but the ones the function was installed for.

    The function is SECURITY DEFINER: whoever can EXECUTE it can attach it to a table of their
    own (a TEMP table, say) and write queue rows as the installer, or make every TRUNCATE
    enqueue the whole kind. The table a trigger fires for is compared by schema and name
    (``TG_TABLE_SCHEMA``, ``TG_TABLE_NAME``: stable across dump and restore, unlike oids;
    a TEMP table's schema is ``pg_temp_N``, never the watched one). A renamed table needs
    ``triggers install`` again, like any change of the config.
    """
    tables = sql.SQL(", ").join(
        sql.SQL("({}, {})").format(sql.Literal(schema), sql.Literal(name))
        for schema, name in plan.table.tree
    )
    return sql.SQL(
        "    IF (TG_TABLE_SCHEMA, TG_TABLE_NAME) NOT IN ({tables}) THEN\n"
        "        RAISE EXCEPTION 'idxr.% captures % only, not %.%',\n"
        "            {function}, {source}, TG_TABLE_SCHEMA, TG_TABLE_NAME\n"
        "            USING ERRCODE = 'insufficient_privilege';\n"
        "    END IF;\n"
    ).format(
        tables=tables,
        source=sql.Literal(plan.table.qualified),
        function=sql.Literal(plan.function_name),
    )


def _capture_function(plan: PlannedCapture, name: str, branches: sql.Composable) -> sql.Composed:
    """CREATE OR REPLACE FUNCTION idxr.<name>: the table guard, ``branches`` (per TG_OP, each
    sets ``idxr_keys``), then the queueing and the wake-up shared by every capture function."""
    body = sql.SQL(
        "\nDECLARE\n"
        "    idxr_keys text[];\n"
        "    idxr_key text;\n"
        "    enqueued boolean := false;\n"
        "BEGIN\n"
        "{guard}"
        "{branches}"
        "{enqueue}"
        "{wake}"
        "    RETURN NULL;\n"
        "END\n"
    ).format(guard=_guard(plan), branches=branches, enqueue=_enqueue(plan), wake=_wake(plan))
    return sql.SQL(
        "CREATE OR REPLACE FUNCTION idxr.{name}()\n"
        "RETURNS trigger\n"
        "LANGUAGE plpgsql\n"
        "SECURITY DEFINER\n"
        "{settings}\n"
        "AS {tag}{body}{tag}"
    ).format(
        name=sql.Identifier(name),
        settings=sql.SQL(CAPTURE_SETTINGS),
        tag=sql.SQL(_BODY_TAG),
        body=body,
    )


def function_ddl(plan: PlannedCapture) -> sql.Composed:
    """CREATE OR REPLACE FUNCTION for one target."""
    repeats = not plan.unique_keys
    branches = sql.SQL(
        "    IF TG_OP = 'INSERT' THEN\n"
        "        {insert}\n"
        "    ELSIF TG_OP = 'UPDATE' THEN\n"
        "        {update}\n"
        "    ELSIF TG_OP = 'DELETE' THEN\n"
        "        {delete}\n"
        "    ELSE\n"
        "        {truncate}\n"
        "    END IF;\n"
    ).format(
        insert=_collect(_rows_keys(plan, "idxr_new"), repeats),
        update=_collect(_changed_keys(plan), repeats),
        delete=_collect(_rows_keys(plan, "idxr_old"), repeats),
        truncate=_collect(_truncated_keys(plan), False),  # a UNION: distinct
    )
    return _capture_function(plan, plan.function_name, branches)


_TRIGGER_CLAUSES = {
    "insert": "AFTER INSERT ON {table} REFERENCING NEW TABLE AS idxr_new",
    "update": "AFTER UPDATE ON {table} REFERENCING OLD TABLE AS idxr_old NEW TABLE AS idxr_new",
    "delete": "AFTER DELETE ON {table} REFERENCING OLD TABLE AS idxr_old",
    "truncate": "AFTER TRUNCATE ON {table}",
}


def trigger_ddl(plan: PlannedCapture) -> list[sql.Composed]:
    """CREATE OR REPLACE TRIGGER for the four events of one target.

    A partitioned table's statement-level triggers fire only for statements naming it, so every
    table of its partition tree (as of install time) gets the four triggers too.
    """
    return [
        sql.SQL("CREATE OR REPLACE TRIGGER {trigger}\n    " + _TRIGGER_CLAUSES[event]).format(
            trigger=sql.Identifier(trigger_name(plan.target.kind, event)),
            table=sql.Identifier(*table),
        )
        + sql.SQL("\n    FOR EACH STATEMENT EXECUTE FUNCTION idxr.{}()").format(
            sql.Identifier(plan.function_name)
        )
        for table in plan.table.tree
        for event in EVENTS
    ]


def c_trigger_ddl(plan: PlannedCapture) -> list[sql.Composed]:
    """CREATE OR REPLACE TRIGGER for the four events of one target, calling the C function.

    Its arguments (idxr_pg/capture/c/idxr_capture.c): kind, source table as recorded, flags
    (``n``: ring the wake-up, ``u``: the keys are unique in the table), then per reader its key
    column and its read columns joined by commas ('' for the whole row).
    """
    flags = ("n" if plan.target.notify else "") + ("u" if plan.unique_keys else "")
    args = [plan.target.kind, plan.table.qualified, flags]
    for reader in plan.target.readers:
        args += [reader.key, ",".join(reader.columns or ())]
    arguments = sql.SQL(", ").join(sql.Literal(a) for a in args)
    return [
        sql.SQL("CREATE OR REPLACE TRIGGER {trigger}\n    " + _TRIGGER_CLAUSES[event]).format(
            trigger=sql.Identifier(trigger_name(plan.target.kind, event)),
            table=sql.Identifier(*table),
        )
        + sql.SQL("\n    FOR EACH STATEMENT EXECUTE FUNCTION idxr.{}({})").format(
            sql.Identifier(bookkeeping.C_FUNCTION), arguments
        )
        for table in plan.table.tree
        for event in EVENTS
    ]


_ROW_EVENTS = ("insert", "update", "delete")  # TRUNCATE: the ALWAYS statement trigger
_ROW_CLAUSES = {
    "insert": "AFTER INSERT ON {table}",
    "update": "AFTER UPDATE ON {table}",
    "delete": "AFTER DELETE ON {table}",
}


def _replica_trigger_name(kind: str, event: str) -> str:
    return trigger_name(kind, f"{event}_replica")


def replica_function_ddl(plan: PlannedCapture) -> sql.Composed:
    """The row-level function of ``--always``: what the apply worker of a subscription runs.

    It queues what the statement function queues for a one-row statement, with the same
    builders: the transition tables ``idxr_new`` / ``idxr_old`` are CTEs over ``NEW`` / ``OLD``.
    """
    new = sql.SQL("WITH idxr_new AS (SELECT NEW.*)\n                ")
    old = sql.SQL("WITH idxr_old AS (SELECT OLD.*)\n                ")
    both = sql.SQL("WITH idxr_old AS (SELECT OLD.*), idxr_new AS (SELECT NEW.*)\n                ")
    repeats = not plan.unique_keys
    branches = sql.SQL(
        "    IF TG_OP = 'INSERT' THEN\n"
        "        {insert}\n"
        "    ELSIF TG_OP = 'UPDATE' THEN\n"
        "        {update}\n"
        "    ELSE\n"
        "        {delete}\n"
        "    END IF;\n"
    ).format(
        insert=_collect(new + _rows_keys(plan, "idxr_new"), repeats),
        update=_collect(both + _changed_keys(plan), repeats),
        delete=_collect(old + _rows_keys(plan, "idxr_old"), repeats),
    )
    return _capture_function(plan, replica_function_name(plan.function_name), branches)


def replica_trigger_ddl(plan: PlannedCapture) -> list[sql.Composed]:
    """``--always``: row-level triggers enabled REPLICA only, and the statement triggers ALWAYS.

    The row triggers go on the root table only: PostgreSQL clones a partitioned table's row
    triggers to every partition, present and future. Firing modes are set on every table of the
    tree (a clone has its own).
    """
    table = sql.Identifier(plan.table.schema, plan.table.name)
    function = sql.Identifier(replica_function_name(plan.function_name))
    kind = plan.target.kind
    statements = [
        sql.SQL("CREATE OR REPLACE TRIGGER {trigger}\n    " + _ROW_CLAUSES[event]).format(
            trigger=sql.Identifier(_replica_trigger_name(kind, event)), table=table
        )
        + sql.SQL("\n    FOR EACH ROW EXECUTE FUNCTION idxr.{}()").format(function)
        for event in _ROW_EVENTS
    ]
    for schema, name in plan.table.tree:
        on = sql.Identifier(schema, name)
        statements.extend(
            sql.SQL("ALTER TABLE {} ENABLE ALWAYS TRIGGER {}").format(
                on, sql.Identifier(trigger_name(kind, event))
            )
            for event in EVENTS
        )
        statements.extend(
            sql.SQL("ALTER TABLE {} ENABLE REPLICA TRIGGER {}").format(
                on, sql.Identifier(_replica_trigger_name(kind, event))
            )
            for event in _ROW_EVENTS
        )
    return statements


def _drop_replica_ddl(function: str) -> sql.Composed:
    return sql.SQL("DROP FUNCTION IF EXISTS idxr.{}() CASCADE").format(
        sql.Identifier(replica_function_name(function))
    )


def _record_ddl(plan: PlannedCapture) -> sql.Composed:
    readers = [
        {"origin": r.origin, "key": r.key, "columns": list(r.columns) if r.columns else None}
        for r in plan.target.readers
    ]
    return bookkeeping.record_statement(
        plan.function_name, plan.target.kind, plan.table.qualified, readers
    )


def _drop_c_triggers_ddl(triggers: Iterable[tuple[str, str, str]]) -> list[sql.Composed]:
    return [
        sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(
            sql.Identifier(trigger), sql.Identifier(schema, table)
        )
        for schema, table, trigger in triggers
    ]


def drop_ddl(captures: Iterable[InstalledCapture]) -> list[sql.Composed]:
    """Drop each target's triggers calling the C function, its functions with CASCADE (their
    triggers only), and forget it."""
    statements = []
    for capture in captures:
        statements.extend(_drop_c_triggers_ddl(capture.c_triggers))
        if capture.replica:
            statements.append(_drop_replica_ddl(capture.function_name))
        statements.append(
            sql.SQL("DROP FUNCTION IF EXISTS idxr.{}() CASCADE").format(
                sql.Identifier(capture.function_name)
            )
        )
        statements.append(bookkeeping.forget_statement(capture.function_name))
    return statements


def install_ddl(plan: InstallPlan) -> list[sql.Composed]:
    """Every statement of an install, in order: stale targets dropped, then each target."""
    return [statement for _, statements in _install_steps(plan) for statement in statements]


def _install_steps(plan: InstallPlan) -> list[tuple[str, list[sql.Composed]]]:
    """The install's statements grouped by what they are for (named in error messages)."""
    steps = [
        (
            f"entity {stale.entity_kind!r}, table {stale.source_table}: dropping the triggers "
            "of a table no longer watched",
            drop_ddl([stale]),
        )
        for stale in plan.stale
    ]
    if any(capture.language == "c" for capture in plan.captures):
        steps.append(
            (
                f"creating extension {bookkeeping.C_EXTENSION} (the C capture trigger)",
                [
                    sql.SQL("CREATE EXTENSION IF NOT EXISTS {}").format(
                        sql.Identifier(bookkeeping.C_EXTENSION)
                    )
                ],
            )
        )
    for capture in plan.captures:
        where = f"entity {capture.target.kind!r}, table {capture.table.qualified}: installing"
        if capture.language == "c":
            # The triggers first: then no trigger calls an earlier install's plpgsql function.
            statements = c_trigger_ddl(capture)
            statements.extend(_drop_c_triggers_ddl(capture.leftover_c_triggers))
            statements.append(
                sql.SQL("DROP FUNCTION IF EXISTS idxr.{}() CASCADE").format(
                    sql.Identifier(capture.function_name)
                )
            )
            if capture.drop_replica:
                statements.append(_drop_replica_ddl(capture.function_name))
            statements.append(_record_ddl(capture))
            steps.append(
                (f"{where} the capture triggers (idxr.{bookkeeping.C_FUNCTION})", statements)
            )
            continue
        statements = [function_ddl(capture)]
        statements.append(
            sql.SQL("REVOKE ALL ON FUNCTION idxr.{}() FROM PUBLIC").format(
                sql.Identifier(capture.function_name)
            )
        )
        statements.extend(trigger_ddl(capture))  # CREATE OR REPLACE resets them to ORIGIN
        statements.extend(_drop_c_triggers_ddl(capture.leftover_c_triggers))
        if capture.always:
            statements.append(replica_function_ddl(capture))
            statements.append(
                sql.SQL("REVOKE ALL ON FUNCTION idxr.{}() FROM PUBLIC").format(
                    sql.Identifier(replica_function_name(capture.function_name))
                )
            )
            statements.extend(replica_trigger_ddl(capture))
        elif capture.drop_replica:
            statements.append(_drop_replica_ddl(capture.function_name))
        statements.append(_record_ddl(capture))
        steps.append((f"{where} the capture triggers (idxr.{capture.function_name})", statements))
    return steps


def render_script(conn: psycopg.Connection | None, statements: Sequence[sql.Composable]) -> str:
    """Statements as one psql-runnable script in a single transaction (``conn`` may be None:
    then literals are quoted without the server's settings)."""
    text = "\n\n".join(s.as_string(conn) + ";" for s in statements)
    return f"BEGIN;\n\n{text}\n\nCOMMIT;\n"


# ---------------------------------------------------------------------------------------------
# Install and drop


def install_triggers(
    conn: psycopg.Connection,
    entities: Sequence[EntityConfig],
    always: bool | None = None,
    language: str | None = None,
) -> InstallPlan:
    """Create or replace the capture triggers of ``entities`` in one transaction.

    Idempotent. Triggers a kind installed earlier on a table it no longer reads are dropped;
    kinds not in ``entities`` are left alone. Nothing changes if any target fails its checks.
    ``always``, ``language``: see `plan_install` (None keeps each target's current choice;
    ``auto`` takes the C function where it can).
    """
    with _locked_transaction(conn):
        plan = plan_install(conn, entities, always, language)
        for where, statements in _install_steps(plan):
            _execute(conn, statements, where)
    return plan


def drop_triggers(
    conn: psycopg.Connection, kinds: Iterable[str] | None = None
) -> list[InstalledCapture]:
    """Drop the recorded capture triggers (all, or of ``kinds``), in one transaction."""
    with _locked_transaction(conn):
        captures = installed_captures(conn, kinds)
        for capture in captures:
            where = f"entity {capture.entity_kind!r}, table {capture.source_table}: dropping"
            _execute(conn, drop_ddl([capture]), f"{where} the capture triggers")
    return captures


@contextmanager
def _locked_transaction(conn: psycopg.Connection) -> Iterator[None]:
    """One transaction holding the install lock: installs and drops never interleave."""
    with conn.transaction():
        bookkeeping.lock_installs(conn)
        yield


def _execute(conn: psycopg.Connection, statements: Iterable[sql.Composable], where: str) -> None:
    """Run DDL; a database error becomes one `CaptureError` line saying what was being done."""
    for statement in statements:
        try:
            conn.execute(statement)
        except psycopg.Error as exc:
            message = (exc.diag.message_primary or str(exc)).strip()
            raise CaptureError(f"{where} failed: {message}") from None
