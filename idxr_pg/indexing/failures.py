"""Failed entities: retry with exponential backoff, then park them as readable YAML dead letters.

`record_failures` (one batch's failures, logged) and `record_failure` (one entity) are the
failure recorder of the worker and the backfill; call them inside the short write transaction,
while the entity's lease is still held. The dead letters' own SQL (and `idxr-pg errors
list|show|retry`'s functions) live in `idxr_pg.db.dead_letters`.
"""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
import yaml

from idxr_pg.db import queue
from idxr_pg.db.dead_letters import insert_dead_letter

__all__ = [
    "DOCUMENT_LIMIT",
    "STAGES",
    "Backoff",
    "EntityFailure",
    "FailureOutcome",
    "build_payload",
    "dump_yaml",
    "record_failure",
    "record_failures",
]

log = logging.getLogger(__name__)

STAGES = ("load", "validate", "flatten", "embed", "write")
"""Where in the pipeline an entity can fail."""

DOCUMENT_LIMIT = 16_000
"""Characters of the offending document (as JSON) kept in a payload; longer ones are cut."""
DOCUMENT_DEPTH_LIMIT = 32
"""Nesting levels of a document kept as YAML structure; a deeper one is kept as JSON text
(PyYAML recurses per level and fails from about 320 levels)."""
TRACEBACK_LIMIT = 8_000
MESSAGE_LIMIT = 4_000
PAYLOAD_LIMIT = 64_000
"""Characters of a whole payload at most (the document is cut to an excerpt to fit)."""


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


@dataclass
class EntityFailure:
    """One entity that could not be indexed in a batch; nothing of it was written."""

    entity_id: str
    stage: str
    exception: BaseException
    document: Any = None

    def __str__(self) -> str:
        return f"{self.entity_id} ({self.stage}): {type(self.exception).__name__}: {self.exception}"


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
    try:
        text = str(exc).strip()
    except Exception:  # an exception whose __str__ fails
        text = ""
    # PostgreSQL text cannot hold NUL: show it instead of failing the dead letter's insert.
    return text.replace("\x00", "\\x00") or type(exc).__name__


def _error_type(exc: BaseException) -> str:
    cls = type(exc)
    return cls.__name__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _depth_exceeds(document: Any, limit: int) -> bool:
    """Whether ``document`` nests deeper than ``limit`` levels (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(document, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list | tuple):
            children = value
        else:
            continue
        if depth >= limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


class _Literal(str):
    """A piece of JSON text already encoded (on `_json_text_iteratively`'s stack)."""


def _json_text_iteratively(document: Any, budget: int) -> str:
    """JSON text of ``document`` without recursion, cut after about ``budget`` characters
    (for documents too deep for `json.dumps`, or circular ones)."""
    out: list[str] = []
    size = 0
    stack: list[Any] = [document]
    while stack and size <= budget:
        item = stack.pop()
        if isinstance(item, _Literal):
            piece = str(item)
        elif isinstance(item, dict):
            pieces: list[Any] = [_Literal("{")]
            for i, (key, value) in enumerate(item.items()):
                sep = ", " if i else ""
                pieces += [_Literal(sep + json.dumps(str(key), ensure_ascii=False) + ": "), value]
            stack.extend(reversed([*pieces, _Literal("}")]))
            continue
        elif isinstance(item, list | tuple):
            pieces = [_Literal("[")]
            for i, value in enumerate(item):
                pieces += [_Literal(", "), value] if i else [value]
            stack.extend(reversed([*pieces, _Literal("]")]))
            continue
        else:
            piece = json.dumps(item, default=str, ensure_ascii=False)
        out.append(piece)
        size += len(piece)
    return "".join(out)


def _document_text(document: Any) -> str:
    try:
        return json.dumps(document, default=str, ensure_ascii=False, sort_keys=False)
    except (RecursionError, ValueError, TypeError):  # too deep for json, or circular
        return _json_text_iteratively(document, DOCUMENT_LIMIT * 2)


def _document_fields(document: Any, limit: int) -> dict[str, Any]:
    """The document as YAML structure when small and shallow; else an excerpt of its JSON."""
    if document is None:
        return {"document": None}
    too_deep = _depth_exceeds(document, DOCUMENT_DEPTH_LIMIT)
    text = _document_text(document)
    if len(text) <= limit and not too_deep:
        return {"document": json.loads(text)}
    fields: dict[str, Any] = {"document_truncated": True, "document_size": len(text)}
    if too_deep:
        fields["document_depth_over"] = DOCUMENT_DEPTH_LIMIT
    fields["document_excerpt"] = text[:limit]
    return fields


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
    try:
        payload = dump_yaml({**data, **_document_fields(document, document_limit)})
    except Exception:  # always writable: fall back to the document's JSON text, cut
        payload = None
    if payload is None or len(payload) > PAYLOAD_LIMIT:
        text = _document_text(document)
        data.update(document_truncated=True, document_size=len(text))
        data["document_excerpt"] = text[: document_limit // 4]
        payload = dump_yaml(data)
    return payload


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
    dead_id = insert_dead_letter(
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


def record_failures(
    conn: psycopg.Connection,
    kind: str,
    failures: Sequence[EntityFailure],
    *,
    max_attempts: int,
    backoff: Backoff,
    queue_ids: Mapping[str, Sequence[int]] | None = None,
    source_table: str | None = None,
) -> list[FailureOutcome]:
    """`record_failure` for each of a batch's failures, each logged; in the write transaction.

    ``queue_ids``: the queue rows a worker claimed, per entity (None for the backfill, whose
    entities have no claimed rows: see `record_failure`).
    """
    outcomes = []
    for failure in failures:
        outcome = record_failure(
            conn,
            kind,
            failure.entity_id,
            failure.stage,
            failure.exception,
            failure.document,
            max_attempts=max_attempts,
            backoff=backoff,
            queue_ids=None if queue_ids is None else queue_ids.get(failure.entity_id, []),
            source_table=source_table,
        )
        extra = {"entity_kind": kind, "entity_id": failure.entity_id}
        if outcome.action == "dead":
            log.error(
                "entity %s:%s dead-lettered after %d attempts (dead letter %s): %s",
                kind,
                failure.entity_id,
                outcome.attempts,
                outcome.dead_letter_id,
                failure,
                extra=extra,
            )
        else:
            log.warning(
                "entity %s:%s attempt %d failed; retrying in %.1f s: %s",
                kind,
                failure.entity_id,
                outcome.attempts,
                outcome.delay or 0.0,
                failure,
                extra=extra,
            )
        outcomes.append(outcome)
    return outcomes
