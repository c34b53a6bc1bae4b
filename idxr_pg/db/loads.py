"""The SQL of `idxr-pg load`: the target table's facts, COPY, the row fingerprint, the upsert of
new or changed rows, the manifest (``idxr.loads``, ``idxr.load_partitions``) and the keys of a
snapshot load (``idxr.load_keys``).

A partition is one transaction. Its rows are copied straight into the table when none of their
keys is there yet (a first load, an appended file: as fast as COPY), else into a temporary
staging table typed like the target (so a value that fails its type cast is found by COPY,
with its line); then the staged rows whose fingerprint (`fingerprint_sql`) is new or differs
from the table row's are upserted, and the partition is recorded in the manifest with its
counts. A load holds
the session advisory lock ``(LOAD_NAMESPACE, hashtext(table))``: one load per table at a time,
and a ``running`` load whose lock is free was killed (`reconcile_abandoned`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from itertools import islice
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from idxr_pg.db.advisory import LOAD_NAMESPACE
from idxr_pg.db.catalog import Relation
from idxr_pg.db.connection import one_line

__all__ = [
    "DONE",
    "FAILED",
    "INTERRUPTED",
    "RUNNING",
    "UNCHANGED",
    "Load",
    "LoadCounts",
    "PartitionDone",
    "TargetColumn",
    "apply_staging",
    "append_candidates",
    "commit_partition",
    "copy_csv",
    "copy_rows",
    "copy_staging",
    "create_staging",
    "create_table",
    "delete_missing",
    "fingerprint_sql",
    "finish_load",
    "list_loads",
    "manifest_installed",
    "reconcile_abandoned",
    "resumable_load",
    "restart_load",
    "same_content_load",
    "start_load",
    "table_keys",
    "target_columns",
    "try_lock_table",
    "unlock_table",
]

RUNNING, DONE, UNCHANGED, INTERRUPTED, FAILED = (
    "running",
    "done",
    "unchanged",
    "interrupted",
    "failed",
)
STAGING = "idxr_load_staging"

# ---- the target table ----------------------------------------------------------------------

_COLUMNS_SQL = """
SELECT a.attname,
       a.attnotnull AND NOT a.atthasdef AND a.attidentity = '' AS needs_value,
       a.attgenerated <> '' AS generated
  FROM pg_catalog.pg_attribute a
 WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY a.attnum
"""
# Single-column unique indexes without predicate or expression (what ON CONFLICT can name),
# and the primary key's columns.
_KEYS_SQL = """
SELECT a.attname, i.indisprimary, i.indnkeyatts
  FROM pg_catalog.pg_index i
  JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
 WHERE i.indrelid = %s AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL
   AND (i.indisprimary OR i.indnkeyatts = 1)
 ORDER BY i.indisprimary DESC, array_position(i.indkey::int2[], a.attnum)
"""


@dataclass(frozen=True)
class TargetColumn:
    name: str
    needs_value: bool  # NOT NULL without a default
    generated: bool


def target_columns(conn: psycopg.Connection, relation: Relation) -> list[TargetColumn]:
    return [TargetColumn(*row) for row in conn.execute(_COLUMNS_SQL, [relation.oid]).fetchall()]


def table_keys(conn: psycopg.Connection, relation: Relation) -> tuple[tuple[str, ...], set[str]]:
    """``(primary key columns, columns with a single-column unique index)``."""
    primary: list[str] = []
    unique: set[str] = set()
    for name, is_primary, natts in conn.execute(_KEYS_SQL, [relation.oid]).fetchall():
        if is_primary:
            primary.append(name)
        if natts == 1:
            unique.add(name)
    return tuple(primary), unique


def create_table(
    conn: psycopg.Connection, schema: str, name: str, columns: Sequence[tuple[str, str]], key: str
) -> None:
    """``CREATE TABLE IF NOT EXISTS`` with ``columns`` (name, SQL type) and ``key`` as its
    primary key; the types are idxr's own fixed list (`idxr_pg.loading.plan`)."""
    parts = [
        sql.SQL("{} {}").format(sql.Identifier(column), sql.SQL(sql_type))
        for column, sql_type in columns
    ]
    parts.append(sql.SQL("PRIMARY KEY ({})").format(sql.Identifier(key)))
    conn.execute(
        sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(
            sql.Identifier(schema, name), sql.SQL(", ").join(parts)
        )
    )


# ---- copying, the fingerprint, the upsert ---------------------------------------------------


def fingerprint_sql(alias: str, columns: Sequence[str]) -> sql.Composed:
    """The row fingerprint, the one definition: over the load's columns sorted by name,
    ``sha256(convert_to(C || chr(10) || V, 'UTF8'))`` where ``C`` is the compact JSON array of
    the column names and ``V`` ``array_to_json(ARRAY[col::text, ...])::text``: each value
    cast to its column's type and written back as PostgreSQL's text for it (the normalised
    value; NULL is ``null``). Computed alike for a staged file row and for the table's row."""
    names = sorted(columns)
    header = json.dumps(names, ensure_ascii=False, separators=(",", ":")) + "\n"
    values = sql.SQL(", ").join(
        sql.SQL("{}.{}::text").format(sql.Identifier(alias), sql.Identifier(n)) for n in names
    )
    return sql.SQL(
        "sha256(convert_to({header} || array_to_json(ARRAY[{values}]::text[])::text, 'UTF8'))"
    ).format(header=sql.Literal(header), values=values)


def create_staging(conn: psycopg.Connection, relation: Relation, columns: Sequence[str]) -> None:
    """The session's temporary staging table: ``columns`` typed as in the target (no
    constraints), emptied at each commit."""
    conn.execute(sql.SQL("DROP TABLE IF EXISTS pg_temp.{}").format(sql.Identifier(STAGING)))
    conn.execute(
        sql.SQL(
            "CREATE TEMP TABLE {staging} ON COMMIT DELETE ROWS AS"
            " SELECT {columns} FROM {target} WITH NO DATA"
        ).format(
            staging=sql.Identifier(STAGING),
            columns=sql.SQL(", ").join(sql.Identifier(c) for c in columns),
            target=relation.identifier,
        )
    )


def _into(relation: Relation | None) -> sql.Composable:
    return relation.identifier if relation is not None else sql.Identifier("pg_temp", STAGING)


def copy_csv(
    conn: psycopg.Connection,
    relation: Relation | None,
    columns: Sequence[str],
    data: bytes,
    encoding: str,
) -> int:
    """COPY raw CSV ``data`` (no header; ``columns`` in the file's field order) into the table
    (``relation``) or the staging table (None), PostgreSQL decoding ``encoding``; an empty
    field, quoted or not, is NULL. Raises on the first bad row. Returns the rows copied."""
    names = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    statement = sql.SQL(
        "COPY {into} ({names}) FROM STDIN (FORMAT csv, FORCE_NULL ({names}), ENCODING {enc})"
    ).format(into=_into(relation), names=names, enc=sql.Literal(encoding))
    with conn.cursor() as cur:
        with cur.copy(statement) as copy:
            copy.write(data)
        return cur.rowcount


def copy_rows(
    conn: psycopg.Connection,
    relation: Relation | None,
    columns: Sequence[str],
    rows: Iterable[tuple[str | None, ...]],
) -> int:
    """COPY ``rows`` (text values, None for NULL) into the table or the staging table (None).
    Raises on the first bad row. Returns the rows copied."""
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        _into(relation), sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    )
    with conn.cursor() as cur:
        with cur.copy(statement) as copy:
            for row in rows:
                copy.write_row(row)
        return cur.rowcount


_COPY_WHERE = re.compile(r"line (\d+)(?:, column ([^:]+))?")


def copy_staging(
    conn: psycopg.Connection, columns: Sequence[str], rows: Sequence[tuple[str | None, ...]]
) -> list[tuple[int, str]]:
    """COPY ``rows`` into the staging table, inside the caller's transaction, leaving out each
    row with a value that fails its column's type cast: returns ``(index in rows, reason)`` of
    those. Each COPY runs in a savepoint; after a failure the rows before the bad one are
    copied again and the copy goes on after it (at most twice the rows are sent)."""
    rejected: list[tuple[int, str]] = []
    start = 0
    while start < len(rows):
        try:
            with conn.transaction():
                copy_rows(conn, None, columns, islice(rows, start, None))
            break
        except psycopg.errors.DataError as exc:
            where = _COPY_WHERE.search(exc.diag.context or "")
            if where is None:
                raise
            bad = start + int(where.group(1)) - 1
            message = one_line(exc.diag.message_primary or str(exc))
            column = where.group(2)
            rejected.append((bad, f"{message} (column {column})" if column else message))
            if bad > start:
                with conn.transaction():
                    copy_rows(conn, None, columns, islice(rows, start, bad))
            start = bad + 1
    return rejected


_APPLY_SQL = """
WITH src AS (
    SELECT DISTINCT ON (s.{key}) s.*, {staged_fp} AS _idxr_fp
      FROM pg_temp.{staging} s
     ORDER BY s.{key}, s.ctid DESC
), changed AS (
    SELECT src.* FROM src LEFT JOIN {table} t ON t.{key} = src.{key}
     WHERE t.{key} IS NULL OR {table_fp} IS DISTINCT FROM src._idxr_fp
), written AS (
    INSERT INTO {table} AS t ({columns})
    SELECT {columns} FROM changed
    ON CONFLICT ({key}) DO {conflict}
    RETURNING (t.xmax = 0) AS inserted
){seen}
SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM written
"""
_SEEN_SQL = """, seen AS (
    INSERT INTO idxr.load_keys (load_id, key) SELECT %(load)s, src.{key}::text FROM src
)"""


def apply_staging(
    conn: psycopg.Connection,
    relation: Relation,
    columns: Sequence[str],
    key: str,
    load_id: int,
    *,
    record_keys: bool,
) -> tuple[int, int]:
    """Upsert the staged rows whose fingerprint is new (no row with their key) or differs from
    the table row's; a key staged twice keeps its last row. ``record_keys``: note every staged
    key in idxr.load_keys (for --delete-missing). Returns ``(inserted, updated)``."""
    others = [c for c in columns if c != key]
    conflict = (
        sql.SQL("UPDATE SET ")
        + sql.SQL(", ").join(
            sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c)) for c in others
        )
        if others
        else sql.SQL("NOTHING")
    )
    key_id = sql.Identifier(key)
    query = sql.SQL(_APPLY_SQL).format(
        key=key_id,
        staging=sql.Identifier(STAGING),
        staged_fp=fingerprint_sql("s", columns),
        table_fp=fingerprint_sql("t", columns),
        table=relation.identifier,
        columns=sql.SQL(", ").join(sql.Identifier(c) for c in columns),
        conflict=conflict,
        seen=sql.SQL(_SEEN_SQL).format(key=key_id) if record_keys else sql.SQL(""),
    )
    inserted, updated = conn.execute(query, {"load": load_id}).fetchone()
    return int(inserted), int(updated)


_DELETE_MISSING_SQL = """
WITH gone AS (
    DELETE FROM {table} t
     WHERE NOT EXISTS (SELECT 1 FROM idxr.load_keys k
                        WHERE k.load_id = %(load)s AND k.key = t.{key}::text)
    RETURNING 1
), forgotten AS (
    DELETE FROM idxr.load_keys WHERE load_id = %(load)s
)
SELECT count(*) FROM gone
"""


def delete_missing(conn: psycopg.Connection, relation: Relation, key: str, load_id: int) -> int:
    """Delete the rows of the table whose key load ``load_id`` did not read; forget its keys.
    Returns how many rows."""
    query = sql.SQL(_DELETE_MISSING_SQL).format(table=relation.identifier, key=sql.Identifier(key))
    (count,) = conn.execute(query, {"load": load_id}).fetchone()
    return int(count)


def manifest_installed(conn: psycopg.Connection) -> bool:
    """Whether the database has ``idxr.loads`` (revision 0005 or later)."""
    row = conn.execute("SELECT pg_catalog.to_regclass('idxr.loads') IS NOT NULL").fetchone()
    return bool(row and row[0])


# ---- the lock --------------------------------------------------------------------------------


def try_lock_table(conn: psycopg.Connection, table: str) -> bool:
    row = conn.execute(
        "SELECT pg_try_advisory_lock(%s, hashtext(%s))", [LOAD_NAMESPACE, table]
    ).fetchone()
    return bool(row[0])


def unlock_table(conn: psycopg.Connection, table: str) -> None:
    conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", [LOAD_NAMESPACE, table])


# ---- the manifest ----------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadCounts:
    """Rows of a load or a partition: read = inserted + updated + unchanged + rejected."""

    read: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0

    def __add__(self, other: LoadCounts) -> LoadCounts:
        return LoadCounts(
            *(a + b for a, b in zip(asdict(self).values(), asdict(other).values(), strict=True))
        )


@dataclass(frozen=True)
class PartitionDone:
    number: int
    first_line: int
    last_line: int
    start_byte: int
    end_byte: int
    counts: LoadCounts
    errors_bytes: int


@dataclass(frozen=True)
class Load:
    """A row of ``idxr.loads``."""

    id: int
    target_table: str
    file_path: str
    file_size: int
    file_sha256: str
    format: str
    encoding: str
    key_column: str
    signature: str
    options: dict[str, Any]
    state: str
    appends_to: int | None
    resumes: int
    start_byte: int
    end_byte: int | None
    last_line: int
    ends_with_newline: bool | None
    counts: LoadCounts
    deleted: int
    errors_path: str | None
    error: str | None
    started_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    partitions: int = 0
    last_errors_bytes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def duration_seconds(self) -> float:
        end = self.finished_at or self.updated_at
        return max(0.0, (end - self.started_at).total_seconds())

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("counts", "extra")}
        out.update({f"rows_{k}": v for k, v in asdict(self.counts).items()})
        out["rows_deleted"] = out.pop("deleted")
        out["duration_seconds"] = round(self.duration_seconds, 3)
        return out


_LOAD_SELECT = """
SELECT l.id, l.target_table, l.file_path, l.file_size, l.file_sha256, l.format, l.encoding,
       l.key_column, l.signature, l.options, l.state, l.appends_to, l.resumes, l.start_byte,
       l.end_byte, l.last_line, l.ends_with_newline, l.rows_read, l.rows_inserted,
       l.rows_updated, l.rows_unchanged, l.rows_rejected, l.rows_deleted, l.errors_path,
       l.error, l.started_at, l.updated_at, l.finished_at,
       (SELECT count(*) FROM idxr.load_partitions p WHERE p.load_id = l.id) AS partitions,
       COALESCE((SELECT p.errors_bytes FROM idxr.load_partitions p WHERE p.load_id = l.id
                  ORDER BY p.partition DESC LIMIT 1), 0) AS last_errors_bytes
  FROM idxr.loads l
"""


def _load(row: dict[str, Any]) -> Load:
    counts = LoadCounts(
        row.pop("rows_read"),
        row.pop("rows_inserted"),
        row.pop("rows_updated"),
        row.pop("rows_unchanged"),
        row.pop("rows_rejected"),
    )
    return Load(counts=counts, deleted=row.pop("rows_deleted"), **row)


def _fetch(conn: psycopg.Connection, where: str, params: Any) -> list[Load]:
    with conn.cursor(row_factory=dict_row) as cur:
        return [_load(row) for row in cur.execute(_LOAD_SELECT + where, params).fetchall()]


def get_load(conn: psycopg.Connection, load_id: int) -> Load:
    return _fetch(conn, "WHERE l.id = %s", [load_id])[0]


def list_loads(
    conn: psycopg.Connection, *, table: str | None = None, limit: int = 20
) -> list[Load]:
    """The most recent loads, newest first (of one table if given)."""
    return _fetch(
        conn,
        "WHERE %(t)s::text IS NULL OR l.target_table = %(t)s ORDER BY l.id DESC LIMIT %(n)s",
        {"t": table, "n": limit},
    )


def same_content_load(
    conn: psycopg.Connection, table: str, signature: str, sha256: str, size: int
) -> Load | None:
    """The latest finished load of the same bytes into ``table`` with the same signature."""
    found = _fetch(
        conn,
        "WHERE l.target_table = %s AND l.signature = %s AND l.file_sha256 = %s"
        " AND l.file_size = %s AND l.state IN ('done', 'unchanged') ORDER BY l.id DESC LIMIT 1",
        [table, signature, sha256, size],
    )
    return found[0] if found else None


def append_candidates(conn: psycopg.Connection, table: str, path: str, size: int) -> list[Load]:
    """Finished loads of ``path`` into ``table`` of a smaller file that ended with a line end:
    the file may have been appended to since (newest first)."""
    return _fetch(
        conn,
        "WHERE l.target_table = %s AND l.file_path = %s AND l.file_size < %s"
        " AND l.state IN ('done', 'unchanged') AND l.ends_with_newline"
        " ORDER BY l.id DESC LIMIT 5",
        [table, path, size],
    )


def resumable_load(conn: psycopg.Connection, table: str, path: str) -> Load | None:
    """The latest unfinished load of ``path`` into ``table``."""
    found = _fetch(
        conn,
        "WHERE l.target_table = %s AND l.file_path = %s ORDER BY l.id DESC LIMIT 1",
        [table, path],
    )
    return found[0] if found and found[0].state in (RUNNING, INTERRUPTED, FAILED) else None


_START_SQL = """
INSERT INTO idxr.loads (target_table, file_path, file_size, file_sha256, format, encoding,
                        key_column, signature, options, state, appends_to, start_byte,
                        end_byte, last_line, ends_with_newline, errors_path, finished_at)
VALUES (%(target_table)s, %(file_path)s, %(file_size)s, %(file_sha256)s, %(format)s,
        %(encoding)s, %(key_column)s, %(signature)s, %(options)s, %(state)s, %(appends_to)s,
        %(start_byte)s, %(start_byte)s, %(last_line)s, %(ends_with_newline)s, %(errors_path)s,
        CASE WHEN %(state)s = 'running' THEN NULL ELSE now() END)
RETURNING id
"""


def start_load(conn: psycopg.Connection, **values: Any) -> int:
    """Insert a manifest row (``state`` running, or unchanged for a no-op); returns its id."""
    values = {"appends_to": None, "errors_path": None, **values}
    values["options"] = Jsonb(values["options"])
    (load_id,) = conn.execute(_START_SQL, values).fetchone()
    return int(load_id)


def restart_load(conn: psycopg.Connection, load_id: int) -> None:
    """Mark a load running again (`--resume`)."""
    conn.execute(
        "UPDATE idxr.loads SET state = 'running', resumes = resumes + 1, error = NULL,"
        " finished_at = NULL, updated_at = now() WHERE id = %s",
        [load_id],
    )


_PARTITION_SQL = """
WITH p AS (
    INSERT INTO idxr.load_partitions (load_id, partition, first_line, last_line, start_byte,
                                      end_byte, rows_read, rows_inserted, rows_updated,
                                      rows_unchanged, rows_rejected, errors_bytes)
    VALUES (%(load)s, %(number)s, %(first_line)s, %(last_line)s, %(start_byte)s, %(end_byte)s,
            %(read)s, %(inserted)s, %(updated)s, %(unchanged)s, %(rejected)s, %(errors_bytes)s)
)
UPDATE idxr.loads SET rows_read = rows_read + %(read)s,
                      rows_inserted = rows_inserted + %(inserted)s,
                      rows_updated = rows_updated + %(updated)s,
                      rows_unchanged = rows_unchanged + %(unchanged)s,
                      rows_rejected = rows_rejected + %(rejected)s,
                      end_byte = %(end_byte)s, last_line = %(last_line)s, updated_at = now()
 WHERE id = %(load)s
"""


def commit_partition(conn: psycopg.Connection, load_id: int, done: PartitionDone) -> None:
    """Record a partition and add its counts to its load (in the caller's transaction, the one
    that wrote its rows)."""
    params = {
        "load": load_id,
        **{k: v for k, v in asdict(done).items() if k != "counts"},
        **asdict(done.counts),
    }
    conn.execute(_PARTITION_SQL, params)


def finish_load(
    conn: psycopg.Connection,
    load_id: int,
    state: str,
    *,
    deleted: int = 0,
    error: str | None = None,
    last_line: int | None = None,
) -> None:
    conn.execute(
        "UPDATE idxr.loads SET state = %(state)s, rows_deleted = rows_deleted + %(deleted)s,"
        " error = %(error)s, last_line = COALESCE(%(last_line)s, last_line),"
        " updated_at = now(), finished_at = now() WHERE id = %(id)s",
        {"state": state, "deleted": deleted, "error": error, "id": load_id, "last_line": last_line},
    )


def reconcile_abandoned(conn: psycopg.Connection, table: str | None = None) -> int:
    """Mark ``running`` loads whose process is gone (their table's lock is free) interrupted;
    on an autocommit connection. Returns how many."""
    rows = conn.execute(
        "SELECT id, target_table FROM idxr.loads WHERE state = 'running'"
        " AND (%(t)s::text IS NULL OR target_table = %(t)s)",
        {"t": table},
    ).fetchall()
    marked = 0
    held_here: set[str] = set()
    for load_id, target in rows:
        if target in held_here or try_lock_table(conn, target):
            held_here.add(target)
            conn.execute(
                "UPDATE idxr.loads SET state = 'interrupted', updated_at = now()"
                " WHERE id = %s AND state = 'running'",
                [load_id],
            )
            marked += 1
    for target in held_here:
        unlock_table(conn, target)
    return marked
