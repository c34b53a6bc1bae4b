"""Backfill: stream every existing row of an entity kind through the pipeline, with checkpoints.

How it runs (one process, one job row in idxr.jobs):

1. Take the per-kind backfill lock (session advisory lock on a control connection; a second
   backfill of the same kind is refused) and mark dead runs of the kind interrupted.
2. Stream the source table's keys in key order, one page per query
   (``WHERE key > last ORDER BY key LIMIT page``: an index range scan, its own short
   statement, so no transaction or snapshot stays open for the length of the backfill and
   memory stays constant whatever the table size).
3. Each batch of keys goes through the pipeline exactly as the worker's batches do; the job's
   checkpoint (the batch's last key) and counts are advanced by the pipeline's ``finalize``
   hook INSIDE the transaction that writes the batch's rows, so a kill at any moment leaves
   checkpoint and index consistent. ``--resume`` restarts after that checkpoint.
4. After the last key: the sweep. Entities still in the index whose source row no longer
   exists go through the pipeline too, which removes them; a full backfill therefore leaves
   the index equal to the flattening of the current table.

Between batches it checks ``should_stop`` (SIGINT/SIGTERM): the job is then marked
interrupted and can be resumed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from idxr_pg.config import IdxrConfig
from idxr_pg.db import jobs
from idxr_pg.db.connection import connect
from idxr_pg.db.jobs import Job, JobCounts
from idxr_pg.embedding import Embedder, EmbeddingCache, EmbeddingService, load_embedder
from idxr_pg.errors import IdxrError
from idxr_pg.indexing.failures import Backoff, record_failure
from idxr_pg.indexing.pipeline import BatchResult, Pipeline
from idxr_pg.indexing.registry import RegisteredKind, register, resolve_kind
from idxr_pg.runtime.progress import ProgressReporter, make_progress

log = logging.getLogger(__name__)

MIN_PAGE_SIZE = 500
"""Keys fetched per query at least (pages are split into pipeline batches)."""

# ---- SQL (identifiers come from the registry and are always quoted) ---------------------------


def _first_page_sql(kind: RegisteredKind) -> sql.Composed:
    return sql.SQL(
        "SELECT t.{key}::text FROM {table} AS t WHERE t.{key} IS NOT NULL "
        "ORDER BY t.{key} LIMIT %(limit)s"
    ).format(key=sql.Identifier(kind.key), table=sql.Identifier(kind.schema, kind.table))


def _next_page_sql(kind: RegisteredKind) -> sql.Composed:
    return sql.SQL(
        "SELECT t.{key}::text FROM {table} AS t WHERE t.{key} > %(after)s::{key_type} "
        "ORDER BY t.{key} LIMIT %(limit)s"
    ).format(
        key=sql.Identifier(kind.key),
        table=sql.Identifier(kind.schema, kind.table),
        key_type=sql.SQL(kind.key_type),
    )


def _count_sql(kind: RegisteredKind) -> sql.Composed:
    return sql.SQL("SELECT count(*) FROM {table} AS t WHERE t.{key} IS NOT NULL").format(
        key=sql.Identifier(kind.key), table=sql.Identifier(kind.schema, kind.table)
    )


def _orphans_sql(kind: RegisteredKind) -> sql.Composed:
    """Indexed entity ids of the kind without a source row (a hash anti-join on the key text)."""
    return sql.SQL(
        "SELECT DISTINCT s.entity_id FROM idxr.search_index AS s "
        "WHERE s.entity_kind = %(kind)s AND NOT EXISTS ("
        "SELECT 1 FROM {table} AS t WHERE t.{key}::text = s.entity_id) "
        "ORDER BY s.entity_id"
    ).format(key=sql.Identifier(kind.key), table=sql.Identifier(kind.schema, kind.table))


_KEY_INDEXED_SQL = """
SELECT EXISTS (
    SELECT 1 FROM pg_index i
    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
    WHERE i.indrelid = to_regclass(%(regclass)s) AND a.attname = %(key)s
)
"""

# ---- streaming ---------------------------------------------------------------------------------


def iter_key_pages(
    conn: psycopg.Connection, kind: RegisteredKind, *, after: str | None, page_size: int
) -> Iterator[list[str]]:
    """Pages of keys (as text) in key order, strictly after ``after``; one statement per page."""
    first, rest = _first_page_sql(kind), _next_page_sql(kind)
    while True:
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
    database_url: str, kind: RegisteredKind, batch_size: int
) -> Iterator[list[str]]:
    """Batches of indexed ids whose source row is gone, from a server-side cursor."""
    with connect(database_url, vector=False) as conn:
        with conn.cursor(name="idxr_backfill_orphans") as cur:
            cur.itersize = batch_size
            cur.execute(_orphans_sql(kind), {"kind": kind.name})
            while True:
                rows = cur.fetchmany(batch_size)
                if not rows:
                    break
                yield [row[0] for row in rows]
        conn.rollback()


def chunks(items: Sequence[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


# ---- the run -----------------------------------------------------------------------------------


def state_checkpoint(control: psycopg.Connection, job_id: int) -> str | None:
    try:
        job = jobs.get_job(control, job_id)
    except psycopg.Error:
        return None
    return job.checkpoint if job else None


class BackfillError(IdxrError):
    """A backfill cannot start or stopped on an error; the message says how to resume."""


class BackfillInterrupted(IdxrError):
    """Stopped on request after a batch; the job is marked interrupted and can be resumed."""

    def __init__(self, job: Job) -> None:
        self.job = job
        super().__init__(
            f"backfill of {job.entity_kind!r} interrupted at checkpoint {job.checkpoint!r} "
            f"(job #{job.id}, {job.counts.done} entities done); resume with "
            f"`idxr-pg backfill {job.entity_kind} --resume`"
        )


@dataclass(frozen=True)
class BackfillOptions:
    force: bool = False
    resume: bool = False
    batch_size: int = 64
    page_size: int | None = None
    progress_interval: float = 10.0
    tty: bool | None = None


def counts_of(result: BatchResult, *, streamed: bool) -> JobCounts:
    """Job count increments for one pipeline BatchResult (``streamed``: counts toward done)."""
    return JobCounts(
        done=result.entities if streamed else 0,
        embedded=result.texts_embedded,
        cache_hits=result.cache_hits,
        records_written=result.records_written,
        records_deleted=result.records_deleted,
        unchanged=result.unchanged,
        deleted=result.deleted,
        skipped=result.skipped,
        failed=result.failed,
    )


@dataclass
class _RunState:
    job: Job
    base: JobCounts
    counts: JobCounts
    started: float = field(default_factory=time.monotonic)

    def rate(self) -> float | None:
        elapsed = time.monotonic() - self.started
        done = self.counts.done - self.base.done
        return done / elapsed if elapsed > 0 and done > 0 else None


class Backfill:
    """One backfill run of one entity kind; see the module docstring."""

    def __init__(
        self,
        database_url: str,
        config: IdxrConfig,
        kind_name: str,
        options: BackfillOptions,
        *,
        embedder: Embedder | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        self.database_url = database_url
        self.config = config
        self.entity = config.entity(kind_name)
        self.options = options
        self.should_stop = should_stop
        self._embedder = embedder
        # One backfill per kind runs at a time (the kind lock), so the lease owner is stable
        # per kind: a resumed run renews the leases a killed run left behind instead of
        # skipping those entities until the leases expire.
        self.owner = f"backfill:{kind_name}"
        settings = config.worker
        self.backoff = Backoff(settings.backoff_base_seconds, settings.backoff_max_seconds)

    # -- pieces --

    def _conninfo(self, role: str) -> str:
        """The URL with an application_name that shows in pg_stat_activity."""
        return psycopg.conninfo.make_conninfo(
            self.database_url, application_name=f"idxr-backfill {self.entity.name} {role}"[:63]
        )

    def _resume_point(
        self, control: psycopg.Connection
    ) -> tuple[Job | None, str | None, JobCounts]:
        if not self.options.resume:
            previous = jobs.latest_job(control, self.entity.name)
            if previous is not None and previous.state in jobs.RESUMABLE_STATES:
                log.info(
                    "job #%d of %s was %s at checkpoint %r; starting over (use --resume to "
                    "continue it instead)",
                    previous.id,
                    self.entity.name,
                    previous.state,
                    previous.checkpoint,
                    extra={"entity_kind": self.entity.name, "job_id": previous.id},
                )
            return None, None, JobCounts()
        previous = jobs.resumable_job(control, self.entity.name)
        if self.options.force and not previous.options.get("force"):
            raise BackfillError(
                f"job #{previous.id} of {self.entity.name!r} ran without --force: resume it "
                f"without --force, or start a new forced backfill (without --resume)"
            )
        return previous, previous.checkpoint, previous.counts

    def _warn_unindexed_key(self, control: psycopg.Connection, kind: RegisteredKind) -> None:
        regclass = sql.Identifier(kind.schema, kind.table).as_string(control)
        row = control.execute(_KEY_INDEXED_SQL, {"regclass": regclass, "key": kind.key}).fetchone()
        if not (row and row[0]):
            log.warning(
                "%s: no index starts with key column %s of %s; every page of keys scans the "
                "table (add an index or primary key on it)",
                kind.name,
                kind.key,
                kind.source_table,
                extra={"entity_kind": kind.name},
            )

    # -- run --

    def run(self) -> Job:
        """Run to the end (returns the succeeded job) or raise BackfillInterrupted/BackfillError."""
        name = self.entity.name
        control = connect(self._conninfo("control"), autocommit=True)
        try:
            if not jobs.try_lock_kind(control, name):
                running = jobs.latest_job(control, name)
                detail = (
                    f" (job #{running.id}, pid {running.pid} on {running.host})" if running else ""
                )
                raise BackfillError(
                    f"another backfill of {name!r} is running{detail}; wait for it or stop it"
                )
            jobs.reconcile_abandoned(control)
            kind = resolve_kind(control, self.entity)
            embedder = self._embedder or load_embedder(self.config.embedding)
            register(control, [kind], embedder)
            self._warn_unindexed_key(control, kind)
            previous, checkpoint, base = self._resume_point(control)
            total = control.execute(_count_sql(kind)).fetchone()[0]
            force = bool(previous.options.get("force")) if previous else self.options.force
            job = jobs.create_job(
                control,
                name,
                options={
                    "force": force,
                    "batch_size": self.options.batch_size,
                    "resume": previous is not None,
                },
                total=total,
                checkpoint=checkpoint,
                counts=base,
                resumed_from=previous.id if previous else None,
            )
            state = _RunState(job=job, base=base, counts=base)
            log.info(
                "backfill of %s started: job #%d, %d rows in %s%s%s",
                name,
                job.id,
                total,
                kind.source_table,
                f", resuming job #{previous.id} after key {checkpoint!r}" if previous else "",
                ", forced re-embedding" if force else "",
                extra={
                    "entity_kind": name,
                    "job_id": job.id,
                    "total": total,
                    "checkpoint": checkpoint,
                    "resumed_from": previous.id if previous else None,
                    "force": force,
                },
            )
            progress = make_progress(
                f"backfill {name}",
                total=total,
                done=base.done,
                extra={"entity_kind": name, "job_id": job.id},
                tty=self.options.tty,
                interval=self.options.progress_interval,
            )
            cache = EmbeddingCache(self._conninfo("cache"))
            service = EmbeddingService(embedder, self.config.embedding, cache)
            pipeline = Pipeline(kind, service, lease_seconds=self.config.worker.lease_seconds)
            try:
                with connect(self._conninfo("work"), autocommit=True) as work:
                    stopped = self._stream(work, kind, pipeline, state, checkpoint, force, progress)
                    if not stopped:
                        stopped = self._sweep(work, kind, pipeline, state, progress)
            except BaseException as exc:
                progress.close()
                self._fail(control, state, exc)
                if isinstance(exc, psycopg.Error):
                    raise BackfillError(
                        f"backfill of {name!r} failed (job #{job.id}, checkpoint "
                        f"{state_checkpoint(control, job.id)!r}): {type(exc).__name__}: "
                        f"{str(exc).strip()}; resume with `idxr-pg backfill {name} --resume`"
                    ) from exc
                raise
            finally:
                cache.close()
            progress.close()
            if stopped:
                jobs.finish_job(control, job.id, jobs.INTERRUPTED, rate=state.rate())
                final = jobs.get_job(control, job.id)
                assert final is not None
                log.warning(
                    "backfill of %s interrupted: job #%d, %d entities done, checkpoint %r; "
                    "resume with `idxr-pg backfill %s --resume`",
                    name,
                    job.id,
                    final.counts.done,
                    final.checkpoint,
                    name,
                    extra={"entity_kind": name, "job_id": job.id, **final.counts.as_dict()},
                )
                raise BackfillInterrupted(final)
            jobs.finish_job(control, job.id, jobs.SUCCEEDED, rate=state.rate())
            final = jobs.get_job(control, job.id)
            assert final is not None
            log.info(
                "backfill of %s finished: job #%d, %d entities (%d unchanged, %d deleted, "
                "%d skipped, %d failed), %d fields embedded, %d cache hits, %d records "
                "written, %d deleted, in %.1fs",
                name,
                job.id,
                final.counts.done,
                final.counts.unchanged,
                final.counts.deleted,
                final.counts.skipped,
                final.counts.failed,
                final.counts.embedded,
                final.counts.cache_hits,
                final.counts.records_written,
                final.counts.records_deleted,
                final.duration_seconds,
                extra={"entity_kind": name, "job_id": job.id, **final.counts.as_dict()},
            )
            return final
        finally:
            control.close()  # also releases the kind lock

    def _fail(self, control: psycopg.Connection, state: _RunState, exc: BaseException) -> None:
        if isinstance(exc, KeyboardInterrupt):
            final_state, message = jobs.INTERRUPTED, "stopped by a second interrupt"
        else:
            final_state, message = jobs.FAILED, f"{type(exc).__name__}: {exc}"
        try:
            jobs.finish_job(control, state.job.id, final_state, error=message, rate=state.rate())
        except psycopg.Error:
            log.exception("could not mark job #%d %s", state.job.id, final_state)
        log.error(
            "backfill of %s %s: job #%d: %s; resume with `idxr-pg backfill %s --resume`",
            state.job.entity_kind,
            final_state,
            state.job.id,
            message,
            state.job.entity_kind,
            extra={"entity_kind": state.job.entity_kind, "job_id": state.job.id},
        )

    def _index(
        self,
        work: psycopg.Connection,
        pipeline: Pipeline,
        state: _RunState,
        ids: list[str],
        *,
        checkpoint: str | None,
        force: bool,
    ) -> BatchResult:
        """One batch through the pipeline; job counts and checkpoint move in its write."""
        streamed = checkpoint is not None
        rate = state.rate()
        kind = pipeline.kind

        def finalize(conn: psycopg.Connection, result: BatchResult) -> None:
            for failure in result.failures:
                outcome = record_failure(
                    conn,
                    kind.name,
                    failure.entity_id,
                    failure.stage,
                    failure.exception,
                    failure.document,
                    max_attempts=self.config.worker.max_attempts,
                    backoff=self.backoff,
                    source_table=kind.source_table,
                )
                log.warning(
                    "entity %s:%s failed at %s (%s); %s",
                    kind.name,
                    failure.entity_id,
                    failure.stage,
                    failure,
                    "queued for retry by the worker"
                    if outcome.action == "retry"
                    else f"dead-lettered (dead letter {outcome.dead_letter_id})",
                    extra={"entity_kind": kind.name, "entity_id": failure.entity_id},
                )
            jobs.advance_job(
                conn,
                state.job.id,
                counts_of(result, streamed=streamed),
                checkpoint=checkpoint,
                rate=rate,
            )

        result = pipeline.index(work, ids, owner=self.owner, force=force, finalize=finalize)
        state.counts = state.counts + counts_of(result, streamed=streamed)
        log.debug(
            "%s: batch of %d up to %r: %s",
            kind.name,
            len(ids),
            checkpoint,
            result.counts(),
            extra={"entity_kind": kind.name, "job_id": state.job.id, **result.counts()},
        )
        return result

    def _stream(
        self,
        work: psycopg.Connection,
        kind: RegisteredKind,
        pipeline: Pipeline,
        state: _RunState,
        checkpoint: str | None,
        force: bool,
        progress: ProgressReporter,
    ) -> bool:
        """Returns True when stopped on request before the end."""
        page_size = self.options.page_size or max(self.options.batch_size, MIN_PAGE_SIZE)
        with connect(self._conninfo("keys"), autocommit=True, vector=False) as keys_conn:
            for page in iter_key_pages(keys_conn, kind, after=checkpoint, page_size=page_size):
                for batch in chunks(page, self.options.batch_size):
                    if self.should_stop():
                        return True
                    self._index(work, pipeline, state, batch, checkpoint=batch[-1], force=force)
                    progress.update(state.counts, state.job.total, state.rate())
        return False

    def _sweep(
        self,
        work: psycopg.Connection,
        kind: RegisteredKind,
        pipeline: Pipeline,
        state: _RunState,
        progress: ProgressReporter,
    ) -> bool:
        """Remove indexed entities whose source row is gone; True when stopped on request."""
        removed = 0
        sweep = iter_orphan_batches(self._conninfo("sweep"), kind, self.options.batch_size)
        for batch in sweep:
            if self.should_stop():
                return True
            result = self._index(work, pipeline, state, batch, checkpoint=None, force=False)
            removed += result.deleted
            progress.update(state.counts, state.job.total, state.rate())
        if removed:
            log.info(
                "%s: removed %d indexed entities whose source row no longer exists",
                kind.name,
                removed,
                extra={"entity_kind": kind.name, "job_id": state.job.id, "deleted": removed},
            )
        return False
