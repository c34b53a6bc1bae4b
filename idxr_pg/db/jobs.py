"""Job records in idxr.jobs: create, advance (checkpoint + counts), finish, list, resume.

State machine of one job row (one row per process run)::

    running ──> succeeded     every key streamed and the deleted-entity sweep done
            ──> failed        an error stopped the run (error holds the message)
            ──> interrupted   SIGINT/SIGTERM after the current batch, or found dead: its
                              process no longer holds the per-kind backfill lock (SIGKILL,
                              lost connection); the next backfill or `jobs` marks it

A row never leaves succeeded/failed/interrupted. `backfill --resume` continues the latest
backfill of a kind when that one is interrupted or failed: it creates a NEW row whose
``resumed_from`` is the old id, whose checkpoint starts at the old checkpoint and whose counts
start at the old counts (so a finished resumed chain reads like one uninterrupted run); the
old row keeps its state and is shown as "resumed by #new".

Liveness comes from a session-level advisory lock per (backfill, kind) held by the running
backfill's control connection: PostgreSQL drops it when the process dies, so a `running` row
whose lock is free is a dead run. All runtime SQL of this area is in the constants below;
the count columns are listed once, in `COUNT_COLUMNS`, which maps them to `Counts` fields.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from idxr_pg.db.advisory import BACKFILL_NAMESPACE
from idxr_pg.errors import IdxrError
from idxr_pg.records.counts import Counts

BACKFILL = "backfill"
# First key of the two-int advisory lock (its owner: db/advisory.py); the second is
# hashtext(kind).
LOCK_NAMESPACE = BACKFILL_NAMESPACE

RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
INTERRUPTED = "interrupted"
FINISHED_STATES = (SUCCEEDED, FAILED, INTERRUPTED)
RESUMABLE_STATES = (FAILED, INTERRUPTED)

# ---- SQL -------------------------------------------------------------------------------------

TRY_LOCK_SQL = "SELECT pg_try_advisory_lock(%(ns)s, hashtext(%(kind)s))"
UNLOCK_SQL = "SELECT pg_advisory_unlock(%(ns)s, hashtext(%(kind)s))"

# A running job whose kind lock nobody ELSE holds has lost its process: the calling session's
# own lock does not count (a backfill reconciles right after taking its kind's lock, so a
# `running` row of that kind can only belong to a dead run).
_LOCK_HELD = """
    EXISTS (SELECT 1 FROM pg_locks l
             WHERE l.locktype = 'advisory' AND l.granted
               AND l.pid <> pg_backend_pid()
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
               AND l.classid = %(ns)s::oid AND l.objid = hashtext(j.entity_kind)::oid
               AND l.objsubid = 2)
"""

RECONCILE_ABANDONED_SQL = f"""
UPDATE idxr.jobs j
   SET state = 'interrupted',
       error = COALESCE(j.error, 'the process ended without finishing (killed or disconnected)'),
       finished_at = j.updated_at
 WHERE j.state = 'running' AND j.job_type = %(job_type)s
   AND NOT {_LOCK_HELD}
RETURNING j.id
"""

COUNT_COLUMNS: dict[str, str] = {
    "done": "entities",  # entities of the source streamed (the sweep's are not progress)
    "embedded": "texts_embedded",
    "cache_hits": "cache_hits",
    "records_written": "records_written",
    "records_deleted": "records_deleted",
    "unchanged": "unchanged",
    "deleted": "deleted",  # entities removed because their source row is gone
    "skipped": "skipped",  # leased by a worker at the time: it produces their current state
    "failed": "failed",  # handed to the retry queue / dead letters
}
"""The one map from idxr.jobs count columns to `Counts` fields; the SQL below is built from it."""

_COUNTS = ", ".join(f"j.{column}" for column in COUNT_COLUMNS)

_COLUMNS = f"""
    j.id, j.job_type, j.entity_kind, j.state, j.options, j.checkpoint, j.total,
    {_COUNTS}, j.rate, j.error, j.host, j.pid, j.started_at,
    j.updated_at, j.finished_at, j.resumed_from,
    (SELECT max(n.id) FROM idxr.jobs n WHERE n.resumed_from = j.id) AS resumed_by,
    now() AS observed_at
"""

_CREATE_COLUMNS = ("job_type", "entity_kind", "options", "checkpoint", "total", "resumed_from",
                   *COUNT_COLUMNS, "host", "pid")  # fmt: skip

CREATE_JOB_SQL = f"""
INSERT INTO idxr.jobs AS j ({", ".join(_CREATE_COLUMNS)})
VALUES ({", ".join(f"%({column})s" for column in _CREATE_COLUMNS)})
RETURNING {_COLUMNS}
"""

_INCREMENTS = ",\n".join(f"       {column} = {column} + %({column})s" for column in COUNT_COLUMNS)

# Runs inside the pipeline's write transaction: the checkpoint moves with the index rows.
ADVANCE_JOB_SQL = f"""
UPDATE idxr.jobs
   SET checkpoint = COALESCE(%(checkpoint)s, checkpoint),
{_INCREMENTS},
       rate = %(rate)s,
       updated_at = now()
 WHERE id = %(id)s AND state = 'running'
"""

FINISH_JOB_SQL = """
UPDATE idxr.jobs
   SET state = %(state)s, error = %(error)s, rate = COALESCE(%(rate)s, rate),
       updated_at = now(), finished_at = now()
 WHERE id = %(id)s AND state = 'running'
"""

GET_JOB_SQL = f"SELECT {_COLUMNS} FROM idxr.jobs j WHERE j.id = %(id)s"

LATEST_JOB_SQL = f"""
SELECT {_COLUMNS} FROM idxr.jobs j
 WHERE j.entity_kind = %(entity_kind)s AND j.job_type = %(job_type)s
 ORDER BY j.id DESC LIMIT 1
"""

LIST_JOBS_SQL = f"""
SELECT {_COLUMNS} FROM idxr.jobs j
 WHERE (%(entity_kind)s::text IS NULL OR j.entity_kind = %(entity_kind)s)
 ORDER BY j.id DESC LIMIT %(limit)s
"""

# ---- data ------------------------------------------------------------------------------------


class JobError(IdxrError):
    """A job cannot start or resume; the message names the kind and job at fault."""


def job_columns(counts: Counts) -> dict[str, int]:
    """``counts`` under the idxr.jobs column names (also the keys of a job's JSON and logs)."""
    return {column: getattr(counts, field) for column, field in COUNT_COLUMNS.items()}


def job_counts(**columns: int) -> Counts:
    """`Counts` from idxr.jobs column values (a job row, or increments spelled as columns)."""
    return Counts(**{COUNT_COLUMNS[column]: value for column, value in columns.items()})


@dataclass(frozen=True)
class Job:
    id: int
    job_type: str
    entity_kind: str
    state: str
    options: dict[str, Any]
    checkpoint: str | None
    total: int | None
    counts: Counts
    rate: float | None
    error: str | None
    host: str | None
    pid: int | None
    started_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    resumed_from: int | None
    resumed_by: int | None
    observed_at: datetime

    @property
    def percent(self) -> float | None:
        if not self.total:
            return 100.0 if self.total == 0 and self.state == SUCCEEDED else None
        return min(100.0, 100.0 * self.counts.entities / self.total)

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left at the current rate, for a running job with a known total."""
        if self.state != RUNNING or not self.rate or self.total is None:
            return None
        return max(0.0, (self.total - self.counts.entities) / self.rate)

    @property
    def duration_seconds(self) -> float:
        end = self.finished_at or self.observed_at
        return max(0.0, (end - self.started_at).total_seconds())

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready view: every column, the counts flattened, plus percent/eta/duration."""
        data: dict[str, Any] = {
            "id": self.id,
            "job_type": self.job_type,
            "entity_kind": self.entity_kind,
            "state": self.state,
            "checkpoint": self.checkpoint,
            "total": self.total,
            **job_columns(self.counts),
            "percent": None if self.percent is None else round(self.percent, 2),
            "rate": self.rate,
            "eta_seconds": None if self.eta_seconds is None else round(self.eta_seconds, 1),
            "duration_seconds": round(self.duration_seconds, 3),
            "error": self.error,
            "options": self.options,
            "host": self.host,
            "pid": self.pid,
            "started_at": self.started_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "resumed_from": self.resumed_from,
            "resumed_by": self.resumed_by,
        }
        return data


def _job(row: dict[str, Any]) -> Job:
    counts = job_counts(**{column: row[column] for column in COUNT_COLUMNS})
    return Job(
        id=row["id"],
        job_type=row["job_type"],
        entity_kind=row["entity_kind"],
        state=row["state"],
        options=row["options"] or {},
        checkpoint=row["checkpoint"],
        total=row["total"],
        counts=counts,
        rate=row["rate"],
        error=row["error"],
        host=row["host"],
        pid=row["pid"],
        started_at=row["started_at"],
        updated_at=row["updated_at"],
        finished_at=row["finished_at"],
        resumed_from=row["resumed_from"],
        resumed_by=row["resumed_by"],
        observed_at=row["observed_at"],
    )


# ---- operations ------------------------------------------------------------------------------


def try_lock_kind(conn: psycopg.Connection, kind: str) -> bool:
    """Take the session-level backfill lock for ``kind`` on ``conn`` (held until unlock/close)."""
    row = conn.execute(TRY_LOCK_SQL, {"ns": LOCK_NAMESPACE, "kind": kind}).fetchone()
    return bool(row and row[0])


def unlock_kind(conn: psycopg.Connection, kind: str) -> None:
    conn.execute(UNLOCK_SQL, {"ns": LOCK_NAMESPACE, "kind": kind})


def reconcile_abandoned(conn: psycopg.Connection, job_type: str = BACKFILL) -> list[int]:
    """Mark running jobs whose process is gone as interrupted; returns their ids."""
    rows = conn.execute(
        RECONCILE_ABANDONED_SQL, {"ns": LOCK_NAMESPACE, "job_type": job_type}
    ).fetchall()
    return [row[0] for row in rows]


def create_job(
    conn: psycopg.Connection,
    entity_kind: str,
    *,
    options: dict[str, Any],
    total: int | None,
    checkpoint: str | None = None,
    counts: Counts | None = None,
    resumed_from: int | None = None,
    job_type: str = BACKFILL,
) -> Job:
    params: dict[str, Any] = {
        "job_type": job_type,
        "entity_kind": entity_kind,
        "options": json.dumps(options),
        "checkpoint": checkpoint,
        "total": total,
        "resumed_from": resumed_from,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        **job_columns(counts or Counts()),
    }
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(CREATE_JOB_SQL, params).fetchone()
    assert row is not None
    return _job(row)


def advance_job(
    conn: psycopg.Connection,
    job_id: int,
    increments: Counts,
    *,
    checkpoint: str | None,
    rate: float | None,
) -> None:
    """Add ``increments`` and move the checkpoint; run it in the transaction that wrote the batch."""
    conn.execute(
        ADVANCE_JOB_SQL,
        {"id": job_id, "checkpoint": checkpoint, "rate": rate, **job_columns(increments)},
    )


def finish_job(
    conn: psycopg.Connection,
    job_id: int,
    state: str,
    *,
    error: str | None = None,
    rate: float | None = None,
) -> None:
    if state not in FINISHED_STATES:
        raise ValueError(f"not a final job state: {state!r}")
    conn.execute(FINISH_JOB_SQL, {"id": job_id, "state": state, "error": error, "rate": rate})


def get_job(conn: psycopg.Connection, job_id: int) -> Job | None:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(GET_JOB_SQL, {"id": job_id}).fetchone()
    return _job(row) if row else None


def latest_job(conn: psycopg.Connection, entity_kind: str, job_type: str = BACKFILL) -> Job | None:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            LATEST_JOB_SQL, {"entity_kind": entity_kind, "job_type": job_type}
        ).fetchone()
    return _job(row) if row else None


def resumable_job(conn: psycopg.Connection, entity_kind: str) -> Job:
    """The backfill ``--resume`` continues: the latest of the kind, if interrupted or failed."""
    job = latest_job(conn, entity_kind)
    if job is None:
        raise JobError(
            f"nothing to resume: no backfill of {entity_kind!r} has run yet "
            f"(start one with `idxr-pg backfill {entity_kind}`)"
        )
    if job.state not in RESUMABLE_STATES:
        raise JobError(
            f"nothing to resume: the latest backfill of {entity_kind!r} (job #{job.id}) "
            f"is {job.state} (start a new one with `idxr-pg backfill {entity_kind}`)"
        )
    return job


def list_jobs(
    conn: psycopg.Connection, *, entity_kind: str | None = None, limit: int = 20
) -> list[Job]:
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(LIST_JOBS_SQL, {"entity_kind": entity_kind, "limit": limit}).fetchall()
    return [_job(row) for row in rows]


# The kind's last succeeded jobs that embedded something: texts embedded and seconds taken.
_TEXT_RATE_SQL = """
SELECT count(*), COALESCE(sum(embedded), 0),
       COALESCE(sum(extract(epoch FROM finished_at - started_at)), 0)::float8
  FROM (SELECT embedded, started_at, finished_at FROM idxr.jobs
         WHERE entity_kind = %(kind)s AND state = 'succeeded' AND embedded > 0
           AND finished_at IS NOT NULL
         ORDER BY id DESC LIMIT %(limit)s) AS recent
"""


@dataclass(frozen=True)
class TextRate:
    """Texts embedded per second over some finished jobs (their whole run, reads and writes
    included)."""

    jobs: int
    texts: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.texts / self.seconds if self.seconds > 0 else float(self.texts)


def recent_text_rate(conn: psycopg.Connection, kind: str, limit: int = 5) -> TextRate | None:
    """Over the kind's last ``limit`` succeeded jobs that embedded texts (None: no such job)."""
    row = conn.execute(_TEXT_RATE_SQL, {"kind": kind, "limit": limit}).fetchone()
    if row is None or not row[0]:
        return None
    return TextRate(int(row[0]), int(row[1]), float(row[2]))
