"""One `idxr-pg load` of a file into a table: decide what to read, then partition by partition
copy, compare fingerprints, upsert and record the manifest (SQL in `idxr_pg.db.loads`).

What is read:
- the same bytes already loaded into the table with the same signature (format, encoding,
  key, columns): nothing; the manifest gets an ``unchanged`` row (``--force`` reads anyway);
- with ``--resume``, the latest unfinished load of the file, if the file is the same: from the
  end of its last committed partition, continuing that load;
- a file that grew past a finished load of it (same path, its old bytes unchanged, the old
  file ended with a line end): only the bytes after the old end (not with --delete-missing);
- otherwise the whole file.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import psycopg

from idxr_pg.db import loads as db
from idxr_pg.db.catalog import Relation, UnknownTableError, current_schema, resolve_table
from idxr_pg.db.connection import connect, one_line, redact
from idxr_pg.loading.chunks import Chunk, csv_chunks
from idxr_pg.loading.encoding import Encoding, choose_encoding
from idxr_pg.loading.errors import LoadError
from idxr_pg.loading.formats import (
    SUFFIXES,
    Record,
    csv_header,
    csv_records,
    json_keys,
    jsonl_records,
)
from idxr_pg.loading.lines import decode_lines, read_lines
from idxr_pg.loading.plan import (
    Plan,
    create_columns_from_fields,
    create_columns_from_json,
    create_columns_from_model,
    parse_maps,
    plan_load,
)
from idxr_pg.loading.rejects import Reject, RejectFile
from idxr_pg.loading.scan import FileScan, scan_file
from idxr_pg.records.counts import Counts
from idxr_pg.runtime.progress import make_progress

__all__ = ["DEFAULT_PARTITION_ROWS", "LoadOptions", "Loader", "infer_format"]

log = logging.getLogger(__name__)

DEFAULT_PARTITION_ROWS = 20_000


@dataclass(frozen=True)
class LoadOptions:
    table: str
    format: str | None = None
    key: str | None = None
    maps: tuple[str, ...] = ()
    create: bool = False
    model: str | None = None
    delete_missing: bool = False
    resume: bool = False
    force: bool = False
    encoding: str | None = None
    errors_path: Path | None = None
    partition_rows: int = DEFAULT_PARTITION_ROWS
    progress_interval: float = 10.0
    tty: bool | None = None


def infer_format(path: Path, given: str | None) -> str:
    if given:
        return given
    found = SUFFIXES.get(path.suffix.lower())
    if found is None:
        raise LoadError(
            f"{path}: cannot tell the format from the extension {path.suffix or '(none)'!r}; "
            "give --format csv or --format jsonl"
        )
    return found


def _check_file(path: Path) -> Path:
    if not path.exists():
        raise LoadError(f"{path}: no such file")
    if not path.is_file():
        raise LoadError(f"{path}: not a regular file")
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise LoadError(f"{path}: cannot read: {exc.strerror}") from None
    return path.resolve()


@dataclass
class _Source:
    """What the file says before any row is read."""

    path: Path
    file_format: str
    scan: FileScan
    encoding: Encoding
    cr_only: bool
    fields: list[str]  # CSV header, or the keys of the first JSON objects
    samples: dict[str, object]  # JSONL: a value per key (for --create)
    body_start: int  # byte offset of the first row (after the header)
    header_lines: int

    @property
    def raw(self) -> bool:
        """Whether COPY can parse and decode the body itself (CSV in a codec it knows)."""
        return (
            self.file_format == "csv"
            and self.encoding.ascii_compatible
            and self.encoding.postgres is not None
        )

    def lines(self, start: int, first_number: int):
        return read_lines(
            self.path, self.encoding, start=start, first_number=first_number, cr_only=self.cr_only
        )


class Loader:
    """Loads files into ``options.table`` over one connection holding the table's load lock."""

    def __init__(self, database_url: str, options: LoadOptions) -> None:
        self.url = database_url
        self.options = options
        self.maps = parse_maps(options.maps)
        if options.partition_rows < 1:
            raise LoadError("--partition-rows must be at least 1")

    # ---- the whole run ------------------------------------------------------------------

    def run(self, path: Path) -> db.Load:
        file_format = infer_format(path, self.options.format)
        path = _check_file(path)
        with connect(self.url, autocommit=True, vector=False) as conn:
            if not db.manifest_installed(conn):
                raise LoadError(
                    f"{redact(self.url)} has no idxr.loads (no idxr schema, or an older one): "
                    "run `idxr-pg migrate`"
                )
            relation = self._relation(conn)
            name = relation.qualified if relation else self._qualified(conn)
            if not db.try_lock_table(conn, name):
                raise LoadError(f"another load into table {name} is running; wait for it to end")
            try:
                db.reconcile_abandoned(conn, name)
                return self._run_locked(conn, path, file_format, relation)
            finally:
                if not conn.closed and not conn.broken:
                    db.unlock_table(conn, name)

    def _qualified(self, conn: psycopg.Connection) -> str:
        """``schema.table`` of a table to create (the current schema when unqualified)."""
        table = self.options.table
        if "." in table:
            return table
        return f"{current_schema(conn)}.{table}"

    def _relation(self, conn: psycopg.Connection) -> Relation | None:
        table = self.options.table
        if len(table.split(".")) > 2 or not all(table.split(".")):
            raise LoadError(f"--table {table!r}: expected TABLE or SCHEMA.TABLE")
        try:
            relation = resolve_table(conn, table)
        except UnknownTableError:
            if self.options.create:
                return None
            raise LoadError(
                f"table {table} does not exist (create it from the file with --create)"
            ) from None
        if not relation.is_table:
            raise LoadError(f"--table {table}: {relation.qualified} is {relation.description}")
        return relation

    def _run_locked(
        self, conn: psycopg.Connection, path: Path, file_format: str, relation: Relation | None
    ) -> db.Load:
        size = path.stat().st_size
        candidates = []
        if relation is not None:
            candidates = db.append_candidates(conn, relation.qualified, str(path), size)
        source = self._read_source(path, file_format, [c.file_size for c in candidates])
        if relation is None:
            relation = self._create(conn, source)
        plan = self._plan(conn, relation, source)
        signature = plan.signature(file_format, source.encoding.codec)
        target = relation.qualified
        options = self.options
        fresh = {
            "target_table": target,
            "file_path": str(path),
            "file_size": source.scan.size,
            "file_sha256": source.scan.sha256,
            "format": file_format,
            "encoding": source.encoding.codec,
            "key_column": plan.key,
            "signature": signature,
            "options": {"columns": plan.mapping, "delete_missing": options.delete_missing},
            "ends_with_newline": source.scan.ends_with_newline(source.encoding.codec),
        }
        errors_path = options.errors_path or path.with_name(path.name + ".errors.yaml")

        if options.resume:
            previous = db.resumable_load(conn, target, str(path))
            if previous and (previous.file_sha256, previous.signature) == (
                source.scan.sha256,
                signature,
            ):
                log.info(
                    "resuming load #%d of %s after line %d", previous.id, path, previous.last_line
                )
                db.restart_load(conn, previous.id)
                start = previous.end_byte if previous.partitions else previous.start_byte
                rejects = RejectFile(
                    Path(previous.errors_path or errors_path),
                    path,
                    keep_bytes=previous.last_errors_bytes,
                )
                return self._read(
                    conn,
                    relation,
                    plan,
                    source,
                    previous.id,
                    start,
                    previous.last_line,
                    rejects,
                    previous.partitions,
                )
            if previous:
                log.warning(
                    "load #%d of %s cannot be resumed: the file or the options changed since; "
                    "loading it again",
                    previous.id,
                    path,
                )
            else:
                log.info("no unfinished load of %s into %s to resume; loading it", path, target)

        if not options.force:
            same = db.same_content_load(
                conn, target, signature, source.scan.sha256, source.scan.size
            )
            if same is not None:
                load_id = db.start_load(
                    conn,
                    **fresh,
                    state=db.UNCHANGED,
                    start_byte=source.scan.size,
                    last_line=same.last_line,
                )
                log.info(
                    "%s is unchanged since load #%d into %s: nothing to do", path, same.id, target
                )
                return db.get_load(conn, load_id)

        start, last_line, appends_to = source.body_start, source.header_lines, None
        if not options.force and not options.delete_missing:
            for old in candidates:
                prefix = source.scan.prefix_sha256.get(old.file_size)
                if old.signature == signature and prefix == old.file_sha256:
                    start, last_line, appends_to = old.file_size, old.last_line, old.id
                    log.info(
                        "%s grew since load #%d: reading from byte %d (line %d)",
                        path,
                        old.id,
                        start,
                        last_line + 1,
                    )
                    break
        load_id = db.start_load(
            conn,
            **fresh,
            state=db.RUNNING,
            appends_to=appends_to,
            start_byte=start,
            last_line=last_line,
            errors_path=str(errors_path),
        )
        rejects = RejectFile(errors_path, path)
        return self._read(conn, relation, plan, source, load_id, start, last_line, rejects, 0)

    # ---- before the rows ----------------------------------------------------------------

    def _read_source(self, path: Path, file_format: str, prefixes: list[int]) -> _Source:
        scan = scan_file(path, prefixes)
        encoding = choose_encoding(scan, self.options.encoding)
        cr_only = encoding.ascii_compatible and scan.newlines == 0 and scan.carriage_returns > 0
        source = _Source(path, file_format, scan, encoding, cr_only, [], {}, encoding.bom, 0)
        if file_format == "csv":
            fields, last, end = csv_header(source.lines(0, 1))
            if not fields:
                raise LoadError(f"{path}: empty file, no CSV header")
            source.fields, source.header_lines, source.body_start = fields, last, end
        else:
            source.samples = json_keys(source.lines(0, 1))
            source.fields = list(source.samples)
        return source

    def _create(self, conn: psycopg.Connection, source: _Source) -> Relation:
        options = self.options
        if options.model:
            from idxr_pg.indexing.registry import RegistryError, import_model

            try:
                model = import_model("--model", options.model)
            except RegistryError as exc:
                raise LoadError(f"--model {options.model}: {exc}") from None
            columns = create_columns_from_model(model)
        elif source.file_format == "csv":
            columns = create_columns_from_fields(source.fields, self.maps)
        else:
            columns = create_columns_from_json(source.samples, self.maps)
        if not columns:
            raise LoadError(f"{source.path}: no fields to create table {options.table} from")
        names = [name for name, _ in columns]
        key = options.key or ("id" if "id" in names else names[0])
        if key not in names:
            raise LoadError(
                f"--key {key}: not a column of the table to create ({', '.join(names)})"
            )
        schema, _, name = self._qualified(conn).rpartition(".")
        db.create_table(conn, schema, name, columns, key)
        log.info(
            "created table %s.%s (%d columns, primary key %s)", schema, name, len(columns), key
        )
        return resolve_table(conn, f"{schema}.{name}")

    def _plan(self, conn: psycopg.Connection, relation: Relation, source: _Source) -> Plan:
        columns = db.target_columns(conn, relation)
        primary, unique = db.table_keys(conn, relation)
        key = self.options.key
        if key is None:
            if len(primary) != 1:
                raise LoadError(
                    f"table {relation.qualified} has "
                    + ("a composite primary key" if primary else "no primary key")
                    + ": name a column with a unique index with --key"
                )
            key = primary[0]
        elif key not in unique:
            known = {c.name for c in columns}
            raise LoadError(
                f"--key {key}: table {relation.qualified} has no column {key}"
                if key not in known
                else f"--key {key}: column {key} of {relation.qualified} has no unique index "
                "of its own (a load upserts on it)"
            )
        generated = {c.name for c in columns if c.generated}
        for column in self.maps:
            if column in generated:
                raise LoadError(f"--map {column}=...: column {column} is generated")
        writable = {c.name: c.needs_value for c in columns if not c.generated}
        return plan_load(
            file_label=str(source.path),
            table=relation.qualified,
            file_fields=source.fields,
            header=source.file_format == "csv",
            columns=writable,
            key=key,
            maps=self.maps,
        )

    # ---- the rows -----------------------------------------------------------------------

    def _parts(self, source: _Source, plan: Plan, start: int, last_line: int) -> Iterator[_Part]:
        """The partitions after byte ``start`` / line ``last_line``: raw chunks when PostgreSQL
        can parse and decode the file itself (CSV in a codec it knows), else parsed records."""
        rows = self.options.partition_rows
        if source.raw:
            for chunk in csv_chunks(
                source.path,
                start=start,
                first_number=last_line + 1,
                rows=rows,
                cr_only=source.cr_only,
            ):
                yield _Part(chunk.start, chunk.end, chunk.first_line, chunk.last_line, chunk=chunk)
            return
        lines = source.lines(start, last_line + 1)
        if source.file_format == "csv":
            picks = plan.picks(source.fields)
            records = csv_records(lines, len(source.fields), picks, plan.required)
        else:
            records = jsonl_records(lines, plan.fields, plan.required)
        batch: list[Record] = []
        for record in records:
            batch.append(record)
            if len(batch) >= rows:
                yield _Part(start, record.end, last_line + 1, record.last_line, records=batch)
                start, last_line, batch = record.end, record.last_line, []
        if batch:
            last = batch[-1]
            yield _Part(start, last.end, last_line + 1, last.last_line, records=batch)

    def _read(
        self,
        conn: psycopg.Connection,
        relation: Relation,
        plan: Plan,
        source: _Source,
        load_id: int,
        start: int,
        last_line: int,
        rejects: RejectFile,
        partitions_done: int,
    ) -> db.Load:
        options = self.options
        conn.autocommit = False
        total_lines = source.scan.newlines or source.scan.carriage_returns
        if not source.scan.ends_with_newline(source.encoding.codec):
            total_lines += 1
        expected = max(0, total_lines - last_line)  # lines left: about the rows left
        progress = make_progress(
            f"load {source.path.name}",
            total=expected,
            extra={"load_id": load_id, "table": relation.qualified},
            tty=options.tty,
            interval=options.progress_interval,
            unit="rows",
            embedding=False,
        )
        writer = _PartitionWriter(conn, relation, plan, source, load_id, options.delete_missing)
        counts = db.LoadCounts()
        started = time.monotonic()
        number = partitions_done
        where = "its start"
        try:
            with conn.transaction():
                db.create_staging(conn, relation, plan.columns)
            for part in self._parts(source, plan, start, last_line):
                where = f"lines {part.first_line}-{part.last_line}"
                number += 1
                with conn.transaction():
                    part_counts, bad = writer.write(part)
                    bad.sort()
                    done = db.PartitionDone(
                        number,
                        part.first_line,
                        part.last_line,
                        part.start,
                        part.end,
                        part_counts,
                        rejects.write(bad),
                    )
                    db.commit_partition(conn, load_id, done)
                counts = counts + part_counts
                elapsed = time.monotonic() - started
                rate = counts.read / elapsed if elapsed else None
                progress.update(Counts(entities=counts.read), max(expected, counts.read), rate)
            deleted = 0
            where = "its end"
            with conn.transaction():
                if options.delete_missing:
                    deleted = db.delete_missing(conn, relation, plan.key, load_id)
                db.finish_load(conn, load_id, db.DONE, deleted=deleted)
        except psycopg.Error as exc:
            _record_failure(conn, load_id, exc)
            raise LoadError(
                f"load #{load_id} of {source.path} into {relation.qualified} failed at {where}: "
                f"{one_line(str(exc))} (the partitions before are committed: fix the cause, "
                "then run the same load with --resume)"
            ) from exc
        except BaseException as exc:
            _record_failure(conn, load_id, exc)
            raise
        finally:
            progress.close()
            rejects.close()
            conn.autocommit = True
        return db.get_load(conn, load_id)


@dataclass
class _Part:
    """A partition: its byte and line range, and its raw chunk or its parsed records."""

    start: int
    end: int
    first_line: int
    last_line: int
    chunk: Chunk | None = None
    records: list[Record] | None = None


_RETRYABLE = (psycopg.errors.DataError, psycopg.errors.IntegrityError)


class _PartitionWriter:
    """Writes one partition, inside the caller's transaction, the fastest way that works:

    1. straight into the table with COPY (not with --delete-missing): works when none of its
       keys is in the table yet (a first load, appended lines) and every row is good;
    2. else COPY into the staging table and upsert the rows whose fingerprint is new or
       changed (`idxr_pg.db.loads.apply_staging`);
    3. if the raw chunk has a bad row (COPY or the upsert refused it), parse it line by line
       in Python: bad lines are rejected with their reason, values that fail their type are
       found by `copy_staging`, and 1 (if no key was in the table) or 2 runs on the rest.

    Each attempt runs in a savepoint, so a failed one leaves nothing behind."""

    def __init__(
        self,
        conn: psycopg.Connection,
        relation: Relation,
        plan: Plan,
        source: _Source,
        load_id: int,
        delete_missing: bool,
    ) -> None:
        self.conn = conn
        self.relation = relation
        self.plan = plan
        self.source = source
        self.load_id = load_id
        self.delete_missing = delete_missing
        self.file_columns = plan.in_field_order(source.fields) if source.raw else []

    def _attempt(
        self, action: Callable[[], db.LoadCounts]
    ) -> tuple[db.LoadCounts | None, Exception | None]:
        try:
            with self.conn.transaction():
                return action(), None
        except _RETRYABLE as exc:
            return None, exc

    def _apply(self) -> tuple[int, int]:
        return db.apply_staging(
            self.conn,
            self.relation,
            self.plan.columns,
            self.plan.key,
            self.load_id,
            record_keys=self.delete_missing,
        )

    def write(self, part: _Part) -> tuple[db.LoadCounts, list[Reject]]:
        direct = not self.delete_missing
        if part.chunk is not None:
            data = part.chunk.data
            encoding = self.source.encoding.postgres or "UTF8"
            if not _has_end_marker(data):
                if direct:
                    counts, error = self._attempt(lambda: self._copy_raw(data, encoding, True))
                    if counts is not None:
                        return counts, []
                    direct = not isinstance(error, psycopg.errors.UniqueViolation)
                counts, _ = self._attempt(lambda: self._copy_raw(data, encoding, False))
                if counts is not None:
                    return counts, []
            lines = decode_lines(
                part.chunk.lines, self.source.encoding.codec, part.start, part.first_line
            )
            picks = self.plan.picks(self.source.fields)
            records = list(csv_records(lines, len(self.source.fields), picks, self.plan.required))
        else:
            records = part.records or []
        return self._write_records(records, direct)

    def _copy_raw(self, data: bytes, encoding: str, direct: bool) -> db.LoadCounts:
        if direct:
            n = db.copy_csv(self.conn, self.relation, self.file_columns, data, encoding)
            return db.LoadCounts(n, n, 0, 0, 0)
        n = db.copy_csv(self.conn, None, self.file_columns, data, encoding)
        inserted, updated = self._apply()
        return db.LoadCounts(n, inserted, updated, n - inserted - updated, 0)

    def _write_records(
        self, records: list[Record], direct: bool
    ) -> tuple[db.LoadCounts, list[Reject]]:
        bad = [
            Reject(r.first_line, r.last_line, r.raw, r.problem or "bad line")
            for r in records
            if r.values is None
        ]
        good = [r for r in records if r.values is not None]
        rows = [r.values for r in good]
        read = len(records)
        if direct and rows:
            counts, _ = self._attempt(
                lambda: _inserted(db.copy_rows(self.conn, self.relation, self.plan.columns, rows))
            )
            if counts is not None:
                return replace(counts, read=read, rejected=len(bad)), bad
        for index, reason in db.copy_staging(self.conn, self.plan.columns, rows):
            r = good[index]
            bad.append(Reject(r.first_line, r.last_line, r.raw, reason))
        inserted, updated = self._apply() if rows else (0, 0)
        return db.LoadCounts(
            read, inserted, updated, read - len(bad) - inserted - updated, len(bad)
        ), bad


def _inserted(n: int) -> db.LoadCounts:
    return db.LoadCounts(n, n, 0, 0, 0)


def _has_end_marker(data: bytes) -> bool:
    """Whether a line is ``\\.`` alone, which COPY would take for the end of its data."""
    return data.startswith(b"\\.") or b"\n\\." in data or b"\r\\." in data


def _record_failure(conn: psycopg.Connection, load_id: int, exc: BaseException) -> None:
    """Mark the load failed (an error) or interrupted (a signal); best effort."""
    if conn.closed or conn.broken:
        return
    interrupted = isinstance(exc, KeyboardInterrupt | SystemExit)
    try:
        conn.rollback()
        with conn.transaction():
            db.finish_load(
                conn,
                load_id,
                db.INTERRUPTED if interrupted else db.FAILED,
                error=None if interrupted else one_line(str(exc))[:2000],
            )
    except psycopg.Error:
        log.warning("could not record the end of load #%d", load_id)
