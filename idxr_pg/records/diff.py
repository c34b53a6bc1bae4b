"""Change detection: compare an entity's current records with its stored content hashes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from idxr_pg.records.record import FieldRecord

__all__ = ["Diff", "diff"]


@dataclass(frozen=True)
class Diff:
    """What to write for one entity.

    ``upserts``: records that are new or whose hash changed (all of them under ``force``).
    ``unchanged``: records whose stored hash matches. ``deletes``: stored paths that are no
    longer present, sorted.
    """

    upserts: list[FieldRecord]
    unchanged: list[FieldRecord]
    deletes: list[str]

    @property
    def is_noop(self) -> bool:
        """True when nothing needs writing (no upserts, no deletes)."""
        return not self.upserts and not self.deletes


def diff(current: Sequence[FieldRecord], stored: Mapping[str, str], *, force: bool = False) -> Diff:
    """Split ``current`` records against ``stored`` (path → content_hash).

    Raises `ValueError` if ``current`` holds the same path twice: that would make the
    stored state depend on write order.
    """
    upserts: list[FieldRecord] = []
    unchanged: list[FieldRecord] = []
    seen: set[str] = set()
    for record in current:
        if record.path in seen:
            raise ValueError(f"duplicate path in current records: {record.path!r}")
        seen.add(record.path)
        if not force and stored.get(record.path) == record.content_hash:
            unchanged.append(record)
        else:
            upserts.append(record)
    deletes = sorted(path for path in stored if path not in seen)
    return Diff(upserts, unchanged, deletes)
