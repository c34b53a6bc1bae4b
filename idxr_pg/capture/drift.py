"""Config drift: what the config asks the capture triggers to read, against what is installed.

`idxr-pg triggers install` records, per capture function, the tables and readers (key, columns)
it was built from (``idxr.capture_triggers.readers``). When the config's tables, keys, watch
entries or ``columns`` change, the triggers keep capturing the old way until the DBA installs
them again: `config_drift` names each difference, for worker start, `idxr-pg status` and
`idxr-pg triggers list`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from idxr_pg.capture.triggers import CaptureError, capture_targets
from idxr_pg.config import EntityConfig
from idxr_pg.db import capture as bookkeeping
from idxr_pg.db import catalog

__all__ = ["FIX", "Drift", "compare_readers", "config_drift"]

FIX = "run `idxr-pg triggers install`"


@dataclass(frozen=True)
class Drift:
    """One difference between the config and the installed capture of a kind."""

    entity_kind: str
    table: str | None
    what: str

    def message(self) -> str:
        where = f"entity {self.entity_kind!r}" + (f", table {self.table}" if self.table else "")
        return f"{where}: {self.what}"

    def as_dict(self) -> dict[str, Any]:
        return {"entity_kind": self.entity_kind, "table": self.table, "what": self.what}


def _columns(value: Sequence[str] | None) -> str:
    return "all columns" if value is None else "[" + ", ".join(value) + "]"


def compare_readers(
    installed: Sequence[Mapping[str, Any]], configured: Sequence[Mapping[str, Any]]
) -> list[str]:
    """What differs between two reader lists of one table (by origin: ``table``, ``watch[i]``)."""
    have = {r["origin"]: r for r in installed}
    want = {r["origin"]: r for r in configured}
    out = []
    for origin in sorted(have.keys() | want.keys()):
        old, new = have.get(origin), want.get(origin)
        if old is None:
            out.append(f"{origin} (key {new['key']!r}) is configured but not installed")  # type: ignore[index]
            continue
        if new is None:
            out.append(f"{origin} (key {old['key']!r}) is installed but no longer configured")
            continue
        if old["key"] != new["key"]:
            out.append(f"{origin}: key {old['key']!r} installed, {new['key']!r} configured")
        old_cols, new_cols = old.get("columns"), new.get("columns")
        if (sorted(old_cols) if old_cols else None) != (sorted(new_cols) if new_cols else None):
            detail = ""
            if old_cols is not None and new_cols is not None:
                added = sorted(set(new_cols) - set(old_cols))
                dropped = sorted(set(old_cols) - set(new_cols))
                detail = (
                    " (" + ", ".join([*(f"+{c}" for c in added), *(f"-{c}" for c in dropped)]) + ")"
                )
            out.append(
                f"{origin}: columns {_columns(old_cols)} installed, {_columns(new_cols)} "
                f"configured{detail}"
            )
    return out


def _configured(
    conn: psycopg.Connection, entity: EntityConfig, drifts: list[Drift]
) -> dict[str, list[dict[str, Any]]]:
    """The kind's readers per resolved table, as an install would record them."""
    try:
        targets = capture_targets(entity)
    except CaptureError as exc:
        drifts.append(Drift(entity.name, None, str(exc)))
        return {}
    wanted: dict[str, list[dict[str, Any]]] = {}
    for target in targets:
        try:
            table = catalog.resolve_table(conn, target.table).qualified
        except catalog.UnknownTableError:
            drifts.append(Drift(entity.name, target.table, "configured table does not exist"))
            continue
        wanted.setdefault(table, []).extend(
            {"origin": r.origin, "key": r.key, "columns": list(r.columns) if r.columns else None}
            for r in target.readers
        )
    return wanted


def config_drift(conn: psycopg.Connection, entities: Iterable[EntityConfig]) -> list[Drift]:
    """Every difference between ``entities``' capture config and the installed triggers."""
    entities = list(entities)
    installed: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for kind, table, readers in bookkeeping.installed_readers(conn, [e.name for e in entities]):
        installed.setdefault(kind, {})[table] = readers
    drifts: list[Drift] = []
    for entity in entities:
        with conn.transaction():
            wanted = _configured(conn, entity, drifts)
        have = installed.get(entity.name)
        if not have:
            drifts.append(Drift(entity.name, None, "no capture triggers installed"))
            continue
        for table in sorted(wanted.keys() - have.keys()):
            drifts.append(Drift(entity.name, table, "watched in the config but has no triggers"))
        for table in sorted(have.keys() - wanted.keys()):
            drifts.append(Drift(entity.name, table, "has triggers but is no longer in the config"))
        for table in sorted(wanted.keys() & have.keys()):
            for what in compare_readers(have[table], wanted[table]):
                drifts.append(Drift(entity.name, table, what))
    return drifts
