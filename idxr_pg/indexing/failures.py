"""Failed entities: retry with exponential backoff, then park them as readable YAML dead letters.

`record_failure` is the one failure recorder for the worker and the backfill; call it inside the
short write transaction, while the entity's lease is still held. `list_dead_letters`,
`get_dead_letter` and `retry_dead_letters` back `idxr-pg errors list|show|retry`.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
import yaml

from idxr_pg.db import queue

__all__ = [
    "DOCUMENT_LIMIT",
    "Backoff",
    "DeadLetter",
    "FailureOutcome",
    "build_payload",
    "dump_yaml",
    "get_dead_letter",
    "list_dead_letters",
    "record_failure",
    "retry_dead_letters",
]

DOCUMENT_LIMIT = 16_000
"""Characters of the offending document (as JSON) kept in a payload; longer ones are cut."""
TRACEBACK_LIMIT = 8_000
MESSAGE_LIMIT = 4_000


@dataclass(frozen=True)
class Backoff:
    """Delay before retry number ``attempt`` (1-based): base * 2^(attempt-1), at most ``max``."""

    base_seconds: float = 2.0
    max_seconds: float = 600.0

    def delay(self, attempt: int) -> float:
        if attempt < 1:
            return 0.0
        # Cap the exponent so huge attempt counts cannot overflow a float.
        return min(self.max_seconds, self.base_seconds * 2.0 ** min(attempt - 1, 60))


@dataclass(frozen=True)
class FailureOutcome:
    """What `record_failure` did: ``retry`` (with the attempt number and delay) or ``dead``."""

    action: str
    attempts: int
    delay: float | None = None
    dead_letter_id: int | None = None


# --------------------------------------------------------------------------- payload


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings as literal blocks, so tracebacks read as they printed."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _represent_str)


def dump_yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_BlockDumper, sort_keys=False, allow_unicode=True, width=100)


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n... ({len(text) - limit} more characters cut)"


def _error_message(exc: BaseException) -> str:
    return str(exc).strip() or type(exc).__name__


def _error_type(exc: BaseException) -> str:
    cls = type(exc)
    return cls.__name__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _document_fields(document: Any, limit: int) -> dict[str, Any]:
    if document is None:
        return {"document": None}
    text = json.dumps(document, default=str, ensure_ascii=False, sort_keys=False)
    if len(text) <= limit:
        return {"document": json.loads(text)}
    return {
        "document_truncated": True,
        "document_size": len(text),
        "document_excerpt": text[:limit],
    }


def build_payload(
    *,
    entity_kind: str,
    entity_id: str,
    stage: str,
    exc: BaseException,
    attempts: int,
    first_failed_at: datetime,
    last_failed_at: datetime,
    document: Any = None,
    document_limit: int = DOCUMENT_LIMIT,
) -> str:
    """The YAML text stored in ``idxr.dead_letters.payload``."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    data: dict[str, Any] = {
        "entity_kind": entity_kind,
        "entity_id": entity_id,
        "stage": stage,
        "error_type": _error_type(exc),
        "error_message": _cut(_error_message(exc), MESSAGE_LIMIT),
        "attempts": attempts,
        "first_failed_at": first_failed_at.isoformat(),
        "last_failed_at": last_failed_at.isoformat(),
        "traceback": _cut(tb.rstrip(), TRACEBACK_LIMIT),
    }
    data.update(_document_fields(document, document_limit))
    return dump_yaml(data)


# --------------------------------------------------------------------------- recording


def record_failure(
    conn: psycopg.Connection,
    kind: str,
    entity_id: str,
    stage: str,
    exc: BaseException,
    document: Any = None,
    *,
    max_attempts: int,
    backoff: Backoff,
    queue_ids: Sequence[int] | None = None,
    source_table: str | None = None,
) -> FailureOutcome:
    """Count one failed attempt at indexing an entity; run it in the caller's write transaction.

    The attempt number is one more than the highest ``attempts`` among the tracked queue rows:
    ``queue_ids`` (the rows a worker claimed for the entity) or, when None (the backfill), the
    entity's queue rows already in retry. Below ``max_attempts`` those rows are pushed back by
    ``backoff`` (a retry row is inserted when there are none, so the worker retries it); at
    ``max_attempts`` the rows are deleted and a dead letter with a YAML payload is written.
    """
    now = datetime.now(UTC)
    rows = queue.lock_failure_rows(conn, kind, entity_id, queue_ids)
    attempts = rows.attempts + 1
    first = rows.first_failed_at or now
    message = _cut(f"{stage}: {_error_type(exc)}: {_error_message(exc)}", MESSAGE_LIMIT)
    if attempts < max_attempts:
        delay = backoff.delay(attempts)
        queue.schedule_retry(
            conn,
            kind,
            entity_id,
            rows,
            attempts=attempts,
            delay=delay,
            first_failed_at=first,
            error=message,
            source_table=source_table,
        )
        return FailureOutcome("retry", attempts, delay=delay)
    payload = build_payload(
        entity_kind=kind,
        entity_id=entity_id,
        stage=stage,
        exc=exc,
        attempts=attempts,
        first_failed_at=first,
        last_failed_at=now,
        document=document,
    )
    dead_id = queue.insert_dead_letter(
        conn,
        kind=kind,
        entity_id=entity_id,
        stage=stage,
        error_type=_error_type(exc),
        error_message=_cut(_error_message(exc), MESSAGE_LIMIT),
        attempts=attempts,
        first_failed_at=first,
        last_failed_at=now,
        payload=payload,
    )
    queue.delete_rows(conn, rows.ids)
    return FailureOutcome("dead", attempts, dead_letter_id=dead_id)


# --------------------------------------------------------------------------- operator side


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
