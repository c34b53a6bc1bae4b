"""The worker: LISTEN/NOTIFY wake-ups plus polling, claiming batches, leases, retries, shutdown.

`Worker.run()` is the long-running loop behind ``idxr-pg worker``; `Worker.drain(kinds)` processes
the ready queue of some kinds and returns (``--once``, ``idxr-pg refresh KIND``).

- Wake-ups: a dedicated autocommit connection LISTENs on ``idxr_queue`` (payload: the entity
  kind); the loop waits for a notification of an ``on_change`` kind it serves, at most
  ``poll_interval`` seconds, then polls anyway: a missed notification costs one interval.
- Refresh policies: ``on_change`` kinds are drained whenever there is work; ``manual`` kinds are
  never processed by `run` (only by `drain`, i.e. ``idxr-pg refresh``); ``every <interval>``
  kinds are drained at most once per interval (``idxr.entity_kinds.last_refresh_at``, shared
  by all workers).
- Each batch: `queue.claim` (short transaction, leases) then `Pipeline.index`, whose
  finalize step, inside the write transaction, deletes exactly the claimed queue rows of the
  entities done and records each failure (`record_failure`: backoff, then dead letter).
- Liveness: a heartbeat thread (own connection) updates ``idxr.workers`` and extends this
  worker's leases every few seconds; a crashed worker's leases expire and are taken over.
- Shutdown: SIGTERM/SIGINT (or `stop()`) let the current batch finish; leases are released
  and the worker row is marked ``stopped``.
- A lost database connection (any of them) is retried with exponential backoff and the
  worker resumes; its leases still carry its id, so it takes its own entities back.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields

import psycopg

from idxr_pg.config import IdxrConfig, WorkerSettings
from idxr_pg.db import queue, search_index
from idxr_pg.db.connection import DatabaseError, connect
from idxr_pg.embedding import Embedder, EmbeddingCache, EmbeddingService, load_embedder
from idxr_pg.errors import IdxrError
from idxr_pg.indexing.failures import Backoff, record_failure
from idxr_pg.indexing.pipeline import BatchResult, Pipeline
from idxr_pg.indexing.registry import RegisteredKind, register, resolve_kinds

__all__ = ["Totals", "Worker", "WorkerSetupError", "make_worker_id"]

log = logging.getLogger(__name__)

RECONNECT_BASE_SECONDS = 0.5
RECONNECT_MAX_SECONDS = 30.0
WAIT_SLICE_SECONDS = 0.5  # how often a waiting worker checks its stop flag


def make_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass
class Totals:
    """Counts over all batches a worker (or one drain) processed."""

    batches: int = 0
    entities: int = 0
    indexed: int = 0
    unchanged: int = 0
    deleted: int = 0
    skipped: int = 0
    failed: int = 0
    dead_lettered: int = 0
    texts_embedded: int = 0
    cache_hits: int = 0
    records_written: int = 0
    records_deleted: int = 0

    def add(self, result: BatchResult, dead_lettered: int) -> None:
        self.batches += 1
        for name, value in result.counts().items():
            setattr(self, name, getattr(self, name) + value)
        self.dead_lettered += dead_lettered

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class WorkerSetupError(IdxrError):
    """The database is reachable but not set up for idxr-pg (the message says what to run)."""


def _is_connection_error(exc: BaseException) -> bool:
    """A lost or refused connection (worth retrying), not a set-up or data problem."""
    if isinstance(exc, DatabaseError):  # our connect(): retry only "cannot connect"
        return isinstance(exc.__cause__, psycopg.OperationalError)
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)


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
        self.backoff = Backoff(
            self.settings.backoff_base_seconds, self.settings.backoff_max_seconds
        )
        self.totals = Totals()
        self._embedder = embedder
        self._stop = threading.Event()
        self._beating = threading.Event()  # cleared to stop the heartbeat thread
        self._conn: psycopg.Connection | None = None
        self._listen: psycopg.Connection | None = None
        self._pipelines: dict[str, Pipeline] = {}
        self._cache: EmbeddingCache | None = None
        self._heartbeat: threading.Thread | None = None
        self._rounds: set[str] = set()  # 'every' kinds being drained in this refresh round

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

    def run(self) -> Totals:
        """Process changes until stopped; returns the totals."""
        with self._session():
            served = self._served_kinds()
            if not served:
                log.warning(
                    "no kind for this worker to process continuously (all manual): "
                    "use `idxr-pg refresh KIND`; waiting for a stop signal"
                )
            log.info("worker %s serving %s", self.worker_id, ", ".join(served) or "nothing")
            while not self.stopping:
                try:
                    if not self._cycle(served, force_due=False):
                        self._wait(served)
                except Exception as exc:
                    if not isinstance(exc, psycopg.Error) and not _is_connection_error(exc):
                        raise
                    self._recover(exc)
        return self.totals

    def drain(self, kinds: Iterable[str] | None = None) -> Totals:
        """Process the ready queue of ``kinds`` (default: every non-manual kind) and return.

        Rows in backoff (``not_before`` in the future) or of entities leased by another live
        worker are left for later.
        """
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
                    if not isinstance(exc, psycopg.Error) and not _is_connection_error(exc):
                        raise
                    self._recover(exc)
            for name in chosen:
                self._stamp_refreshed(name)
        return self.totals

    # ----------------------------------------------------------------------------- session

    def _session(self) -> _Session:
        return _Session(self)

    def _start(self) -> None:
        """Connect, resolve and register the kinds, load the model, join idxr.workers."""
        embedder = self._embedder or load_embedder(self.config.embedding)
        self._embedder = embedder
        self._connect_with_retry()
        assert self._conn is not None
        if self._conn.execute("SELECT to_regclass('idxr.queue')").fetchone()[0] is None:
            raise WorkerSetupError(
                "the idxr schema is not installed in this database: run `idxr-pg migrate`"
            )
        kinds = resolve_kinds(self._conn, self.config, self.kind_names)
        register(self._conn, kinds.values(), embedder)
        if self._cache is not None:
            self._cache.close()
        self._cache = EmbeddingCache(self._conninfo("cache"))
        service = EmbeddingService(embedder, self.config.embedding, self._cache)
        self._pipelines = {
            name: Pipeline(kind, service, lease_seconds=self.settings.lease_seconds)
            for name, kind in kinds.items()
        }
        queue.worker_started(
            self._conn, self.worker_id, socket.gethostname(), os.getpid(), list(kinds)
        )
        self._beating.set()
        self._heartbeat = threading.Thread(
            target=self._heartbeat_loop, name=f"idxr-heartbeat-{self.worker_id}", daemon=True
        )
        self._heartbeat.start()

    def _finish(self) -> None:
        self._beating.clear()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=10)
            self._heartbeat = None
        try:
            conn = self._ensure_conn()
            with conn.transaction():
                queue.release_leases(conn, None, None, self.worker_id)
                queue.worker_heartbeat(conn, self.worker_id, self.totals.entities, "stopped")
        except Exception:
            log.warning("could not mark worker %s stopped", self.worker_id, exc_info=True)
        for conn in (self._conn, self._listen):
            if conn is not None:
                conn.close()
        self._conn = self._listen = None
        if self._cache is not None:
            self._cache.close()
            self._cache = None
        log.info("worker %s stopped: %s", self.worker_id, self.totals.as_dict())

    def _conninfo(self, role: str) -> str:
        return psycopg.conninfo.make_conninfo(
            self.database_url, application_name=f"idxr-worker {role} {self.worker_id}"[:63]
        )

    def _ensure_conn(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed or self._conn.broken:
            if self._conn is not None:
                self._conn.close()
            self._conn = connect(self._conninfo("main"), autocommit=True)
        return self._conn

    def _ensure_listen(self) -> psycopg.Connection:
        if self._listen is None or self._listen.closed or self._listen.broken:
            if self._listen is not None:
                self._listen.close()
            self._listen = connect(self._conninfo("listen"), autocommit=True, vector=False)
            self._listen.execute(f"LISTEN {queue.CHANNEL}")
        return self._listen

    def _connect_with_retry(self) -> None:
        delay = RECONNECT_BASE_SECONDS
        while True:
            try:
                self._ensure_conn()
                self._ensure_listen()
                return
            except Exception as exc:
                if not _is_connection_error(exc) or self.stopping:
                    raise
                log.warning("database unreachable (%s); retrying in %.1f s", exc, delay)
                if self._stop.wait(delay):
                    raise
                delay = min(delay * 2, RECONNECT_MAX_SECONDS)

    def _recover(self, exc: BaseException) -> None:
        """After a database error: drop the connections, back off, reconnect (until stopped)."""
        log.warning(
            "database error in worker %s: %s: %s; reconnecting",
            self.worker_id,
            type(exc).__name__,
            str(exc).strip(),
        )
        for conn in (self._conn, self._listen):
            if conn is not None:
                conn.close()
        self._conn = self._listen = None
        delay = RECONNECT_BASE_SECONDS
        while not self.stopping:
            if self._stop.wait(delay):
                return
            try:
                self._ensure_conn()
                self._ensure_listen()
                log.info("worker %s reconnected", self.worker_id)
                return
            except Exception as err:
                if not _is_connection_error(err):
                    raise
                delay = min(delay * 2, RECONNECT_MAX_SECONDS)
                log.warning("still cannot reach the database (%s); retrying in %.1f s", err, delay)

    # ----------------------------------------------------------------------------- the loop

    def _served_kinds(self) -> list[str]:
        return [name for name, p in self._pipelines.items() if p.kind.refresh != "manual"]

    def _due(self, name: str, force_due: bool) -> bool:
        """Whether ``name`` may be processed now (its refresh policy allows it)."""
        kind = self._pipelines[name].kind
        if force_due or kind.refresh_interval is None or name in self._rounds:
            return True
        conn = self._ensure_conn()
        row = conn.execute(
            "SELECT last_refresh_at IS NULL OR last_refresh_at + make_interval(secs => %s) <= now()"
            " FROM idxr.entity_kinds WHERE name = %s",
            [float(kind.refresh_interval), name],
        ).fetchone()
        if row is None or row[0]:
            self._rounds.add(name)
            return True
        return False

    def _cycle(self, kinds: Sequence[str], *, force_due: bool) -> bool:
        """One batch for each due kind; True if any batch found work."""
        worked = False
        for name in kinds:
            if self.stopping:
                break
            if not self._due(name, force_due):
                continue
            if self._batch(name):
                worked = True
            elif name in self._rounds:
                self._rounds.discard(name)
                self._stamp_refreshed(name)
        return worked

    def _stamp_refreshed(self, name: str) -> None:
        conn = self._ensure_conn()
        with conn.transaction():
            search_index.stamp_kind(conn, name, wrote=False)

    def _batch(self, name: str) -> bool:
        """Claim and process one batch of ``name``; False when nothing was ready."""
        conn = self._ensure_conn()
        pipeline = self._pipelines[name]
        claimed = queue.claim(
            conn,
            name,
            owner=self.worker_id,
            batch_size=self.settings.batch_size,
            lease_seconds=self.settings.lease_seconds,
        )
        if not claimed:
            return False
        dead: list[int] = []

        def finalize(c: psycopg.Connection, result: BatchResult) -> None:
            queue.delete_rows(c, claimed.row_ids(result.done_ids))
            for failure in result.failures:
                outcome = record_failure(
                    c,
                    name,
                    failure.entity_id,
                    failure.stage,
                    failure.exception,
                    failure.document,
                    max_attempts=self.settings.max_attempts,
                    backoff=self.backoff,
                    queue_ids=claimed.rows.get(failure.entity_id, []),
                    source_table=pipeline.kind.source_table,
                )
                if outcome.action == "dead":
                    dead.append(outcome.dead_letter_id or 0)
                    log.error(
                        "entity %s:%s dead-lettered after %d attempts (dead letter %s): %s",
                        name,
                        failure.entity_id,
                        outcome.attempts,
                        outcome.dead_letter_id,
                        failure,
                    )
                else:
                    log.warning(
                        "entity %s:%s attempt %d failed; retrying in %.1f s: %s",
                        name,
                        failure.entity_id,
                        outcome.attempts,
                        outcome.delay or 0.0,
                        failure,
                    )

        result = pipeline.index(conn, claimed.entity_ids, owner=self.worker_id, finalize=finalize)
        self.totals.add(result, len(dead))
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
            extra={"entity_kind": name, **result.counts()},
        )
        queue.worker_heartbeat(conn, self.worker_id, self.totals.entities)
        return True

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
        while self._beating.is_set():
            if not _sleep_while(self._beating, self.heartbeat_interval):
                break
            try:
                if conn is None or conn.closed or conn.broken:
                    conn = connect(self._conninfo("heartbeat"), autocommit=True, vector=False)
                with conn.transaction():
                    queue.worker_heartbeat(conn, self.worker_id, self.totals.entities)
                    queue.extend_leases(conn, self.worker_id, self.settings.lease_seconds)
            except Exception as exc:
                log.debug("heartbeat failed (%s); will retry", exc)
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()


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
    """Context manager: `Worker._start` with retries, then `Worker._finish` on the way out."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def __enter__(self) -> Worker:
        w = self.worker
        delay = RECONNECT_BASE_SECONDS
        while True:
            try:
                w._start()
                return w
            except Exception as exc:
                if not _is_connection_error(exc) or w.stopping:
                    raise
                log.warning("cannot start worker (%s); retrying in %.1f s", exc, delay)
                if w._stop.wait(delay):
                    raise
                delay = min(delay * 2, RECONNECT_MAX_SECONDS)

    def __exit__(self, *exc_info: object) -> None:
        self.worker._finish()
