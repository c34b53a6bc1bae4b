"""Backfill: stream every existing row of an entity kind through the pipeline, with checkpoints.

How it runs (one process, one job row in idxr.jobs):

1. Take the per-kind backfill lock (session advisory lock on a control connection; a second
   backfill of the same kind is refused) and mark dead runs of the kind interrupted.
2. Stream the source table's keys in key order, one page per query
   (`idxr_pg.db.source.iter_key_pages`: an index range scan, its own short statement, so no
   transaction or snapshot stays open for the length of the backfill and memory stays
   constant whatever the table size).
3. Each batch of keys is leased to ``backfill:<kind>`` (`idxr_pg.db.leases.acquire`) and goes
   through the pipeline exactly as the worker's batches do (both built by
   `idxr_pg.runtime.assembly`); the job's
   checkpoint (the batch's last key) and counts are advanced by the pipeline's ``finalize``
   hook INSIDE the transaction that writes the batch's rows, so a kill at any moment leaves
   checkpoint and index consistent. ``--resume`` restarts after that checkpoint.
   Overlap (``BackfillOptions.overlap``, on by default; `_stream_overlapped`, with
   `idxr_pg.runtime.overlap.PrepareAhead`): while batch N
   is written on the work connection, one helper thread leases, loads, flattens, diffs and
   embeds batch N+1 on a connection of its own (no transaction open while it embeds). Only
   the main thread writes, in key order, so checkpoints stay exact; batches hold disjoint
   keys, so N+1's diff never depends on N's write.
4. After the last key: the sweep. Entities still in the index whose source row no longer
   exists go through the pipeline too, which removes them; a full backfill therefore leaves
   the index equal to the flattening of the current table.

Between batches it checks ``should_stop`` (SIGINT/SIGTERM): no new batch starts, the one
already being prepared is still written, and the job is then marked interrupted and can be
resumed.

Bulk mode (`_bulk_mode`): when idxr.search_index holds no vector at all (or ``--bulk``), the
one HNSW index that serves every kind is dropped before step 2 and built once after step 4
(`idxr_pg.db.hnsw`), instead of being maintained row by row; the job row's options carry
``bulk``, which `idxr-pg status` shows. Until the build, search of every kind is exact. A run
that stops before its end leaves the index absent; ``--resume`` continues in bulk mode and
builds it at its end (with ``--no-bulk``: at its start).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial

import psycopg

from idxr_pg.config import DEFAULT_BACKFILL_BATCH_SIZE, IdxrConfig
from idxr_pg.db import hnsw, hnsw_memory, jobs, leases, source
from idxr_pg.db.catalog import index_leads_with
from idxr_pg.db.connection import (
    commit_asynchronously,
    connect,
    conninfo,
    end_session,
    is_connection_lost,
    one_line,
)
from idxr_pg.db.jobs import Job
from idxr_pg.embedding import Embedder
from idxr_pg.errors import IdxrError
from idxr_pg.indexing import schema_state
from idxr_pg.indexing.pipeline import BatchResult, Pipeline, PreparedBatch
from idxr_pg.indexing.registry import RegisteredKind
from idxr_pg.records.counts import Counts
from idxr_pg.runtime.assembly import Assembly, assemble
from idxr_pg.runtime.overlap import PrepareAhead
from idxr_pg.runtime.primary import refuse_read_only
from idxr_pg.runtime.progress import ProgressReporter, make_progress

log = logging.getLogger(__name__)

MIN_PAGE_SIZE = 500
"""Keys fetched per query at least (pages are split into pipeline batches)."""


DEFAULT_MAINTENANCE_WORK_MEM = hnsw_memory.AUTO
"""maintenance_work_mem of the session that builds the HNSW index at the end of a bulk load:
``auto`` sizes it to the vectors to index (`idxr_pg.db.hnsw_memory`)."""

DEFAULT_BUILD_WORKERS = 4
"""max_parallel_maintenance_workers for that build (capped by the server's max_parallel_workers)."""


DEAD_HOLDER_WAIT_SECONDS = 10.0
"""How long a new backfill waits for the session of a killed run of its kind to end."""


def _process_is_gone(job: Job) -> bool:
    """True when ``job`` is marked running by a process of this host that no longer exists."""
    if job.state != jobs.RUNNING or job.pid is None or job.host != socket.gethostname():
        return False
    try:
        os.kill(job.pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def chunks(items: Sequence[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


# ---- the run -----------------------------------------------------------------------------------


class BackfillError(IdxrError):
    """A backfill cannot start or stopped on an error; the message says how to resume."""


class BackfillInterrupted(IdxrError):
    """Stopped on request after a batch; the job is marked interrupted and can be resumed."""

    def __init__(self, job: Job) -> None:
        self.job = job
        super().__init__(
            f"backfill of {job.entity_kind!r} interrupted at checkpoint {job.checkpoint!r} "
            f"(job #{job.id}, {job.counts.entities} entities done); resume with "
            f"`idxr-pg backfill {job.entity_kind} --resume`"
        )


@dataclass(frozen=True)
class BackfillOptions:
    force: bool = False
    resume: bool = False
    batch_size: int = DEFAULT_BACKFILL_BATCH_SIZE
    page_size: int | None = None
    progress_interval: float = 10.0
    tty: bool | None = None
    bulk: bool | None = None  # None: bulk mode when the index holds no vector; True/False: forced
    maintenance_work_mem: str = DEFAULT_MAINTENANCE_WORK_MEM
    build_workers: int = DEFAULT_BUILD_WORKERS
    reindex: bool = False  # started as `idxr-pg reindex` (a note on the job; same run)
    overlap: bool = True  # prepare (… embed) batch N+1 in a helper thread while N is written


def job_increment(result: BatchResult, *, streamed: bool) -> Counts:
    """What one batch adds to its job: its counts, whose entities count toward ``done``
    only when ``streamed`` (the sweep's entities are not source rows)."""
    return result.counts if streamed else result.counts.replace(entities=0)


def failed_every_entity(counts: Counts) -> bool:
    """A run whose entities all failed (those not skipped or deleted): a broken kind, not a
    few bad rows; the CLI exits non-zero for it."""
    return counts.failed > 0 and counts.failed == counts.entities - counts.skipped - counts.deleted


@dataclass
class _RunState:
    job: Job
    base: Counts
    counts: Counts
    checkpoint: str | None = None  # the last one committed (with its batch's rows)
    started: float = field(default_factory=time.monotonic)

    def rate(self) -> float | None:
        elapsed = time.monotonic() - self.started
        done = self.counts.entities - self.base.entities
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

    # -- pieces --

    def _conninfo(self, role: str) -> str:
        """The URL with an application_name that shows in pg_stat_activity."""
        return conninfo(self.database_url, f"idxr-backfill {self.entity.name} {role}")

    def _resume_point(self, control: psycopg.Connection) -> tuple[Job | None, str | None, Counts]:
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
            return None, None, Counts()
        previous = jobs.resumable_job(control, self.entity.name)
        if self.options.force and not previous.options.get("force"):
            raise BackfillError(
                f"job #{previous.id} of {self.entity.name!r} ran without --force: resume it "
                f"without --force, or start a new forced backfill (without --resume)"
            )
        return previous, previous.checkpoint, previous.counts

    def _warn_unindexed_key(self, control: psycopg.Connection, kind: RegisteredKind) -> None:
        if not index_leads_with(control, kind.schema, kind.table, kind.key):
            log.warning(
                "%s: no index starts with key column %s of %s; every page of keys scans the "
                "table (add an index or primary key on it)",
                kind.name,
                kind.key,
                kind.source_table,
                extra={"entity_kind": kind.name},
            )

    def _take_kind_lock(self, control: psycopg.Connection) -> bool:
        """Take the kind's backfill lock. Right after a SIGKILL, PostgreSQL may not yet have
        noticed the dead run's closed socket: when the lock holder is a job of this host
        whose process no longer exists, wait for its session to end (a few seconds at most)."""
        name = self.entity.name
        deadline = time.monotonic() + DEAD_HOLDER_WAIT_SECONDS
        while not jobs.try_lock_kind(control, name):
            holder = jobs.latest_job(control, name)
            if holder is None or not _process_is_gone(holder) or time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def _bulk_mode(self, control: psycopg.Connection, previous: Job | None) -> bool:
        """Whether this run drops the HNSW index and builds it once at its end."""
        wanted = self.options.bulk
        index_absent = not hnsw.embedding_index_exists(control)
        if wanted is False:
            if index_absent:  # e.g. an interrupted bulk load resumed with --no-bulk
                self._build_index(control)
            return False
        owner = hnsw.can_drop_embedding_index(control)
        if wanted and not owner:
            raise BackfillError(
                f"--bulk: this role does not own idxr.search_index, so it cannot drop and "
                f"rebuild {hnsw.INDEX_NAME}; run the backfill as its owner or without --bulk"
            )
        if wanted:
            return True
        if previous is not None and previous.options.get("bulk") and index_absent:
            return True  # the interrupted bulk load continues; the index is built at the end
        return owner and not hnsw.has_embeddings(control)

    def _build_index(self, control: psycopg.Connection) -> None:
        started = time.monotonic()
        memory = hnsw_memory.build_memory(control, self.options.maintenance_work_mem)
        if hnsw.build_embedding_index(
            control,
            maintenance_work_mem=memory,
            parallel_workers=self.options.build_workers,
        ):
            log.info(
                "%s: built %s in %.1fs (maintenance_work_mem %s)",
                self.entity.name,
                hnsw.INDEX_NAME,
                time.monotonic() - started,
                memory,
                extra={"entity_kind": self.entity.name},
            )

    @staticmethod
    def _finish_failed(
        conn: psycopg.Connection, state: _RunState, final_state: str, message: str
    ) -> None:
        jobs.finish_job(conn, state.job.id, final_state, error=message, rate=state.rate())

    # -- run --

    def run(self) -> Job:
        """Run to the end (returns the succeeded job) or raise BackfillInterrupted/BackfillError."""
        name = self.entity.name
        control = connect(self._conninfo("control"), autocommit=True)
        try:
            refuse_read_only(control, f"backfill {name!r}")
            if not self._take_kind_lock(control):
                running = jobs.latest_job(control, name)
                detail = (
                    f" (job #{running.id}, pid {running.pid} on {running.host})" if running else ""
                )
                raise BackfillError(
                    f"another backfill of {name!r} is running{detail}; wait for it or stop it"
                )
            jobs.reconcile_abandoned(control)
            assembly = assemble(
                control,
                self.config,
                [name],
                cache_conninfo=self._conninfo("cache"),
                embedder=self._embedder,
            )
            try:
                return self._run(control, assembly)
            finally:
                assembly.close()
        finally:
            control.close()  # also releases the kind lock

    def _run(self, control: psycopg.Connection, assembly: Assembly) -> Job:
        name = self.entity.name
        kind, pipeline = assembly.kinds[name], assembly.pipelines[name]
        self._warn_unindexed_key(control, kind)
        previous, checkpoint, base = self._resume_point(control)
        total = source.count_keys(control, kind)
        force = bool(previous.options.get("force")) if previous else self.options.force
        bulk = self._bulk_mode(control, previous)
        if bulk:
            hnsw.drop_embedding_index(control)
        fingerprint, _ = schema_state.current_schema(kind)
        job = jobs.create_job(
            control,
            name,
            options={
                "force": force,
                "batch_size": self.options.batch_size,
                "resume": previous is not None,
                "bulk": bulk,
                "reindex": self.options.reindex,
                "fingerprint": fingerprint,
            },
            total=total,
            checkpoint=checkpoint,
            counts=base,
            resumed_from=previous.id if previous else None,
        )
        state = _RunState(job=job, base=base, counts=base, checkpoint=checkpoint)
        log.info(
            "backfill of %s started: job #%d, %d rows in %s%s%s%s",
            name,
            job.id,
            total,
            kind.source_table,
            f", resuming job #{previous.id} after key {checkpoint!r}" if previous else "",
            ", forced re-embedding" if force else "",
            ", bulk mode (HNSW index dropped: search is exact until it is rebuilt at the end)"
            if bulk
            else "",
            extra={
                "bulk": bulk,
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
            done=base.entities,
            extra={"entity_kind": name, "job_id": job.id},
            tty=self.options.tty,
            interval=self.options.progress_interval,
        )
        run = _Run(assembly, pipeline, state, progress)
        try:
            with connect(self._conninfo("work"), autocommit=True) as work:
                commit_asynchronously(work)
                stopped = self._stream(work, run, checkpoint, force)
                if not stopped:
                    stopped = self._sweep(work, run)
            if bulk and not stopped:
                self._build_index(control)
        except BaseException as exc:
            progress.close()
            database = isinstance(exc, psycopg.Error)
            self._fail(control, state, exc, log_error=not database)
            if database:
                lost = is_connection_lost(exc)
                raise BackfillError(
                    f"backfill of {name!r} failed (job #{job.id}, checkpoint "
                    f"{state.checkpoint!r}): "
                    f"{'lost the database connection: ' if lost else ''}{type(exc).__name__}: "
                    f"{one_line(str(exc))}; resume with `idxr-pg backfill {name} --resume`"
                ) from exc
            raise
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
                final.counts.entities,
                final.checkpoint,
                name,
                extra={"entity_kind": name, "job_id": job.id, **jobs.job_columns(final.counts)},
            )
            raise BackfillInterrupted(final)
        jobs.finish_job(control, job.id, jobs.SUCCEEDED, rate=state.rate())
        final = jobs.get_job(control, job.id)
        assert final is not None
        self._record_schema(control, kind, final, previous)
        counts = final.counts
        log.info(
            "backfill of %s finished: job #%d, %d entities (%d unchanged, %d deleted, "
            "%d skipped, %d failed), %d fields embedded, %d cache hits, %d records "
            "written, %d deleted, in %.1fs",
            name,
            job.id,
            counts.entities,
            counts.unchanged,
            counts.deleted,
            counts.skipped,
            counts.failed,
            counts.texts_embedded,
            counts.cache_hits,
            counts.records_written,
            counts.records_deleted,
            final.duration_seconds,
            extra={"entity_kind": name, "job_id": job.id, **jobs.job_columns(counts)},
        )
        return final

    def _record_schema(
        self, control: psycopg.Connection, kind: RegisteredKind, final: Job, previous: Job | None
    ) -> None:
        """Every entity went through the current model: record its shape (the kind is no
        longer stale), unless some failed or a resumed run started under another model."""
        fingerprint = final.options.get("fingerprint")
        earlier = previous.options.get("fingerprint") if previous else fingerprint
        if final.counts.failed or earlier != fingerprint:
            if schema_state.detect(control, kind):
                log.warning(
                    "%s stays stale: %s; run `idxr-pg reindex %s` again once they are fixed",
                    kind.name,
                    f"{final.counts.failed} entities failed"
                    if final.counts.failed
                    else f"job #{previous.id if previous else '?'} began under another model",
                    kind.name,
                    extra={"entity_kind": kind.name, "job_id": final.id},
                )
            return
        if schema_state.record_current(control, kind):
            log.info(
                "%s: the index now matches model %s (shape recorded)",
                kind.name,
                kind.config.model,
                extra={"entity_kind": kind.name, "job_id": final.id},
            )

    def _fail(
        self,
        control: psycopg.Connection,
        state: _RunState,
        exc: BaseException,
        *,
        log_error: bool = True,
    ) -> None:
        """Mark the job finished on an error. After a lost connection (a server restart, a
        terminated backend) the control connection may be gone too: mark it on a new one,
        and if the server cannot be reached, leave it: the next backfill or `jobs` finds the
        run dead (its lock is gone) and marks it interrupted."""
        if isinstance(exc, KeyboardInterrupt):
            final_state, message = jobs.INTERRUPTED, "stopped by a second interrupt"
        else:
            final_state, message = jobs.FAILED, f"{type(exc).__name__}: {one_line(str(exc))}"
        try:
            if control.closed or control.broken:
                with connect(self._conninfo("control"), autocommit=True, vector=False) as again:
                    self._finish_failed(again, state, final_state, message)
            else:
                try:
                    self._finish_failed(control, state, final_state, message)
                except psycopg.Error as err:
                    if not is_connection_lost(err, control):
                        raise
                    with connect(self._conninfo("control"), autocommit=True, vector=False) as again:
                        self._finish_failed(again, state, final_state, message)
        except (psycopg.Error, IdxrError) as err:
            log.warning(
                "could not mark job #%d %s (%s); the next backfill of %s marks it interrupted",
                state.job.id,
                final_state,
                one_line(str(err)),
                state.job.entity_kind,
            )
        if not log_error:
            return  # the caller raises one BackfillError that says it all
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
        run: _Run,
        ids: list[str],
        *,
        checkpoint: str | None,
        force: bool,
    ) -> BatchResult:
        """Lease one batch and index it; job counts and checkpoint move in its write."""
        prepared = self._prepare_batch(work, run, ids, force)
        return self._write_batch(work, run, prepared, checkpoint=checkpoint)

    def _prepare_batch(
        self, conn: psycopg.Connection, run: _Run, ids: list[str], force: bool
    ) -> PreparedBatch:
        """Lease one batch and prepare it (load … embed): no transaction stays open."""
        kind = run.pipeline.kind
        leased = leases.acquire(
            conn, kind.name, ids, self.owner, run.assembly.settings.lease_seconds
        )
        return run.pipeline.prepare(conn, leased, force=force)

    def _write_batch(
        self,
        work: psycopg.Connection,
        run: _Run,
        prepared: PreparedBatch,
        *,
        checkpoint: str | None,
    ) -> BatchResult:
        """Write one prepared batch; the job's counts and checkpoint move in its transaction."""
        streamed = checkpoint is not None
        rate = run.state.rate()
        kind = run.pipeline.kind

        def finalize(conn: psycopg.Connection, result: BatchResult) -> None:
            run.assembly.record_failures(conn, result)
            jobs.advance_job(
                conn,
                run.state.job.id,
                job_increment(result, streamed=streamed),
                checkpoint=checkpoint,
                rate=rate,
            )

        result = run.pipeline.write(work, prepared, finalize=finalize)
        run.state.counts = run.state.counts + job_increment(result, streamed=streamed)
        if streamed:
            run.state.checkpoint = checkpoint  # committed with the batch
        log.debug(
            "%s: batch of %d up to %r: %s",
            kind.name,
            len(prepared.leased.requested),
            checkpoint,
            result.counts.as_dict(),
            extra={"entity_kind": kind.name, "job_id": run.state.job.id, **result.counts.as_dict()},
        )
        run.progress.update(run.state.counts, run.state.job.total, run.state.rate())
        return result

    def _stream(
        self, work: psycopg.Connection, run: _Run, checkpoint: str | None, force: bool
    ) -> bool:
        """Returns True when stopped on request before the end."""
        page_size = self.options.page_size or max(self.options.batch_size, MIN_PAGE_SIZE)
        kind = run.pipeline.kind
        with connect(self._conninfo("keys"), autocommit=True, vector=False) as keys_conn:
            pages = source.iter_key_pages(keys_conn, kind, after=checkpoint, page_size=page_size)
            batches = (b for page in pages for b in chunks(page, self.options.batch_size))
            if self.options.overlap:
                with connect(self._conninfo("prepare"), autocommit=True) as prepare_conn:
                    commit_asynchronously(prepare_conn)
                    return self._stream_overlapped(work, prepare_conn, run, batches, force)
            for batch in batches:
                if self.should_stop():
                    return True
                self._index(work, run, batch, checkpoint=batch[-1], force=force)
        return False

    def _stream_overlapped(
        self,
        work: psycopg.Connection,
        prepare_conn: psycopg.Connection,
        run: _Run,
        batches: Iterator[list[str]],
        force: bool,
    ) -> bool:
        """Write batch N on ``work`` while one helper thread leases, loads, flattens, diffs and
        embeds batch N+1 on ``prepare_conn`` (`PrepareAhead`). Batches are written (and
        checkpointed) in key order by this thread alone; no transaction is open while the
        helper embeds. A stop request starts no new batch: the one being prepared is still
        written, then True. A stop-now request (second signal) ends the helper connection's
        session, so a slow query there does not hold the exit up."""

        kind, owner = run.pipeline.kind.name, self.owner

        def discard(batch: list[str], prepared: PreparedBatch | None) -> None:
            # On this thread's connection (the helper's may be gone: stop now). Without a
            # prepared batch the leases were never taken or went back already, unless the
            # helper's session was ended before it could give them back: release them all.
            leased = prepared.leased if prepared else leases.Leases.of(kind, owner, batch, batch)
            run.pipeline.release_leases(work, leased)

        with PrepareAhead[list[str], PreparedBatch](
            discard, stop_now=lambda: end_session(work, prepare_conn)
        ) as ahead:
            stopped = False
            for batch in batches:
                if self.should_stop():
                    stopped = True
                    break
                ahead.submit(batch, partial(self._prepare_batch, prepare_conn, run, batch, force))
                if len(ahead) == 2:
                    self._write_next(work, run, ahead)
            while ahead:
                self._write_next(work, run, ahead)
            return stopped

    def _write_next(
        self, work: psycopg.Connection, run: _Run, ahead: PrepareAhead[list[str], PreparedBatch]
    ) -> None:
        """Wait for the oldest batch's preparation and write it (once taken out of ``ahead``,
        whatever happens, its leases are the pipeline's to release)."""
        batch, prepared = ahead.next()
        self._write_batch(work, run, prepared, checkpoint=batch[-1])

    def _sweep(self, work: psycopg.Connection, run: _Run) -> bool:
        """Remove indexed entities whose source row is gone; True when stopped on request."""
        kind = run.pipeline.kind
        removed = 0
        with connect(self._conninfo("sweep"), vector=False) as sweep_conn:
            for batch in source.iter_orphan_batches(sweep_conn, kind, self.options.batch_size):
                if self.should_stop():
                    return True
                result = self._index(work, run, batch, checkpoint=None, force=False)
                removed += result.deleted
        if removed:
            log.info(
                "%s: removed %d indexed entities whose source row no longer exists",
                kind.name,
                removed,
                extra={"entity_kind": kind.name, "job_id": run.state.job.id, "deleted": removed},
            )
        return False


@dataclass
class _Run:
    """What the batches of one run share."""

    assembly: Assembly
    pipeline: Pipeline
    state: _RunState
    progress: ProgressReporter
