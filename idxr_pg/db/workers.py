"""The runtime SQL of ``idxr.workers``: a worker joins, beats, and leaves (``stopped``).

A worker that dies without leaving (SIGKILL, a lost host) stays ``running`` until someone
notices that its heartbeat is too old: `mark_lost` (run by ``idxr-pg status`` and by every
worker that starts) sets such rows to ``lost``; a worker that beats again is ``running``.
"""

from __future__ import annotations

from collections.abc import Sequence

import psycopg

__all__ = ["LOST", "mark_lost", "worker_heartbeat", "worker_started"]

LOST = "lost"

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


_MARK_LOST_SQL = """
UPDATE idxr.workers SET state = 'lost'
 WHERE state = 'running' AND heartbeat_at < now() - make_interval(secs => %(older_than)s)
RETURNING worker_id
"""


def mark_lost(conn: psycopg.Connection, older_than_seconds: float) -> list[str]:
    """Mark ``running`` workers whose last heartbeat is older than ``older_than_seconds`` as
    ``lost`` (their process is gone); returns their ids."""
    rows = conn.execute(_MARK_LOST_SQL, {"older_than": older_than_seconds}).fetchall()
    return [row[0] for row in rows]


def worker_started(
    conn: psycopg.Connection, worker_id: str, host: str, pid: int, kinds: Sequence[str]
) -> None:
    """Insert (or restart) the worker's row as ``running``."""
    conn.execute(
        _WORKER_START_SQL, {"worker_id": worker_id, "host": host, "pid": pid, "kinds": list(kinds)}
    )


def worker_heartbeat(
    conn: psycopg.Connection, worker_id: str, processed: int, state: str = "running"
) -> None:
    """Stamp the worker's heartbeat with its entity count (``state='stopped'`` when leaving)."""
    conn.execute(_WORKER_BEAT_SQL, {"worker_id": worker_id, "processed": processed, "state": state})
