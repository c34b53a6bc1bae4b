"""What `idxr-pg status` and `idxr-pg stale` report, read from the idxr.status / idxr.stale views.

The views hold the facts the database knows; this module adds the kinds that are configured
but not yet in the database (all zeros) and the live workers (heartbeat recent enough).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row

from idxr_pg.config import IdxrConfig
from idxr_pg.db.jobs import Job, latest_job

STATUS_SQL = "SELECT * FROM idxr.status ORDER BY entity_kind"
STALE_SQL = "SELECT * FROM idxr.stale ORDER BY stale_since, entity_kind"
QUEUE_GAUGES_SQL = """
SELECT entity_kind, queued_changes, queued_entities,
       extract(epoch FROM lag)::float8 AS lag_seconds
  FROM idxr.stale
 ORDER BY entity_kind
"""
LIVE_WORKERS_SQL = """
SELECT worker_id, host, pid, entity_kinds, state, processed, started_at, heartbeat_at,
       extract(epoch FROM now() - heartbeat_at)::float8 AS heartbeat_age_seconds
  FROM idxr.workers
 WHERE heartbeat_at > now() - make_interval(secs => %(within)s)
   AND state <> 'stopped'
 ORDER BY worker_id
"""

# A worker counts as live when its last heartbeat is at most this many poll intervals old
# (and at least this many seconds): one missed beat is not death.
LIVE_HEARTBEAT_INTERVALS = 3
LIVE_MIN_SECONDS = 30.0


def _seconds(value: timedelta | None) -> float | None:
    return None if value is None else round(value.total_seconds(), 3)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


@dataclass(frozen=True)
class KindStatus:
    entity_kind: str
    model_name: str | None
    source_table: str | None
    refresh_policy: str
    indexed_entities: int = 0
    indexed_records: int = 0
    embedded_records: int = 0
    queue_depth: int = 0
    queued_entities: int = 0
    retrying_changes: int = 0
    stale_since: datetime | None = None
    lag: timedelta | None = None
    last_refresh_at: datetime | None = None
    last_embedded_at: datetime | None = None
    dead_letters: int = 0
    paused: bool = False
    paused_since: datetime | None = None
    schema_stale: bool = False  # the model changed since the index was built
    schema_change: str | None = None  # what changed, one line
    window: str | None = None  # the config's off-peak window (UTC), None: any time
    configured: bool = True
    in_database: bool = True
    last_backfill: Job | None = None

    def as_dict(self) -> dict[str, Any]:
        backfill = self.last_backfill
        return {
            "entity_kind": self.entity_kind,
            "model": self.model_name,
            "source_table": self.source_table,
            "refresh_policy": self.refresh_policy,
            "indexed_entities": self.indexed_entities,
            "indexed_records": self.indexed_records,
            "embedded_records": self.embedded_records,
            "queue_depth": self.queue_depth,
            "queued_entities": self.queued_entities,
            "retrying_changes": self.retrying_changes,
            "lag_seconds": _seconds(self.lag),
            "stale_since": _iso(self.stale_since),
            "last_refresh_at": _iso(self.last_refresh_at),
            "last_embedded_at": _iso(self.last_embedded_at),
            "dead_letters": self.dead_letters,
            "paused": self.paused,
            "paused_since": _iso(self.paused_since),
            "schema_stale": self.schema_stale,
            "schema_change": self.schema_change,
            "window": self.window,
            "configured": self.configured,
            "in_database": self.in_database,
            "last_backfill": None
            if backfill is None
            else {
                "job_id": backfill.id,
                "state": backfill.state,
                "percent": backfill.percent,
                "started_at": _iso(backfill.started_at),
                "finished_at": _iso(backfill.finished_at),
            },
        }


@dataclass(frozen=True)
class WorkerStatus:
    worker_id: str
    host: str
    pid: int
    entity_kinds: list[str]
    state: str
    processed: int
    started_at: datetime
    heartbeat_at: datetime
    heartbeat_age_seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "worker_id": self.worker_id,
            "host": self.host,
            "pid": self.pid,
            "entity_kinds": list(self.entity_kinds),
            "state": self.state,
            "processed": self.processed,
            "started_at": _iso(self.started_at),
            "last_heartbeat_at": _iso(self.heartbeat_at),
            "heartbeat_age_seconds": round(self.heartbeat_age_seconds, 3),
        }


@dataclass(frozen=True)
class Status:
    kinds: list[KindStatus]
    workers: list[WorkerStatus] = field(default_factory=list)
    live_within_seconds: float = LIVE_MIN_SECONDS

    def as_dict(self) -> dict[str, Any]:
        return {
            "kinds": [kind.as_dict() for kind in self.kinds],
            "workers": [worker.as_dict() for worker in self.workers],
            "live_within_seconds": self.live_within_seconds,
        }


@dataclass(frozen=True)
class StaleKind:
    entity_kind: str
    refresh_policy: str
    refresh_interval: timedelta | None
    queued_changes: int
    queued_entities: int
    ready_changes: int
    stale_since: datetime
    lag: timedelta
    last_refresh_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "entity_kind": self.entity_kind,
            "refresh_policy": self.refresh_policy,
            "refresh_interval_seconds": _seconds(self.refresh_interval),
            "queued_changes": self.queued_changes,
            "queued_entities": self.queued_entities,
            "ready_changes": self.ready_changes,
            "stale_since": _iso(self.stale_since),
            "lag_seconds": _seconds(self.lag),
            "last_refresh_at": _iso(self.last_refresh_at),
        }


def live_window_seconds(config: IdxrConfig) -> float:
    return max(LIVE_MIN_SECONDS, LIVE_HEARTBEAT_INTERVALS * config.worker.poll_interval)


def gather_status(conn: psycopg.Connection, config: IdxrConfig) -> Status:
    """Every kind in the database or the config (configured-only kinds show zeros), and the
    workers whose heartbeat is recent."""
    configured = {entity.name: entity for entity in config.entities}
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(STATUS_SQL).fetchall()
        within = live_window_seconds(config)
        worker_rows = cur.execute(LIVE_WORKERS_SQL, {"within": within}).fetchall()
    kinds: dict[str, KindStatus] = {}
    for row in rows:
        name = row["entity_kind"]
        entity = configured.get(name)
        kinds[name] = KindStatus(
            **{**row, "source_table": row["source_table"] or (entity.table if entity else None)},
            window=entity.window if entity else None,
            configured=entity is not None,
            last_backfill=latest_job(conn, name),
        )
    for name, entity in configured.items():
        if name not in kinds:
            kinds[name] = KindStatus(
                entity_kind=name,
                model_name=config.embedding.model,
                source_table=entity.table,
                refresh_policy=entity.refresh,
                window=entity.window,
                in_database=False,
                last_backfill=latest_job(conn, name),
            )
    workers = [WorkerStatus(**row) for row in worker_rows]
    return Status(
        kinds=sorted(kinds.values(), key=lambda k: k.entity_kind),
        workers=workers,
        live_within_seconds=within,
    )


def gather_stale(conn: psycopg.Connection) -> list[StaleKind]:
    """Kinds with unprocessed changes in the queue, oldest first."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(STALE_SQL).fetchall()
    return [StaleKind(**row) for row in rows]


@dataclass(frozen=True)
class QueueGauge:
    """A kind's queue right now: queued changes and entities, age of the oldest change."""

    entity_kind: str
    queued_changes: int
    queued_entities: int
    lag_seconds: float


def queue_gauges(conn: psycopg.Connection, timeout_seconds: float = 2.0) -> list[QueueGauge]:
    """The kinds with queued changes (from idxr.stale, which leaves out the index counts that
    make idxr.status costly on a large index); a kind not listed has an empty queue. The query
    is cancelled after ``timeout_seconds`` (a scrape must not hang on a busy server)."""
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT set_config('statement_timeout', %s, true)",
            [f"{max(1, int(timeout_seconds * 1000))}ms"],
        )
        rows = cur.execute(QUEUE_GAUGES_SQL).fetchall()
    return [QueueGauge(**row) for row in rows]
