"""The runtime SQL of the queue: claiming, leases, completion, failures, dead letters, workers.

Every function runs ONE short statement (or a few inside the caller's short transaction);
none of them is ever called with a transaction open across model inference.

Claiming (`claim`), in one short transaction:
  1. ready rows of one kind (``not_before <= now()``, entity not under a live lease), oldest
     first, ``FOR UPDATE SKIP LOCKED`` so concurrent claimers never wait for each other;
  2. the first ``batch_size`` distinct entities among them get a lease: ``INSERT INTO
     idxr.leases ... ON CONFLICT DO UPDATE ... WHERE leased_until < now() OR worker_id = me``.
     The primary key makes a lease exclusive; an expired lease (crashed worker) is taken over;
  3. the other ready rows of the leased entities are claimed too (one pass serves them all).
  The caller remembers the exact row ids per entity: sequence order is not commit order, so
  "ids <= max" would delete a row committed late by a slow transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import psycopg

__all__ = [
    "CHANNEL",
    "Claim",
    "FailureRows",
    "acquire_leases",
    "claim",
    "delete_rows",
    "enqueue",
    "extend_leases",
    "insert_dead_letter",
    "lock_failure_rows",
    "owned_leases",
    "ready_counts",
    "release_leases",
    "schedule_retry",
    "worker_heartbeat",
    "worker_started",
]

_READY_SQL = """
SELECT q.id, q.entity_id
FROM idxr.queue AS q
WHERE q.entity_kind = %(kind)s
  AND q.not_before <= now()
  AND NOT EXISTS (
      SELECT 1 FROM idxr.leases AS l
      WHERE l.entity_kind = q.entity_kind AND l.entity_id = q.entity_id
        AND l.leased_until >= now() AND l.worker_id <> %(owner)s
  )
ORDER BY q.not_before, q.id
LIMIT %(limit)s
FOR UPDATE OF q SKIP LOCKED
"""

# Sorted insertion order: two claimers taking overlapping entity sets cannot deadlock.
_ACQUIRE_SQL = """
INSERT INTO idxr.leases AS l (entity_kind, entity_id, worker_id, leased_until)
SELECT %(kind)s, k.id, %(owner)s, now() + make_interval(secs => %(seconds)s)
FROM unnest(%(ids)s::text[]) AS k(id)
ORDER BY k.id
ON CONFLICT (entity_kind, entity_id) DO UPDATE
    SET worker_id = excluded.worker_id, leased_until = excluded.leased_until
    WHERE l.leased_until < now() OR l.worker_id = excluded.worker_id
RETURNING l.entity_id
"""

_MORE_ROWS_SQL = """
SELECT q.id, q.entity_id
FROM idxr.queue AS q
WHERE q.entity_kind = %(kind)s
  AND q.entity_id = ANY(%(ids)s::text[])
  AND q.not_before <= now()
  AND NOT (q.id = ANY(%(claimed)s::bigint[]))
FOR UPDATE OF q SKIP LOCKED
"""

_OWNED_SQL = """
SELECT entity_id FROM idxr.leases
WHERE entity_kind = %(kind)s AND entity_id = ANY(%(ids)s::text[]) AND worker_id = %(owner)s
ORDER BY entity_id
FOR UPDATE
"""

_RELEASE_SQL = """
DELETE FROM idxr.leases
WHERE entity_kind = %(kind)s AND entity_id = ANY(%(ids)s::text[]) AND worker_id = %(owner)s
"""

_RELEASE_ALL_SQL = "DELETE FROM idxr.leases WHERE worker_id = %(owner)s"

_EXTEND_SQL = """
UPDATE idxr.leases SET leased_until = now() + make_interval(secs => %(seconds)s)
WHERE worker_id = %(owner)s
"""

_DELETE_ROWS_SQL = "DELETE FROM idxr.queue WHERE id = ANY(%(ids)s::bigint[])"

_NOTIFY_SQL = "SELECT pg_notify('idxr_queue', %s)"

_ENQUEUE_SQL = """
INSERT INTO idxr.queue (entity_kind, entity_id, source_table, operation)
SELECT %(kind)s, k.id, %(source)s, %(operation)s FROM unnest(%(ids)s::text[]) AS k(id)
"""

_READY_KINDS_SQL = """
SELECT entity_kind, count(*) FROM idxr.queue
WHERE not_before <= now() GROUP BY entity_kind
"""

CHANNEL = "idxr_queue"
"""The NOTIFY channel the capture triggers signal (payload: the entity kind)."""


@dataclass
class Claim:
    """Entities leased by one claim and the exact queue row ids claimed for each."""

    kind: str
    rows: dict[str, list[int]]

    @property
    def entity_ids(self) -> list[str]:
        return list(self.rows)

    def row_ids(self, entity_ids: Iterable[str]) -> list[int]:
        return [row for entity in entity_ids for row in self.rows.get(entity, ())]

    def __len__(self) -> int:
        return len(self.rows)


def claim(
    conn: psycopg.Connection,
    kind: str,
    *,
    owner: str,
    batch_size: int,
    lease_seconds: float,
    scan_factor: int = 4,
) -> Claim:
    """Claim up to ``batch_size`` distinct entities of ``kind`` with their ready queue rows."""
    with conn.transaction():
        ready = conn.execute(
            _READY_SQL, {"kind": kind, "owner": owner, "limit": batch_size * scan_factor}
        ).fetchall()
        chosen: dict[str, list[int]] = {}
        for row_id, entity_id in ready:
            if entity_id in chosen:
                chosen[entity_id].append(row_id)
            elif len(chosen) < batch_size:
                chosen[entity_id] = [row_id]
        if not chosen:
            return Claim(kind, {})
        leased = set(_acquire(conn, kind, list(chosen), owner, lease_seconds))
        rows = {entity: ids for entity, ids in chosen.items() if entity in leased}
        if rows:
            more = conn.execute(
                _MORE_ROWS_SQL,
                {"kind": kind, "ids": list(rows), "claimed": [i for v in rows.values() for i in v]},
            ).fetchall()
            for row_id, entity_id in more:
                rows[entity_id].append(row_id)
        return Claim(kind, rows)


def _acquire(
    conn: psycopg.Connection, kind: str, ids: Sequence[str], owner: str, seconds: float
) -> list[str]:
    params = {"kind": kind, "ids": list(ids), "owner": owner, "seconds": float(seconds)}
    return [row[0] for row in conn.execute(_ACQUIRE_SQL, params).fetchall()]


def acquire_leases(
    conn: psycopg.Connection, kind: str, ids: Sequence[str], owner: str, seconds: float
) -> set[str]:
    """Lease the ids to ``owner`` (renewing its own leases); returns the ids it now holds."""
    if not ids:
        return set()
    with conn.transaction():
        return set(_acquire(conn, kind, ids, owner, seconds))


def owned_leases(conn: psycopg.Connection, kind: str, ids: Sequence[str], owner: str) -> set[str]:
    """Inside the caller's write transaction: lock and return the ids still leased to owner."""
    params = {"kind": kind, "ids": list(ids), "owner": owner}
    return {row[0] for row in conn.execute(_OWNED_SQL, params).fetchall()}


def release_leases(
    conn: psycopg.Connection, kind: str | None, ids: Sequence[str] | None, owner: str
) -> int:
    """Drop owner's leases on ids (all its leases when ``kind``/``ids`` are None)."""
    if kind is None or ids is None:
        return conn.execute(_RELEASE_ALL_SQL, {"owner": owner}).rowcount
    if not ids:
        return 0
    return conn.execute(_RELEASE_SQL, {"kind": kind, "ids": list(ids), "owner": owner}).rowcount


def extend_leases(conn: psycopg.Connection, owner: str, seconds: float) -> int:
    """Push all of owner's leases ``seconds`` into the future (a live worker keeps its leases)."""
    return conn.execute(_EXTEND_SQL, {"owner": owner, "seconds": float(seconds)}).rowcount


def delete_rows(conn: psycopg.Connection, ids: Sequence[int]) -> int:
    """Delete exactly these queue rows (the ones a worker claimed)."""
    if not ids:
        return 0
    return conn.execute(_DELETE_ROWS_SQL, {"ids": list(ids)}).rowcount


def enqueue(
    conn: psycopg.Connection,
    kind: str,
    ids: Sequence[str],
    *,
    source_table: str | None = None,
    operation: str = "retry",
) -> int:
    """Queue entity keys for (re-)indexing and wake the workers (commits with the caller)."""
    if not ids:
        return 0
    count = conn.execute(
        _ENQUEUE_SQL,
        {"kind": kind, "ids": list(ids), "source": source_table, "operation": operation},
    ).rowcount
    conn.execute(_NOTIFY_SQL, [kind])
    return count


def ready_counts(conn: psycopg.Connection) -> Mapping[str, int]:
    """Ready queue rows per kind (for logs and `--once`)."""
    return dict(conn.execute(_READY_KINDS_SQL).fetchall())


# --------------------------------------------------------------------------- failures

_LOCK_FAILURE_ROWS_SQL = """
SELECT id, attempts, first_failed_at FROM idxr.queue
WHERE id = ANY(%(ids)s::bigint[])
ORDER BY id
FOR UPDATE
"""
_LOCK_RETRY_ROWS_SQL = """
SELECT id, attempts, first_failed_at FROM idxr.queue
WHERE entity_kind = %(kind)s AND entity_id = %(entity_id)s AND attempts > 0
ORDER BY id
FOR UPDATE
"""
_BACKOFF_SQL = """
UPDATE idxr.queue
SET attempts = %(attempts)s,
    not_before = now() + make_interval(secs => %(delay)s),
    first_failed_at = %(first_failed_at)s,
    last_error = %(error)s
WHERE id = ANY(%(ids)s::bigint[])
"""
_INSERT_RETRY_SQL = """
INSERT INTO idxr.queue (entity_kind, entity_id, source_table, operation, not_before, attempts,
                        first_failed_at, last_error)
VALUES (%(kind)s, %(entity_id)s, %(source)s, 'retry', now() + make_interval(secs => %(delay)s),
        %(attempts)s, %(first_failed_at)s, %(error)s)
"""
_DEAD_LETTER_SQL = """
INSERT INTO idxr.dead_letters (entity_kind, entity_id, stage, error_type, error_message,
                               attempts, first_failed_at, last_failed_at, payload)
VALUES (%(kind)s, %(entity_id)s, %(stage)s, %(error_type)s, %(error_message)s, %(attempts)s,
        %(first_failed_at)s, %(last_failed_at)s, %(payload)s)
RETURNING id
"""


@dataclass(frozen=True)
class FailureRows:
    """The queue rows that track one entity's failure, locked by `lock_failure_rows`."""

    ids: list[int]
    attempts: int
    first_failed_at: datetime | None


def lock_failure_rows(
    conn: psycopg.Connection, kind: str, entity_id: str, queue_ids: Sequence[int] | None
) -> FailureRows:
    """Lock the given rows, or (None) the entity's rows already in retry (attempts > 0)."""
    if queue_ids is not None:
        rows = conn.execute(_LOCK_FAILURE_ROWS_SQL, {"ids": list(queue_ids)}).fetchall()
    else:
        rows = conn.execute(_LOCK_RETRY_ROWS_SQL, {"kind": kind, "entity_id": entity_id}).fetchall()
    firsts = [row[2] for row in rows if row[2] is not None]
    return FailureRows(
        ids=[row[0] for row in rows],
        attempts=max((row[1] for row in rows), default=0),
        first_failed_at=min(firsts) if firsts else None,
    )


def schedule_retry(
    conn: psycopg.Connection,
    kind: str,
    entity_id: str,
    rows: FailureRows,
    *,
    attempts: int,
    delay: float,
    first_failed_at: datetime,
    error: str,
    source_table: str | None = None,
) -> None:
    """Back the rows off by ``delay`` seconds (insert a retry row when there are none)."""
    params = {
        "kind": kind,
        "entity_id": entity_id,
        "ids": rows.ids,
        "attempts": attempts,
        "delay": float(delay),
        "first_failed_at": first_failed_at,
        "error": error,
        "source": source_table,
    }
    conn.execute(_BACKOFF_SQL if rows.ids else _INSERT_RETRY_SQL, params)


def insert_dead_letter(conn: psycopg.Connection, **values: object) -> int:
    """Insert one dead letter (columns as in idxr.dead_letters); returns its id."""
    return conn.execute(_DEAD_LETTER_SQL, values).fetchone()[0]


# --------------------------------------------------------------------------- workers

_WORKER_START_SQL = """
INSERT INTO idxr.workers (worker_id, host, pid, entity_kinds, state)
VALUES (%(worker_id)s, %(host)s, %(pid)s, %(kinds)s, 'running')
ON CONFLICT (worker_id) DO UPDATE
    SET host = excluded.host, pid = excluded.pid, entity_kinds = excluded.entity_kinds,
        state = 'running', started_at = now(), heartbeat_at = now()
"""
_WORKER_BEAT_SQL = """
UPDATE idxr.workers SET heartbeat_at = now(), processed = %(processed)s, state = %(state)s
WHERE worker_id = %(worker_id)s
"""


def worker_started(
    conn: psycopg.Connection, worker_id: str, host: str, pid: int, kinds: Sequence[str]
) -> None:
    conn.execute(
        _WORKER_START_SQL, {"worker_id": worker_id, "host": host, "pid": pid, "kinds": list(kinds)}
    )


def worker_heartbeat(
    conn: psycopg.Connection, worker_id: str, processed: int, state: str = "running"
) -> None:
    conn.execute(_WORKER_BEAT_SQL, {"worker_id": worker_id, "processed": processed, "state": state})
