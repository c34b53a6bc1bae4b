"""The runtime SQL of ``idxr.workers``: a worker joins, beats, and leaves (``stopped``)."""

from __future__ import annotations

from collections.abc import Sequence

import psycopg

__all__ = ["worker_heartbeat", "worker_started"]

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
    """Insert (or restart) the worker's row as ``running``."""
    conn.execute(
        _WORKER_START_SQL, {"worker_id": worker_id, "host": host, "pid": pid, "kinds": list(kinds)}
    )


def worker_heartbeat(
    conn: psycopg.Connection, worker_id: str, processed: int, state: str = "running"
) -> None:
    """Stamp the worker's heartbeat with its entity count (``state='stopped'`` when leaving)."""
    conn.execute(_WORKER_BEAT_SQL, {"worker_id": worker_id, "processed": processed, "state": state})
