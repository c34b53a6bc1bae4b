"""The runtime SQL of ``idxr.leases``: who is processing which entity, until when.

A lease is exclusive per (kind, entity) by the primary key. The caller that picks the
entities leases them (the worker's `idxr_pg.db.queue.claim`, the backfill for its key
batches) and hands the `Leases` to `Pipeline.index`, which locks the ones still held in its
write transaction (`lock_held`, ``FOR UPDATE``: a lease lost meanwhile means another owner
does the work) and releases them there. An expired lease (a crashed owner) is taken over;
an owner's own leases are renewed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import psycopg

__all__ = [
    "Leases",
    "acquire",
    "acquire_ids",
    "extend",
    "lock_held",
    "release",
    "release_all",
]

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

_HELD_SQL = """
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


@dataclass(frozen=True)
class Leases:
    """The outcome of leasing some entities of one kind to ``owner``.

    ``requested`` keeps the caller's order (deduplicated); ``held`` are those now leased
    to ``owner``; the rest are leased by someone else.
    """

    kind: str
    owner: str
    requested: tuple[str, ...]
    held: frozenset[str]

    @classmethod
    def of(cls, kind: str, owner: str, requested: Sequence[str], held: Sequence[str]) -> Leases:
        ids = tuple(dict.fromkeys(str(i) for i in requested))
        return cls(kind, owner, ids, frozenset(held) & frozenset(ids))

    @property
    def ids(self) -> list[str]:
        """The held ids, in request order."""
        return [i for i in self.requested if i in self.held]

    @property
    def refused(self) -> list[str]:
        """The requested ids leased by another owner, in request order."""
        return [i for i in self.requested if i not in self.held]


def acquire_ids(
    conn: psycopg.Connection, kind: str, ids: Sequence[str], owner: str, seconds: float
) -> list[str]:
    """In the caller's transaction: lease ``ids`` to ``owner``; returns the ids it now holds."""
    if not ids:
        return []
    params = {"kind": kind, "ids": list(ids), "owner": owner, "seconds": float(seconds)}
    return [row[0] for row in conn.execute(_ACQUIRE_SQL, params).fetchall()]


def acquire(
    conn: psycopg.Connection, kind: str, ids: Sequence[str], owner: str, seconds: float
) -> Leases:
    """Lease the ids to ``owner`` in one short transaction (renewing its own leases)."""
    requested = list(dict.fromkeys(str(i) for i in ids))
    if not requested:
        return Leases.of(kind, owner, [], [])
    with conn.transaction():
        held = acquire_ids(conn, kind, requested, owner, seconds)
    return Leases.of(kind, owner, requested, held)


def lock_held(conn: psycopg.Connection, kind: str, ids: Sequence[str], owner: str) -> set[str]:
    """Inside the caller's write transaction: lock and return the ids still leased to owner."""
    if not ids:
        return set()
    params = {"kind": kind, "ids": list(ids), "owner": owner}
    return {row[0] for row in conn.execute(_HELD_SQL, params).fetchall()}


def release(conn: psycopg.Connection, kind: str, ids: Sequence[str], owner: str) -> int:
    """Drop owner's leases on these ids of ``kind``."""
    if not ids:
        return 0
    return conn.execute(_RELEASE_SQL, {"kind": kind, "ids": list(ids), "owner": owner}).rowcount


def release_all(conn: psycopg.Connection, owner: str) -> int:
    """Drop every lease of ``owner`` (a worker shutting down)."""
    return conn.execute(_RELEASE_ALL_SQL, {"owner": owner}).rowcount


def extend(conn: psycopg.Connection, owner: str, seconds: float) -> int:
    """Push all of owner's leases ``seconds`` into the future (a live worker keeps its leases)."""
    return conn.execute(_EXTEND_SQL, {"owner": owner, "seconds": float(seconds)}).rowcount
