"""The runtime SQL of ``idxr.queue``: claiming, enqueueing, completion, retry backoff.

Every function runs ONE short statement (or a few inside the caller's short transaction);
none of them is ever called with a transaction open across model inference.

Claiming (`claim`), in one short transaction:
  1. ready rows of one kind (``not_before <= now()``, entity not under a live lease), oldest
     first, ``FOR UPDATE SKIP LOCKED`` so concurrent claimers never wait for each other;
  2. the first ``batch_size`` distinct entities among them (`choose_entities`) get a lease
     (`idxr_pg.db.leases`; `keep_leased`): an expired lease (crashed worker) is taken over;
  3. the other ready rows of the leased entities are claimed too (`add_rows`: one pass serves
     them all).
  The caller remembers the exact row ids per entity: sequence order is not commit order, so
  "ids <= max" would delete a row committed late by a slow transaction. The claim's `Leases`
  go to `Pipeline.index`, which releases them in its write transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg import sql

from idxr_pg.db.leases import Leases, acquire_ids

__all__ = [
    "CHANNEL",
    "Claim",
    "FailureRows",
    "add_rows",
    "choose_entities",
    "claim",
    "delete_rows",
    "enqueue",
    "keep_leased",
    "listen",
    "lock_failure_rows",
    "ready_counts",
    "schedule_retry",
]

CHANNEL = "idxr_queue"
"""The NOTIFY channel the capture triggers signal (payload: the entity kind)."""

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

_MORE_ROWS_SQL = """
SELECT q.id, q.entity_id
FROM idxr.queue AS q
WHERE q.entity_kind = %(kind)s
  AND q.entity_id = ANY(%(ids)s::text[])
  AND q.not_before <= now()
  AND NOT (q.id = ANY(%(claimed)s::bigint[]))
FOR UPDATE OF q SKIP LOCKED
"""

_DELETE_ROWS_SQL = "DELETE FROM idxr.queue WHERE id = ANY(%(ids)s::bigint[])"

_NOTIFY_SQL = "SELECT pg_notify(%s, %s)"

_ENQUEUE_SQL = """
INSERT INTO idxr.queue (entity_kind, entity_id, source_table, operation)
SELECT %(kind)s, k.id, %(source)s, %(operation)s FROM unnest(%(ids)s::text[]) AS k(id)
"""

_READY_KINDS_SQL = """
SELECT entity_kind, count(*) FROM idxr.queue
WHERE not_before <= now() GROUP BY entity_kind
"""


# --------------------------------------------------------------------------- claiming


@dataclass(frozen=True)
class Claim:
    """Entities leased to ``owner`` by one claim and the exact queue row ids claimed for each."""

    kind: str
    owner: str
    rows: dict[str, list[int]]

    @property
    def entity_ids(self) -> list[str]:
        return list(self.rows)

    @property
    def leases(self) -> Leases:
        """The claimed entities' leases, for `Pipeline.index`."""
        return Leases.of(self.kind, self.owner, self.entity_ids, self.entity_ids)

    def row_ids(self, entity_ids: Iterable[str]) -> list[int]:
        return [row for entity in entity_ids for row in self.rows.get(entity, ())]

    def __len__(self) -> int:
        return len(self.rows)


def choose_entities(ready: Iterable[tuple[int, str]], batch_size: int) -> dict[str, list[int]]:
    """The first ``batch_size`` distinct entities of the ready ``(row id, entity id)`` rows,
    in row order, each with all of its ready row ids."""
    chosen: dict[str, list[int]] = {}
    for row_id, entity_id in ready:
        if entity_id in chosen:
            chosen[entity_id].append(row_id)
        elif len(chosen) < batch_size:
            chosen[entity_id] = [row_id]
    return chosen


def keep_leased(chosen: Mapping[str, list[int]], held: Iterable[str]) -> dict[str, list[int]]:
    """The chosen entities the claimer now leases (another claimer may have won some)."""
    leased = set(held)
    return {entity: list(ids) for entity, ids in chosen.items() if entity in leased}


def add_rows(
    rows: Mapping[str, list[int]], more: Iterable[tuple[int, str]]
) -> dict[str, list[int]]:
    """``rows`` plus the ``(row id, entity id)`` rows of ``more`` for entities already in it."""
    out = {entity: list(ids) for entity, ids in rows.items()}
    for row_id, entity_id in more:
        if entity_id in out:
            out[entity_id].append(row_id)
    return out


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
        chosen = choose_entities(ready, batch_size)
        if not chosen:
            return Claim(kind, owner, {})
        rows = keep_leased(chosen, acquire_ids(conn, kind, list(chosen), owner, lease_seconds))
        if rows:
            claimed = [i for ids in rows.values() for i in ids]
            more = conn.execute(
                _MORE_ROWS_SQL, {"kind": kind, "ids": list(rows), "claimed": claimed}
            ).fetchall()
            rows = add_rows(rows, more)
        return Claim(kind, owner, rows)


# --------------------------------------------------------------------------- rows


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
    conn.execute(_NOTIFY_SQL, [CHANNEL, kind])
    return count


def listen(conn: psycopg.Connection) -> None:
    """LISTEN on `CHANNEL` (an autocommit connection of its own receives the wake-ups)."""
    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))


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
