"""The runtime SQL of ``idxr.queue`` and ``idxr.queue_batches``: claiming, enqueueing,
completion, retry backoff, and the wake-up rule.

Every function runs ONE short statement (or a few inside the caller's short transaction);
none of them is ever called with a transaction open across model inference.

The queue's shape (revisions 0002 and 0007, ``schema/011_coalescing_queue.sql``,
``schema/016_capture_locks.sql``): an entity's *pending* rows (``claimed_by IS NULL AND
attempts = 0``, partial index ``queue_pending``) are what writers coalesce into with
`COALESCE_ONE`: a writer share-locks the entity's pending row if it has one and inserts one
only if not. A statement changing more than a few keys writes one ``idxr.queue_batches`` row
with all of them instead.

Claiming (`claim`), in one short transaction:
  0. the kind's batch rows are expanded into pending rows (`_EXPAND_SQL`: one statement that
     deletes them and inserts their keys, so a crash in between loses nothing);
  1. ready rows of one kind (``not_before <= now()``, entity not under a live lease), oldest
     first, ``FOR UPDATE SKIP LOCKED`` so concurrent claimers never wait for each other;
  2. the first ``batch_size`` distinct entities among them (`choose_entities`) get a lease
     (`idxr_pg.db.leases`; `keep_leased`): an expired lease (crashed worker) is taken over;
  3. the other ready rows of the leased entities are claimed too (`add_rows`: one pass serves
     them all);
  4. every claimed row gets ``claimed_by = owner``, which takes it out of ``queue_pending``: a
     change committed from now on inserts a new pending row that the finalize leaves alone
     (invariant 3). A row claimed by a worker whose lease expired is ready again (step 1).
  The caller remembers the exact row ids per entity: sequence order is not commit order, so
  "ids <= max" would delete a row committed late by a slow transaction. The claim's `Leases`
  go to `Pipeline.index`, which releases them in its write transaction.

Why a writer locks the pending row it coalesces into: without a lock, a claim could take the
row, load the document and delete the row before the coalescing writer commits, and that
writer's change would never be indexed. The lock is ``FOR SHARE``: it keeps the claim's ``FOR
UPDATE SKIP LOCKED`` off the row until the writer commits, yet two writers of one entity (say,
through a child table) never wait for each other, whatever order their statements come in, so
capture adds no waits and no deadlocks between the application's own transactions. A writer
waits only behind a claim's short transaction that has the row (then, in READ COMMITTED,
re-checks it, finds it claimed, and inserts a pending row of its own). The price:
``queue_pending`` cannot be unique (a second inserter of a key would wait on the first one's
commit), so writers that create an entity's first pending row at the same moment may leave one
row each (bounded by the concurrent writers; the claim takes an entity's rows together).
Revision 0002's unique index and ``ON CONFLICT ... DO UPDATE ... WHERE false`` made the second
writer of an entity wait for the first's commit and deadlocked two-statement transactions
(bench/capture_contention.py).

Why the look-up cannot degrade (`PENDING_LOOKUP`): it is run for one key at a time with
equality on both columns of ``queue_pending``, by functions that run with ``enable_seqscan =
off`` (`CAPTURE_SETTINGS`), and ``queue_ready`` (the only other index with the kind first) has
its kind collated "C", which a default-collation equality cannot use. On a queue analysed
while empty a seq scan costs the planner nothing, and a plpgsql function keeps a generic plan:
the first try (commit 511dc0b, reverted: ``entity_id = ANY (keys)``) kept scanning every pending row of the
kind on each write as the backlog grew. tests/integration/test_capture_locks.py checks the plan
the trigger runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg import sql

from idxr_pg.db.advisory import WAKE_NAMESPACE
from idxr_pg.db.leases import Leases, acquire_ids

__all__ = [
    "CHANNEL",
    "EXPAND_BATCHES",
    "CAPTURE_SETTINGS",
    "CLAIM_SETTINGS",
    "COALESCE_ONE",
    "PENDING_LOOKUP",
    "WAKE_NAMESPACE",
    "WAKE_SQL",
    "Claim",
    "FailureRows",
    "add_rows",
    "choose_entities",
    "claim",
    "coalesce_one",
    "delete_rows",
    "enqueue",
    "keep_leased",
    "listen",
    "lock_failure_rows",
    "ready_counts",
    "schedule_retry",
]

CHANNEL = "idxr_queue"
"""The NOTIFY channel the capture triggers signal (payload: the entity kind).

A transaction rings only when ``pg_try_advisory_xact_lock(WAKE_NAMESPACE, hashtext(kind))``
succeeds (`WAKE_SQL`): NOTIFY takes a cluster-wide lock held through commit, so at most one
ringing transaction per kind at a time keeps concurrent writers' commits from running one at
a time. The worker claims once more shortly after a drain (`Worker`) to catch the writers that
skipped ringing while the ringer's commit woke it; its poll is the safety net."""

CAPTURE_SETTINGS = "SET search_path = pg_catalog, pg_temp\nSET enable_seqscan = off"
"""The settings of every function that queues through `PENDING_LOOKUP` (the capture triggers):
the look-up must use ``queue_pending`` even when the planner believes the queue is empty."""

PENDING_LOOKUP = """\
SELECT FROM idxr.queue AS p
 WHERE p.entity_kind = {kind} AND p.entity_id = {key}
   AND p.claimed_by IS NULL AND p.attempts = 0
 LIMIT 1 FOR SHARE OF p"""
"""Share-lock one pending row of one key (any one: the claim skips it until the writer commits,
and takes the entity's other rows without it). A `psycopg.sql.SQL` template: ``kind`` and
``key`` (text)."""

COALESCE_ONE = """\
WITH held AS (
    {lookup}
)
INSERT INTO idxr.queue (entity_kind, entity_id, source_table, operation)
SELECT {kind}, {key}, {source}, {operation} WHERE NOT EXISTS (SELECT FROM held)"""
"""Queue one key: share-lock its pending row (`PENDING_LOOKUP`) or insert one; ``FOUND`` /
``ROW_COUNT``: a row was inserted. A `psycopg.sql.SQL` template: ``kind``, ``key``,
``source``, ``operation``; the capture triggers run it once per key of a statement with few
keys."""


def coalesce_one(
    kind: sql.Composable,
    key: sql.Composable,
    source: sql.Composable,
    operation: sql.Composable,
    indent: str = "",
) -> sql.Composed:
    """`COALESCE_ONE` with its look-up filled in (the capture triggers' queueing statement),
    every line after the first indented by ``indent`` (the template's, never a literal's)."""
    lookup = sql.SQL(PENDING_LOOKUP.replace("\n", "\n    " + indent)).format(kind=kind, key=key)
    return sql.SQL(COALESCE_ONE.replace("\n", "\n" + indent)).format(
        lookup=lookup, kind=kind, key=key, source=source, operation=operation
    )


WAKE_SQL = (
    "SELECT CASE WHEN pg_catalog.pg_try_advisory_xact_lock(%(ns)s, pg_catalog.hashtext(%(kind)s))"
    " THEN pg_catalog.pg_notify(%(channel)s, %(kind)s) END"
)
"""Ring for a kind unless another open transaction already rings for it (see `CHANNEL`)."""

EXPAND_BATCHES = 32
"""Batch rows (bulk statements) a claim expands at most."""

_EXPAND_SQL = """
WITH taken AS (
    DELETE FROM idxr.queue_batches
     WHERE id IN (SELECT id FROM idxr.queue_batches WHERE entity_kind = %(kind)s
                   ORDER BY id LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
    RETURNING entity_kind, entity_ids, source_table, operation, enqueued_at
)
INSERT INTO idxr.queue (entity_kind, entity_id, source_table, operation, enqueued_at, not_before)
SELECT DISTINCT ON (k.id COLLATE "C") t.entity_kind, k.id, t.source_table, t.operation, t.enqueued_at,
       t.enqueued_at
  FROM taken AS t CROSS JOIN LATERAL unnest(t.entity_ids) AS k(id)
 WHERE k.id IS NOT NULL
   AND NOT EXISTS (SELECT FROM idxr.queue AS p
                    WHERE p.entity_kind = t.entity_kind AND p.entity_id = k.id
                      AND p.claimed_by IS NULL AND p.attempts = 0
                   OFFSET 0)
 ORDER BY k.id COLLATE "C", t.enqueued_at
"""
# OFFSET 0 keeps the NOT EXISTS a per-key probe of queue_pending on both columns: turned into
# an anti join, it was planned (on an empty queue's statistics) as a scan of every pending row
# of the kind per key.
# A key that already has a pending row needs no other: this transaction holds the batch row
# until it commits, and the pending row can only be claimed by a later claim. A writer may
# insert one meanwhile (a second pending row: harmless, claimed together).

_READY_SQL = """
SELECT q.id, q.entity_id
FROM idxr.queue AS q
WHERE q.entity_kind COLLATE "C" = %(kind)s  -- queue_ready (016_capture_locks.sql)
  AND q.not_before <= now()
  AND NOT EXISTS (
      SELECT 1 FROM idxr.leases AS l
      WHERE l.entity_kind = q.entity_kind AND l.entity_id = q.entity_id
        AND l.leased_until >= now() AND l.worker_id <> %(owner)s
  )
  AND q.entity_id <> ALL (%(busy)s::text[])
ORDER BY q.not_before, q.id
LIMIT %(limit)s
FOR UPDATE OF q SKIP LOCKED
"""

# The two arms match the predicates of the partial indexes queue_pending and queue_held; one
# key at a time (a LATERAL that OFFSET 0 keeps from being flattened), equality on both columns:
# with ``entity_id = ANY (ids)`` an empty queue's statistics gave an index scan on the kind
# alone, every pending row of the kind read per claim (57 ms at 200,000 queued rows).
_MORE_ROWS_SQL = """
SELECT q.id, q.entity_id
FROM idxr.queue AS q
WHERE q.id IN (
    SELECT e.id FROM unnest(%(ids)s::text[]) AS k (id) CROSS JOIN LATERAL (
        SELECT p.id FROM idxr.queue AS p
         WHERE p.entity_kind = %(kind)s AND p.entity_id = k.id
           AND p.claimed_by IS NULL AND p.attempts = 0
        UNION ALL
        SELECT h.id FROM idxr.queue AS h
         WHERE h.entity_kind = %(kind)s AND h.entity_id = k.id
           AND (h.claimed_by IS NOT NULL OR h.attempts > 0)
        OFFSET 0
    ) AS e
  )
  AND q.not_before <= now()
  AND NOT (q.id = ANY(%(claimed)s::bigint[]))
FOR UPDATE OF q SKIP LOCKED
"""

CLAIM_SETTINGS = (
    "SELECT pg_catalog.set_config('enable_seqscan', 'off', true),"
    " pg_catalog.set_config('enable_bitmapscan', 'off', true),"
    " pg_catalog.set_config('jit', 'off', true)"
)
"""For the rest of the claim's transaction: index scans (``queue_ready`` in order,
``queue_pending`` / ``queue_held`` per key, the leases' key) whatever the statistics say (see
`claim`). ``jit`` off: a disabled path's cost would otherwise pass the JIT thresholds, and
compiling took 150-350 ms a claim."""

_MARK_CLAIMED_SQL = """
UPDATE idxr.queue SET claimed_by = %(owner)s
WHERE id = ANY(%(ids)s::bigint[]) AND claimed_by IS DISTINCT FROM %(owner)s
"""

_DELETE_ROWS_SQL = "DELETE FROM idxr.queue WHERE id = ANY(%(ids)s::bigint[])"

_ENQUEUE_SQL = """
WITH held AS (
    SELECT p.entity_id FROM idxr.queue AS p
     WHERE p.entity_kind = %(kind)s AND p.entity_id = ANY (%(ids)s::text[])
       AND p.claimed_by IS NULL AND p.attempts = 0
       FOR SHARE OF p
)
INSERT INTO idxr.queue (entity_kind, entity_id, source_table, operation)
SELECT DISTINCT %(kind)s, k.id, %(source)s, %(operation)s
  FROM unnest(%(ids)s::text[]) AS k (id)
 WHERE k.id IS NOT NULL AND NOT EXISTS (SELECT FROM held AS h WHERE h.entity_id = k.id)
"""
# `COALESCE_ONE` for many keys at once (dead letters retried by an operator: rare, planned per
# call); the same locks.

_READY_KINDS_SQL = """
SELECT entity_kind, sum(n)::bigint FROM (
    SELECT entity_kind, count(*) AS n FROM idxr.queue
     WHERE not_before <= now() GROUP BY entity_kind
    UNION ALL
    SELECT entity_kind, sum(cardinality(entity_ids)) FROM idxr.queue_batches GROUP BY entity_kind
) AS ready GROUP BY entity_kind
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
    busy: Sequence[str] = (),
) -> Claim:
    """Claim up to ``batch_size`` distinct entities of ``kind`` with their ready queue rows.

    Its look-ups run with `CLAIM_SETTINGS` (index scans only): the queue's statistics are
    usually those of an empty queue (autovacuum analyses it drained), and with them the planner
    read every ready row of the kind and sorted it on each claim, 265-300 ms a claim at 200,000
    queued rows, prepared or not, where `queue_ready` read in order stops after ``limit``.

    ``busy``: entities this owner holds in a batch not yet written (the worker's overlap claims
    batch N+1 while N is prepared): their rows are left alone, since a claim otherwise takes
    back its owner's own leases (a worker that reconnected resumes its entities)."""
    with conn.transaction():
        conn.execute(CLAIM_SETTINGS)
        conn.execute(_EXPAND_SQL, {"kind": kind, "limit": EXPAND_BATCHES})
        ready = conn.execute(
            _READY_SQL,
            {"kind": kind, "owner": owner, "busy": list(busy), "limit": batch_size * scan_factor},
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
            conn.execute(
                _MARK_CLAIMED_SQL, {"owner": owner, "ids": [i for r in rows.values() for i in r]}
            )
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
    """Queue entity keys for (re-)indexing and wake the workers (commits with the caller).

    An entity that already has a pending row keeps that one row (returns the rows inserted)."""
    if not ids:
        return 0
    count = conn.execute(
        _ENQUEUE_SQL,
        {"kind": kind, "ids": list(ids), "source": source_table, "operation": operation},
    ).rowcount
    conn.execute(WAKE_SQL, {"ns": WAKE_NAMESPACE, "kind": kind, "channel": CHANNEL})
    return count


def listen(conn: psycopg.Connection) -> None:
    """LISTEN on `CHANNEL` (an autocommit connection of its own receives the wake-ups)."""
    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))


def ready_counts(conn: psycopg.Connection) -> Mapping[str, int]:
    """Ready queue rows per kind, the keys of batch rows included (for logs and `--once`)."""
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
# attempts > 0 and claimed_by NULL: out of queue_pending, so a change made meanwhile gets a
# ready row of its own at once; ready again for any claimer once not_before passes.
_BACKOFF_SQL = """
UPDATE idxr.queue
SET claimed_by = NULL,
    attempts = %(attempts)s,
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
