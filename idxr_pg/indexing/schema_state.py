"""Whether a kind's index still matches its Pydantic model: the one owner of that decision.

The index of a kind was built with some model: its fingerprint and shape are recorded in
``idxr.entity_kinds`` (`idxr_pg.db.kinds.record_schema`). When the model (or the kind's
``exclude_paths``) changes, the rows already indexed keep the old shape until the kind is
re-indexed: the kind is *stale*, and `detect` says what changed (`idxr_pg.records.shape`).

- `reconcile` runs at registration (every worker and backfill start): a kind seen for the
  first time, or whose index is empty, gets the current model recorded (nothing is stale);
  otherwise a change is marked in ``schema_change`` (shown by ``idxr.status``) and returned.
- `detect` is the read-only check (`idxr-pg status`, `plan`).
- `record_current` runs when a backfill or reindex of the kind finished with no failed
  entity: the index now matches the model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import psycopg

from idxr_pg.db import kinds as kinds_db
from idxr_pg.records.shape import ShapeChange, diff_shapes, model_shape
from idxr_pg.records.traverse import schema_fingerprint

if TYPE_CHECKING:  # registry calls reconcile: no import at run time
    from idxr_pg.indexing.registry import RegisteredKind

__all__ = ["current_schema", "detect", "mark", "reconcile", "record_current"]


def current_schema(kind: RegisteredKind) -> tuple[str, dict[str, Any]]:
    """The fingerprint and recorded form of the shape of ``kind``'s model and config."""
    shape = {
        "fields": model_shape(kind.model, kind.name),
        "exclude_paths": list(kind.config.exclude_paths),
    }
    return schema_fingerprint(kind.model), shape


def _change(recorded: kinds_db.RecordedSchema, kind: RegisteredKind) -> ShapeChange:
    fingerprint, shape = current_schema(kind)
    if recorded.shape is None:
        return ShapeChange() if recorded.fingerprint == fingerprint else ShapeChange(unknown=True)
    return diff_shapes(
        recorded.shape.get("fields", {}),
        shape["fields"],
        old_excluded=recorded.shape.get("exclude_paths", ()),
        new_excluded=shape["exclude_paths"],
    )


def detect(conn: psycopg.Connection, kind: RegisteredKind) -> ShapeChange | None:
    """What changed in ``kind``'s model since its index was built (None: nothing recorded
    yet, nothing indexed, or no change). Reads only."""
    recorded = kinds_db.recorded_schema(conn, kind.name)
    if recorded is None or (recorded.fingerprint is None and recorded.shape is None):
        return None
    if not kinds_db.kind_has_rows(conn, kind.name):
        return None  # nothing of the old shape is indexed (the next registration records it)
    return _change(recorded, kind) or None


def reconcile(conn: psycopg.Connection, kind: RegisteredKind) -> ShapeChange | None:
    """At registration (the kind's row exists): record the model when nothing is indexed yet
    or nothing changed in its shape, else mark and return the change."""
    recorded = kinds_db.recorded_schema(conn, kind.name)
    fingerprint, shape = current_schema(kind)
    fresh = recorded is None or (recorded.fingerprint is None and recorded.shape is None)
    if fresh or not kinds_db.kind_has_rows(conn, kind.name):
        kinds_db.record_schema(conn, kind.name, fingerprint, shape)
        return None
    assert recorded is not None
    change = _change(recorded, kind)
    if not change:  # same flattening (e.g. only a description or a validator changed)
        kinds_db.record_schema(conn, kind.name, fingerprint, shape)
        return None
    kinds_db.mark_schema_change(conn, kind.name, change.as_dict())
    return change


def mark(conn: psycopg.Connection, kind: RegisteredKind, change: ShapeChange | None) -> None:
    """Store what `detect` found, so that ``idxr.status`` shows it to SQL users too."""
    kinds_db.mark_schema_change(conn, kind.name, change.as_dict() if change else None)


def record_current(conn: psycopg.Connection, kind: RegisteredKind) -> bool:
    """The index of ``kind`` now matches its model: record it (the kind is no longer stale)."""
    fingerprint, shape = current_schema(kind)
    return kinds_db.record_schema(conn, kind.name, fingerprint, shape)
