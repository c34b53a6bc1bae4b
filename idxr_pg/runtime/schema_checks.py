"""Is each kind's index in step with its config? The model (stale shape) and the capture
triggers (config drift), checked together for `idxr-pg status` and at worker start."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import psycopg

from idxr_pg.capture.drift import FIX, Drift, config_drift
from idxr_pg.capture.triggers import CaptureError
from idxr_pg.config import EntityConfig
from idxr_pg.indexing import schema_state
from idxr_pg.indexing.registry import RegisteredKind, RegistryError, resolve_kind
from idxr_pg.records.shape import ShapeChange

__all__ = ["KindCheck", "check_kinds", "log_drift"]

log = logging.getLogger(__name__)


@dataclass
class KindCheck:
    """One kind: what changed in its model (None: nothing), why it could not be checked, and
    how its capture config differs from the installed triggers."""

    change: ShapeChange | None = None
    problem: str | None = None  # e.g. the model cannot be imported
    drift: list[Drift] = field(default_factory=list)


def check_kinds(
    conn: psycopg.Connection,
    entities: Iterable[EntityConfig],
    kinds: dict[str, RegisteredKind] | None = None,
    *,
    store: bool = True,
) -> dict[str, KindCheck]:
    """Per entity: detect a changed model (and store it, so that ``idxr.status`` shows it,
    unless ``store`` is false: a standby cannot be written) and the config drift of its
    triggers. ``kinds``: those already resolved (worker)."""
    entities = list(entities)
    checks = {entity.name: KindCheck() for entity in entities}
    for entity in entities:
        check = checks[entity.name]
        try:
            kind = (kinds or {}).get(entity.name) or resolve_kind(conn, entity)
            with conn.transaction():
                check.change = schema_state.detect(conn, kind)
                if store:
                    schema_state.mark(conn, kind, check.change)
        except RegistryError as exc:
            check.problem = str(exc)
    try:
        for drift in config_drift(conn, entities):
            checks[drift.entity_kind].drift.append(drift)
    except CaptureError as exc:  # the idxr schema is missing
        for check in checks.values():
            check.problem = check.problem or str(exc)
    return checks


def log_drift(drifts: Iterable[Drift]) -> None:
    """One warning per difference, each naming what to run."""
    for drift in drifts:
        log.warning(
            "capture config drift: %s; %s",
            drift.message(),
            FIX,
            extra={"entity_kind": drift.entity_kind, "table": drift.table},
        )
