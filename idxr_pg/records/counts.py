"""`Counts`: the one tally of indexing work, shared by a batch, a worker's totals and a job.

Pure values, no I/O. A pipeline batch produces one (``batches=1``); a worker adds them up
(``totals = totals + result.counts``); a backfill job row stores a subset of the fields under
its own column names, mapped once in `idxr_pg.db.jobs`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

__all__ = ["Counts"]


@dataclass(frozen=True)
class Counts:
    """What some indexing work did. Entity counts add up to ``entities``:
    indexed + unchanged + deleted + skipped + failed."""

    batches: int = 0
    entities: int = 0
    indexed: int = 0  # entities with at least one row written or removed
    unchanged: int = 0  # entities that needed no write at all
    deleted: int = 0  # entities whose document no longer exists (their rows removed)
    skipped: int = 0  # leased by another owner, before or during processing
    failed: int = 0  # handed to the retry queue / dead letters
    dead_lettered: int = 0  # of the failed, those parked as dead letters
    texts_embedded: int = 0  # distinct texts the model embedded (cache misses)
    cache_hits: int = 0
    records_written: int = 0
    records_deleted: int = 0

    def __add__(self, other: Counts) -> Counts:
        if not isinstance(other, Counts):
            return NotImplemented
        return Counts(
            **{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)}
        )

    def replace(self, **changes: int) -> Counts:
        """A copy with some fields set (e.g. ``entities=0`` for work that is not progress)."""
        return replace(self, **changes)

    @property
    def wrote(self) -> bool:
        """Whether any index row was written or removed."""
        return bool(self.records_written or self.records_deleted)

    def as_dict(self) -> dict[str, int]:
        """Every field, in declaration order (the keys of logs and JSON output)."""
        return asdict(self)
