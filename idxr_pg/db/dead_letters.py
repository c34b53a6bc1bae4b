"""The runtime SQL of ``idxr.dead_letters``: park a failed entity, list, show and retry them.

`insert_dead_letter` is called by `idxr_pg.indexing.failures.record_failure` inside the
write transaction; `list_dead_letters`, `get_dead_letter` and `retry_dead_letters` back
`idxr-pg errors list|show|retry`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from idxr_pg.db import queue

__all__ = [
    "DeadLetter",
    "get_dead_letter",
    "insert_dead_letter",
    "list_dead_letters",
    "retry_dead_letters",
]


@dataclass(frozen=True)
class DeadLetter:
    id: int
    entity_kind: str
    entity_id: str
    stage: str
    error_type: str
    error_message: str
    attempts: int
    first_failed_at: datetime
    last_failed_at: datetime
    created_at: datetime
    retried_at: datetime | None
    payload: str

    def summary(self) -> Mapping[str, Any]:
        """Everything but the payload, JSON-friendly."""
        return {
            "id": self.id,
            "entity_kind": self.entity_kind,
            "entity_id": self.entity_id,
            "stage": self.stage,
            "error_type": self.error_type,
            "error_message": self.error_message,
            "attempts": self.attempts,
            "first_failed_at": self.first_failed_at.isoformat(),
            "last_failed_at": self.last_failed_at.isoformat(),
            "created_at": self.created_at.isoformat(),
            "retried_at": self.retried_at.isoformat() if self.retried_at else None,
        }


_INSERT_SQL = """
INSERT INTO idxr.dead_letters (entity_kind, entity_id, stage, error_type, error_message,
                               attempts, first_failed_at, last_failed_at, payload)
VALUES (%(kind)s, %(entity_id)s, %(stage)s, %(error_type)s, %(error_message)s, %(attempts)s,
        %(first_failed_at)s, %(last_failed_at)s, %(payload)s)
RETURNING id
"""
_COLUMNS = (
    "id, entity_kind, entity_id, stage, error_type, error_message, attempts, first_failed_at, "
    "last_failed_at, created_at, retried_at, payload"
)
_LIST_SQL = f"""
SELECT {_COLUMNS} FROM idxr.dead_letters
WHERE (%(kind)s::text IS NULL OR entity_kind = %(kind)s)
  AND (%(all)s OR retried_at IS NULL)
ORDER BY id DESC
LIMIT %(limit)s
"""
_GET_SQL = f"SELECT {_COLUMNS} FROM idxr.dead_letters WHERE id = %s"
_PENDING_SQL = f"""
SELECT {_COLUMNS} FROM idxr.dead_letters
WHERE retried_at IS NULL AND (%(kind)s::text IS NULL OR entity_kind = %(kind)s)
ORDER BY id
FOR UPDATE
"""
_BY_IDS_SQL = f"""
SELECT {_COLUMNS} FROM idxr.dead_letters WHERE id = ANY(%(ids)s::bigint[]) ORDER BY id FOR UPDATE
"""
_MARK_RETRIED_SQL = "UPDATE idxr.dead_letters SET retried_at = now() WHERE id = ANY(%s::bigint[])"


def insert_dead_letter(conn: psycopg.Connection, **values: object) -> int:
    """Insert one dead letter (columns as in idxr.dead_letters); returns its id."""
    return conn.execute(_INSERT_SQL, values).fetchone()[0]


def list_dead_letters(
    conn: psycopg.Connection,
    *,
    kind: str | None = None,
    include_retried: bool = False,
    limit: int = 100,
) -> list[DeadLetter]:
    """Newest first; by default only those not yet retried."""
    rows = conn.execute(
        _LIST_SQL, {"kind": kind, "all": include_retried, "limit": limit}
    ).fetchall()
    return [DeadLetter(*row) for row in rows]


def get_dead_letter(conn: psycopg.Connection, dead_letter_id: int) -> DeadLetter | None:
    row = conn.execute(_GET_SQL, [dead_letter_id]).fetchone()
    return DeadLetter(*row) if row else None


def retry_dead_letters(
    conn: psycopg.Connection,
    ids: Sequence[int] | None = None,
    *,
    kind: str | None = None,
) -> list[DeadLetter]:
    """Re-queue the given dead letters (None: all not yet retried, optionally of one kind).

    Each entity gets a fresh queue row (attempts start again) and a NOTIFY; the dead letters
    are kept, marked ``retried_at``. Returns the dead letters re-queued; one transaction.
    """
    with conn.transaction():
        if ids is None:
            letters = [DeadLetter(*r) for r in conn.execute(_PENDING_SQL, {"kind": kind})]
        else:
            letters = [DeadLetter(*r) for r in conn.execute(_BY_IDS_SQL, {"ids": list(ids)})]
        by_kind: dict[str, list[str]] = {}
        for letter in letters:
            by_kind.setdefault(letter.entity_kind, []).append(letter.entity_id)
        for entity_kind, entity_ids in by_kind.items():
            queue.enqueue(conn, entity_kind, list(dict.fromkeys(entity_ids)), operation="retry")
        conn.execute(_MARK_RETRIED_SQL, [[letter.id for letter in letters]])
    return letters
