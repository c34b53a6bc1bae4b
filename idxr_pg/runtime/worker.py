"""The worker: LISTEN/NOTIFY wake-ups plus polling, claiming batches, retries, shutdown.

`Worker.run()` is the long-running loop behind ``idxr-pg worker``; `Worker.drain(kinds)` processes
the ready queue of some kinds and returns (``--once``, ``idxr-pg refresh KIND``).

- Wake-ups: a dedicated autocommit connection LISTENs on `idxr_pg.db.queue.CHANNEL` (payload:
  the entity kind); the loop waits for a notification of an ``on_change`` kind it serves, at
  most ``poll_interval`` seconds, then polls anyway: a missed notification costs one interval.
  Writers ring only when no other open transaction rings for the kind (`idxr_pg.db.queue.CHANNEL`),
  so after a drain that found work the worker claims once more ``SETTLE_SECONDS`` later: that
  catches the writers that skipped ringing while the ringer's commit woke it.
- Refresh policies: ``on_change`` kinds are drained whenever there is work; ``manual`` kinds are
  never processed by `run` (only by `drain`, i.e. ``idxr-pg refresh``); ``every <interval>``
  kinds are drained at most once per interval (``idxr.entity_kinds.last_refresh_at``, shared
  by all workers).
- Each batch: `queue.claim` (short transaction; it leases the entities) then `Pipeline.index`
  with the claim's leases, whose finalize step, inside the write transaction, deletes exactly
  the claimed queue rows of the entities done and records each failure (backoff, then dead
  letter: `Assembly.record_failures`); the pipeline releases the leases there.
- Liveness: a heartbeat thread (own connection) updates ``idxr.workers`` and extends this
  worker's leases every few seconds; a crashed worker's leases expire and are taken over, and
  its row is marked ``lost`` by the next worker that starts (or ``idxr-pg status``). A batch
  running past ``worker.stall_timeout_seconds`` (a hung model or query) stops having its leases
  extended (logged once): they expire, another worker takes the entities over, and the stalled
  batch's late write is refused by the lease check of the pipeline's write transaction.
- Shutdown: SIGTERM/SIGINT (or `stop()`) let the current batch finish; leases are released
  and the worker row is marked ``stopped``.
- A lost database connection (any of them) is retried with exponential backoff
  (`retry_with_backoff`) and the worker resumes; its leases still carry its id, so it takes its
  own entities back. A refused login (missing database or role) is final, and so is the idxr
  schema disappearing under the worker (``uninstall``): it stops with one `WorkerSetupError`.
  `drain` (``--once``, ``refresh``) gives up after ``worker.give_up_after_seconds`` without a
  database and raises `DatabaseError`; `run` retries forever.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial

import psycopg

from idxr_pg.config import IdxrConfig, WorkerSettings
from idxr_pg.db import leases, queue, search_index, workers
from idxr_pg.db import versions as versions_db
from idxr_pg.db.catalog import idxr_installed
from idxr_pg.db.connection import (
    RECONNECT_BASE_SECONDS,
    connect,
    conninfo,
    end_session,
    is_connection_lost,
    reopened,
    retry_with_backoff,
)
from idxr_pg.db.kinds import refresh_state
from idxr_pg.db.status import live_window_seconds
from idxr_pg.embedding import Embedder
from idxr_pg.errors import IdxrError
from idxr_pg.indexing.pipeline import BatchResult, Pipeline, PreparedBatch
from idxr_pg.indexing.registry import RegisteredKind
from idxr_pg.records.counts import Counts
from idxr_pg.runtime.assembly import Assembly, assemble
from idxr_pg.runtime.overlap import PrepareAhead
from idxr_pg.runtime.primary import refuse_read_only
from idxr_pg.runtime.versions import VersionFollower

__all__ = ["Worker", "WorkerSetupError", "make_worker_id"]

log = logging.getLogger(__name__)

WAIT_SLICE_SECONDS = 0.5  # how often a waiting worker checks its stop flag
SETTLE_SECONDS = 0.05  # after a drain that found work: the pause before one more claim
OVERLAP_ROUNDS = 16  # worker.overlap: rounds over the kinds per cycle (see _cycle_overlapped)


def make_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class WorkerSetupError(IdxrError):
    """The database is reachable but not set up for idxr-pg (the message says what to run)."""


class Worker:
    """Indexes queued changes of the configured entity kinds; see the module docstring."""

    def __init__(
        self,
        database_url: str,
        config: IdxrConfig,
        *,
        kinds: Sequence[str] | None = None,
        settings: WorkerSettings | None = None,
        embedder: Embedder | None = None,
        worker_id: str | None = None,
        heartbeat_interval: float | None = None,
    ) -> None:
        self.database_url = database_url
        self.config = config
        self.settings = settings or config.worker
        names = list(dict.fromkeys(kinds)) if kinds else [e.name for e in config.entities]
        for name in names:
            config.entity(name)  # unknown kinds fail now, naming the known ones
        self.kind_names = names
        self.worker_id = worker_id or make_worker_id()
        self.heartbeat_interval = heartbeat_interval or min(5.0, self.settings.lease_seconds / 3)
        self.totals = Counts()
        # Called after each batch with (kind, its counts, its seconds): the metrics hook.
        self.on_batch: Callable[[str, Counts, float], None] | None = None
        self._embedder = embedder
        self._stop = threading.Event()
        self._beating = threading.Event()  # cleared to stop the heartbeat thread
        self._conn: psycopg.Connection | None = None
        self._listen: psycopg.Connection | None = None
        self._prepare: psycopg.Connection | None = None  # the overlap's helper (worker.overlap)
        self._assembly: Assembly | None = None
        self._versions: VersionFollower | None = None
        self._pipelines: dict[str, Pipeline] = {}
        self._heartbeat: threading.Thread | None = None
        self._rounds: set[str] = set()  # 'every' kinds being drained in this refresh round
        self._uninstalled = False  # the idxr schema disappeared under the running worker
        self._held: set[str] = set()  # kinds paused or outside their window (logged once)
        self._give_up_after: float | None = None  # drain: reconnect deadline (run: forever)
        self._batch_started: float | None = None  # monotonic start of the batch in progress

    # ----------------------------------------------------------------------------- control

    def stop(self) -> None:
        """Finish the current batch, then leave `run`/`drain` (what SIGTERM/SIGINT do)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def kinds(self) -> dict[str, RegisteredKind]:
        return {name: p.kind for name, p in self._pipelines.items()}

    # ----------------------------------------------------------------------------- entry points

    def run(self) -> Counts:
        """Process changes until stopped; returns the totals."""
        with self._session():
            served = self._served_kinds()
            if not served:
                log.warning(
                    "no kind for this worker to process continuously (all manual): "
                    "use `idxr-pg refresh KIND`; waiting for a stop signal"
                )
            log.info("worker %s serving %s", self.worker_id, ", ".join(served) or "nothing")
            settle = False  # the last cycle found work: claim once more before waiting
            while not self.stopping:
                try:
                    if self._cycle(served, force_due=False):
                        settle = True
                    elif settle:
                        settle = False
                        self._stop.wait(SETTLE_SECONDS)
                    else:
                        self._wait(served)
                except Exception as exc:
                    self._on_error(exc)
        return self.totals

    def drain(self, kinds: Iterable[str] | None = None) -> Counts:
        """Process the ready queue of ``kinds`` (default: every non-manual kind) and return.

        Rows in backoff (``not_before`` in the future) or of entities leased by another live
        worker are left for later.
        """
        self._give_up_after = self.settings.give_up_after_seconds
        with self._session():
            chosen = list(kinds) if kinds is not None else self._served_kinds()
            for name in chosen:
                if name not in self._pipelines:
                    raise ValueError(f"entity kind {name!r} is not served by this worker")
            while not self.stopping:
                try:
                    if not self._cycle(chosen, force_due=True):
                        break
                except Exception as exc:
                    self._on_error(exc)
            for name in chosen:
                self._stamp_refreshed(name)
        return self.totals

    # ----------------------------------------------------------------------------- session

    def _session(self) -> _Session:
        return _Session(self)

    def _start(self) -> None:
        """Connect, resolve and register the kinds, load the model, join idxr.workers."""
        conn = self._ensure_conn()
        refuse_read_only(conn, f"run worker {self.worker_id}")  # before LISTEN, refused there
        self._ensure_listen()
        if not idxr_installed(conn):
            raise WorkerSetupError(
                "the idxr schema is not installed in this database: run `idxr-pg migrate`"
            )
        if self._assembly is not None:
            self._assembly.close()
            self._assembly = None
        self._assembly = assemble(
            conn,
            self.config,
            self.kind_names,
            cache_conninfo=self._conninfo("cache"),
            settings=self.settings,
            embedder=self._embedder,
        )
        self._embedder = self._assembly.embedder
        self._pipelines = self._assembly.pipelines
        self._versions = VersionFollower(self.config, self._assembly, self.worker_id)
        workers.worker_started(
            conn, self.worker_id, socket.gethostname(), os.getpid(), list(self._pipelines)
        )
        workers.mark_lost(conn, live_window_seconds(self.config))  # others that died
        self._beating.set()
        self._heartbeat = threading.Thread(
            target=self._heartbeat_loop, name=f"idxr-heartbeat-{self.worker_id}", daemon=True
        )
        self._heartbeat.start()
        self._check_config(conn)

    def _check_config(self, conn: psycopg.Connection) -> None:
        """Name the capture config drift; reindex the stale kinds whose config says so
        (``on_schema_change: reindex``) before serving them (the others were logged by
        `register`)."""
        from idxr_pg.capture.drift import config_drift
        from idxr_pg.runtime.schema_checks import log_drift

        entities = [self.config.entity(name) for name in self._pipelines]
        try:
            log_drift(config_drift(conn, entities))
        except IdxrError as exc:
            log.warning("could not compare the config with the capture triggers: %s", exc)
        assert self._assembly is not None
        for name in list(self._assembly.schema_changes):
            if self.config.entity(name).on_schema_change == "reindex" and not self.stopping:
                self._reindex(name)

    def _reindex(self, name: str) -> None:
        from idxr_pg.runtime.backfill import (
            Backfill,
            BackfillError,
            BackfillInterrupted,
            BackfillOptions,
        )

        log.info("%s: on_schema_change is reindex: reindexing before serving it", name)
        options = BackfillOptions(
            batch_size=self.settings.batch_size, bulk=False, reindex=True, tty=False
        )
        runner = Backfill(
            self.database_url,
            self.config,
            name,
            options,
            embedder=self._embedder,
            should_stop=self._stop.is_set,
        )
        try:
            runner.run()
        except BackfillInterrupted:
            log.info("%s: reindex interrupted by the stop request", name)
        except BackfillError as exc:
            log.error("%s: reindex failed, serving it stale: %s", name, exc)

    def _finish(self) -> None:
        self._beating.clear()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=10)
            self._heartbeat = None
        try:
            if not self._uninstalled:  # else there is no worker row or lease left to update
                conn = self._ensure_conn()
                with conn.transaction():
                    leases.release_all(conn, self.worker_id)
                    workers.worker_heartbeat(conn, self.worker_id, self.totals.entities, "stopped")
        except Exception:
            log.warning("could not mark worker %s stopped", self.worker_id, exc_info=True)
        self._close_connections()
        if self._assembly is not None:
            self._assembly.close()
            self._assembly = None
        log.info("worker %s stopped: %s", self.worker_id, self.totals.as_dict())

    def _conninfo(self, role: str) -> str:
        return conninfo(self.database_url, f"idxr-worker {role} {self.worker_id}")

    def _ensure_conn(self) -> psycopg.Connection:
        self._conn = reopened(self._conn, lambda: connect(self._conninfo("main"), autocommit=True))
        return self._conn

    def _ensure_listen(self) -> psycopg.Connection:
        self._listen = reopened(self._listen, self._open_listen)
        return self._listen

    def _open_listen(self) -> psycopg.Connection:
        conn = connect(self._conninfo("listen"), autocommit=True, vector=False)
        queue.listen(conn)
        return conn

    def _ensure_prepare_conn(self) -> psycopg.Connection:
        self._prepare = reopened(
            self._prepare, lambda: connect(self._conninfo("prepare"), autocommit=True)
        )
        return self._prepare

    def _open_connections(self) -> None:
        self._ensure_conn()
        self._ensure_listen()

    def _close_connections(self) -> None:
        for conn in (self._conn, self._listen, self._prepare):
            if conn is not None:
                conn.close()
        self._conn = self._listen = self._prepare = None

    def _on_error(self, exc: Exception) -> None:
        """An error of the loop: a lost connection or a database error is recovered from
        (reconnect, go on); the idxr schema gone (uninstalled under the worker) ends the worker
        with one message; anything else is raised."""
        if not isinstance(exc, psycopg.Error) and not is_connection_lost(exc):
            raise exc
        if not is_connection_lost(exc, self._conn) and self._schema_gone():
            self._uninstalled = True
            raise WorkerSetupError(
                f"the idxr schema was removed from the database while worker {self.worker_id} "
                "ran (idxr-pg uninstall?): the worker stops; run `idxr-pg migrate` to install "
                "it again"
            ) from exc
        self._recover(exc)

    def _schema_gone(self) -> bool:
        try:
            return not idxr_installed(self._ensure_conn())
        except Exception:  # cannot tell now: treat the error as a database error
            return False

    def _recover(self, exc: BaseException) -> None:
        """After a database error: drop the connections, back off, reconnect (until stopped)."""
        log.warning(
            "database error in worker %s: %s: %s; reconnecting",
            self.worker_id,
            type(exc).__name__,
            str(exc).strip(),
        )
        self._close_connections()
        if self._stop.wait(RECONNECT_BASE_SECONDS):
            return
        try:
            retry_with_backoff(
                self._open_connections,
                stop=self._stop,
                what="still cannot reach the database",
                delay=2 * RECONNECT_BASE_SECONDS,
                give_up_after=self._give_up_after,
            )
        except Exception as err:
            if self.stopping and is_connection_lost(err):
                return
            raise
        log.info("worker %s reconnected", self.worker_id)

    # ----------------------------------------------------------------------------- the loop

    def _served_kinds(self) -> list[str]:
        return [name for name, p in self._pipelines.items() if p.kind.refresh != "manual"]

    def _due(self, name: str, force_due: bool) -> bool:
        """Whether ``name`` may be processed now: not paused (`idxr-pg pause`, also for
        ``drain``), inside its off-peak ``window`` (UTC, also for ``drain``), and its refresh
        policy allows it."""
        kind = self._pipelines[name].kind
        window = kind.config.time_window
        timed = not force_due and kind.refresh_interval is not None and name not in self._rounds
        state = None
        if window is not None and not window.is_open(datetime.now(UTC)):
            held = f"outside its window {window} (UTC)"
        else:
            interval = kind.refresh_interval if timed else None
            state = refresh_state(self._ensure_conn(), name, interval)
            held = f"paused (`idxr-pg resume {name}` resumes it)" if state.paused else ""
        if held:
            if name not in self._held:
                self._held.add(name)
                log.warning("%s is %s: its changes stay queued", name, held)
            return False
        self._held.discard(name)
        assert state is not None
        if timed and state.due:
            self._rounds.add(name)
        return not timed or state.due

    def _cycle(self, kinds: Sequence[str], *, force_due: bool) -> bool:
        """One batch for each due kind; True if any batch found work."""
        if self.settings.overlap:
            return self._cycle_overlapped(kinds, force_due=force_due)
        worked = False
        for name in kinds:
            if self.stopping:
                break
            if not self._due(name, force_due):
                continue
            if self._batch(name):
                worked = True
            else:
                self._found_nothing(name)
        return worked

    def _found_nothing(self, name: str) -> None:
        """A claim of ``name`` found nothing ready: a refresh round of an 'every' kind being
        drained ends there, stamped as refreshed."""
        if name in self._rounds:
            self._rounds.discard(name)
            self._stamp_refreshed(name)

    def _stamp_refreshed(self, name: str) -> None:
        conn = self._ensure_conn()
        with conn.transaction():
            search_index.stamp_kind(conn, name, wrote=False)

    def _batch(self, name: str) -> bool:
        """Claim and process one batch of ``name``; False when nothing was ready.

        The kind's version lock is held shared for the batch, so a version switch
        (`idxr_pg.db.versions.activate`) waits for it and the next batch embeds with the new
        active version's model. Entities written are marked for the kind's building and
        retired versions in the same transaction; the building version's marks are then
        re-run here (`VersionFollower.drain_building`)."""
        conn = self._ensure_conn()
        claimed = self._claim(conn, name)
        if claimed is None:
            return False
        self._batch_started = claimed.started
        try:
            try:
                prepared = claimed.pipeline.prepare(conn, claimed.claim.leases)
            except BaseException:
                self._unlock(conn, name)
                raise
            self._write(conn, claimed, prepared)
        finally:
            self._batch_started = None
        return True

    def _claim(
        self, conn: psycopg.Connection, name: str, busy: Sequence[str] = ()
    ) -> _Claimed | None:
        """Take the kind's version lock (shared) and claim a batch (``busy``: entities of
        batches not yet written, left alone). None when nothing was ready (lock given back);
        else the lock stays held until `_write` (or `_give_back`)."""
        versions = self._versions
        assert versions is not None
        versions_db.lock_kind_shared(conn, name)
        try:
            pipeline = versions.active_pipeline(conn, name)
            claim = queue.claim(
                conn,
                name,
                owner=self.worker_id,
                batch_size=self.settings.batch_size,
                lease_seconds=self.settings.lease_seconds,
                busy=busy,
            )
        except BaseException:
            self._unlock(conn, name)
            raise
        if not claim:
            self._unlock(conn, name)
            return None
        return _Claimed(name, claim, pipeline, time.monotonic())

    @staticmethod
    def _unlock(conn: psycopg.Connection, name: str) -> None:
        if not (conn.closed or conn.broken):
            with contextlib.suppress(psycopg.OperationalError):
                versions_db.unlock_kind_shared(conn, name)

    def _write(
        self,
        conn: psycopg.Connection,
        claimed: _Claimed,
        prepared: PreparedBatch,
        *,
        before_follow: Callable[[], None] | None = None,
    ) -> None:
        """Write a prepared batch (its finalize deletes exactly the claimed queue rows and
        records failures), follow the building version, give the kind's lock back, count.
        ``before_follow``: called before the building version is followed (the overlap waits
        there for its helper, which must not share the embedding service with it)."""
        name, claim = claimed.name, claimed.claim
        assembly = self._assembly
        assert assembly is not None
        dead_lettered = 0
        marked = 0

        def finalize(c: psycopg.Connection, result: BatchResult) -> None:
            nonlocal dead_lettered, marked
            queue.delete_rows(c, claim.row_ids(result.done_ids))
            outcomes = assembly.record_failures(c, result, claim.rows)
            dead_lettered = sum(outcome.action == "dead" for outcome in outcomes)
            marked = versions_db.mark_pending(c, name, result.done_ids)

        try:
            result = claimed.pipeline.write(conn, prepared, finalize=finalize)
            if marked:
                if before_follow is not None:
                    before_follow()
                self._follow_building(conn, name)
        finally:
            self._unlock(conn, name)
        batch = result.counts + Counts(dead_lettered=dead_lettered)
        self.totals = self.totals + batch
        if self.on_batch is not None:
            self.on_batch(name, batch, time.monotonic() - claimed.started)
        log.info(
            "%s: %d entities (%d indexed, %d unchanged, %d deleted, %d skipped, %d failed), "
            "%d texts embedded, %d records written, %d removed",
            name,
            result.entities,
            result.indexed,
            result.unchanged,
            result.deleted,
            result.skipped,
            result.failed,
            result.texts_embedded,
            result.records_written,
            result.records_deleted,
            extra={"entity_kind": name, **result.counts.as_dict()},
        )
        workers.worker_heartbeat(conn, self.worker_id, self.totals.entities)

    # ----------------------------------------------------------------------------- overlap

    def _cycle_overlapped(self, kinds: Sequence[str], *, force_due: bool) -> bool:
        """`_cycle` with ``worker.overlap``: up to `OVERLAP_ROUNDS` rounds over the due kinds,
        each claimed batch prepared (… embedded) by one helper thread on the prepare
        connection while the batch before it is written here (`PrepareAhead`). Claims and
        writes stay on this thread and connection, in claim order; a claim leaves alone the
        entities of the batch still being prepared. The cycle ends with every batch written,
        so the kinds' version locks all go back between cycles (a version switch waiting
        for one gets it)."""
        conn = self._ensure_conn()
        prepare_conn = self._ensure_prepare_conn()
        worked = False

        def give_back(claimed: _Claimed, prepared: PreparedBatch | None) -> None:
            claimed.pipeline.release_leases(conn, claimed.claim.leases)
            self._unlock(conn, claimed.name)

        with PrepareAhead[_Claimed, PreparedBatch](
            give_back, stop_now=lambda: end_session(conn, prepare_conn)
        ) as ahead:
            for _ in range(OVERLAP_ROUNDS):
                found = False
                for name in kinds:
                    if self.stopping:
                        break
                    if not self._due(name, force_due):
                        continue
                    busy = [i for c in ahead.tags() if c.name == name for i in c.claim.entity_ids]
                    claimed = self._claim(conn, name, busy)
                    if claimed is None:
                        self._found_nothing(name)
                        continue
                    found = True
                    if self._batch_started is None:
                        self._batch_started = claimed.started
                    ahead.submit(
                        claimed,
                        partial(claimed.pipeline.prepare, prepare_conn, claimed.claim.leases),
                    )
                    if len(ahead) == 2:
                        self._write_next(conn, ahead)
                worked = worked or found
                if not found or self.stopping:
                    break
            while ahead:
                self._write_next(conn, ahead)
        self._batch_started = None
        return worked

    def _write_next(
        self, conn: psycopg.Connection, ahead: PrepareAhead[_Claimed, PreparedBatch]
    ) -> None:
        """Wait for the oldest batch's preparation and write it (if its preparation failed,
        its leases went back there and its lock goes back here)."""
        claimed = ahead.tags()[0]
        try:
            _, prepared = ahead.next()
        except BaseException:
            if claimed not in ahead.tags():  # else still queued: `give_back` unlocks it
                self._unlock(conn, claimed.name)
            raise
        try:
            self._write(conn, claimed, prepared, before_follow=ahead.settle)
        finally:
            following = ahead.tags()
            self._batch_started = following[0].started if following else None

    def _follow_building(self, conn: psycopg.Connection, name: str) -> None:
        """Write the batch's entities to the kind's building version too. Its failure (its
        model cannot load, say) never stops the active version's indexing: the marks stay,
        and the build's end and `versions activate` re-run them."""
        assert self._versions is not None
        try:
            self._versions.drain_building(conn, name)
        except psycopg.OperationalError:
            raise  # a lost connection: the worker's reconnect handles it
        except Exception as exc:
            log.warning(
                "%s: the building index version was not updated (%s: %s); its marks stay",
                name,
                type(exc).__name__,
                exc,
                extra={"entity_kind": name},
            )

    def _wait(self, served: Sequence[str]) -> None:
        """Sleep until a relevant NOTIFY, the poll interval, the next 'every' deadline or stop."""
        on_change = {n for n in served if self._pipelines[n].kind.refresh == "on_change"}
        timeout = self.settings.poll_interval
        for name in served:
            interval = self._pipelines[name].kind.refresh_interval
            if interval is not None:
                timeout = min(timeout, float(interval))
        deadline = time.monotonic() + timeout
        listen = self._ensure_listen()
        while not self.stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            woken = any(
                notify.payload in on_change
                for notify in listen.notifies(timeout=min(left, WAIT_SLICE_SECONDS))
            )
            if woken:
                # Swallow the burst of wake-ups already delivered, then go to work. (Never call
                # notifies() while its generator is open: it holds the connection's lock.)
                for _ in listen.notifies(timeout=0.001):
                    pass
                return

    # ----------------------------------------------------------------------------- heartbeat

    def _heartbeat_loop(self) -> None:
        """Own connection: beat and keep this worker's leases alive until stopped."""
        conn: psycopg.Connection | None = None
        stalled_batch: float | None = None  # the start of the batch already logged as stalled
        while self._beating.is_set():
            if not _sleep_while(self._beating, self.heartbeat_interval):
                break
            started = self._batch_started
            stalled = (
                started is not None
                and time.monotonic() - started > self.settings.stall_timeout_seconds
            )
            if stalled and stalled_batch != started:
                stalled_batch = started
                log.warning(
                    "worker %s: batch running for over %.0f s (worker.stall_timeout_seconds): "
                    "its leases are no longer extended, so other workers take them over",
                    self.worker_id,
                    self.settings.stall_timeout_seconds,
                )
            try:
                if conn is None or conn.closed or conn.broken:
                    conn = connect(self._conninfo("heartbeat"), autocommit=True, vector=False)
                with conn.transaction():
                    workers.worker_heartbeat(conn, self.worker_id, self.totals.entities)
                    if not stalled:
                        leases.extend(conn, self.worker_id, self.settings.lease_seconds)
            except Exception as exc:
                log.debug("heartbeat failed (%s); will retry", exc)
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()


@dataclass(frozen=True)
class _Claimed:
    """A claimed batch on its way: its kind (whose version lock is held shared), the claim
    (leases, queue row ids), the pipeline of the kind's active version, when it was claimed."""

    name: str
    claim: queue.Claim
    pipeline: Pipeline
    started: float


def _sleep_while(flag: threading.Event, seconds: float) -> bool:
    """Sleep up to ``seconds`` in small steps; False as soon as ``flag`` is cleared."""
    deadline = time.monotonic() + seconds
    while flag.is_set():
        left = deadline - time.monotonic()
        if left <= 0:
            return True
        time.sleep(min(left, 0.2))
    return False


class _Session:
    """Context manager: `Worker._start`, retried while the database cannot be reached, then
    `Worker._finish` on the way out."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def __enter__(self) -> Worker:
        w = self.worker
        retry_with_backoff(
            w._start, stop=w._stop, what="cannot start worker", give_up_after=w._give_up_after
        )
        return w

    def __exit__(self, *exc_info: object) -> None:
        self.worker._finish()
