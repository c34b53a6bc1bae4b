"""The runtime SQL of index versions: the registry (``idxr.index_versions``), the rows of the
versions that are not active (``idxr.version_records``), the entities a building version must
re-run (``idxr.version_pending``), and the switch between versions.

``idxr.search_index`` holds the active version of every kind; `activate` swaps a kind's rows
between it and ``idxr.version_records`` in the caller's transaction, after locking
``idxr.search_index`` against writes (reads go on, and see the old version until commit).
`VersionRows` gives a building version the same row interface as `idxr_pg.db.search_index`
(``stored_state``, ``upsert_records``, ``delete_paths``, ``trim_chunks``, ``delete_entities``,
``stamp_kind``), so the indexing pipeline writes a version the way it writes the index.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from idxr_pg.db import search_index, staging
from idxr_pg.db.advisory import VERSION_NAMESPACE
from idxr_pg.errors import IdxrError

__all__ = [
    "ACTIVE",
    "BUILDING",
    "RETIRED",
    "IndexVersion",
    "VersionError",
    "VersionRows",
    "activate",
    "active_version",
    "building_version",
    "clear_pending",
    "create_version",
    "drop_version",
    "ensure_first_version",
    "finish_build",
    "get_version",
    "list_versions",
    "lock_kind_exclusive",
    "lock_kind_shared",
    "mark_pending",
    "pending",
    "set_build_job",
    "set_model",
    "unlock_kind_exclusive",
    "unlock_kind_shared",
    "version_entities",
]

BUILDING = "building"
ACTIVE = "active"
RETIRED = "retired"


class VersionError(IdxrError):
    """A version command cannot run (the message names the kind, the version and the fix)."""


@dataclass(frozen=True)
class IndexVersion:
    """One row of ``idxr.versions``."""

    entity_kind: str
    version: int
    state: str
    model_name: str
    model_source: str  # what loads the model (`load_embedder` with embedding.model = this)
    model_version: str
    dimensions: int
    backend: str | None
    precision: str | None
    schema_fingerprint: str | None
    texts: int
    build_seconds: float | None
    coverage: float | None
    job_id: int | None
    build_state: str | None
    build_total: int | None
    build_done: int | None
    created_at: datetime
    activated_at: datetime | None
    retired_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        for key in ("created_at", "activated_at", "retired_at"):
            out[key] = out[key].isoformat() if out[key] is not None else None
        return out


_COLUMNS = ", ".join(IndexVersion.__dataclass_fields__)
_LIST_SQL = f"""
SELECT {_COLUMNS} FROM idxr.versions
 WHERE %(kind)s::text IS NULL OR entity_kind = %(kind)s
 ORDER BY entity_kind, version
"""
_GET_SQL = f"SELECT {_COLUMNS} FROM idxr.versions WHERE entity_kind = %s AND version = %s"
_IN_STATE_SQL = f"SELECT {_COLUMNS} FROM idxr.versions WHERE entity_kind = %s AND state = %s"

_INSERT_SQL = """
INSERT INTO idxr.index_versions
    (entity_kind, version, model_name, model_source, model_version, dimensions, backend,
     precision, schema_fingerprint, state, activated_at)
SELECT %(kind)s, coalesce(max(v.version), 0) + 1, %(model)s, %(source)s, %(model_version)s,
       %(dims)s,
       %(backend)s, %(precision)s, %(fingerprint)s, %(state)s,
       CASE WHEN %(state)s = 'active' THEN now() END
  FROM idxr.index_versions v WHERE v.entity_kind = %(kind)s
HAVING %(first_only)s IS FALSE OR count(v.*) = 0
RETURNING version
"""
_SET_MODEL_SQL = """
UPDATE idxr.index_versions
   SET model_name = %s, model_source = %s, model_version = %s, dimensions = %s
 WHERE entity_kind = %s AND version = %s
"""
_SET_JOB_SQL = "UPDATE idxr.index_versions SET job_id = %s WHERE entity_kind = %s AND version = %s"
_FINISH_BUILD_SQL = """
UPDATE idxr.index_versions
   SET texts = %(texts)s, build_seconds = %(seconds)s, coverage = %(coverage)s
 WHERE entity_kind = %(kind)s AND version = %(version)s
"""
_VERSION_ENTITIES_SQL = """
SELECT count(DISTINCT entity_id) FROM idxr.version_records
 WHERE entity_kind = %s AND version = %s
"""

# Marks for every building and retired version of the kind (none: nothing is written). Runs
# in the worker's write transaction, so a mark exists once the active version's write is
# visible. A retired version's marks wait for a rollback, which re-runs them first.
_MARK_SQL = """
INSERT INTO idxr.version_pending AS p (entity_kind, version, entity_id)
SELECT v.entity_kind, v.version, ids.id
  FROM idxr.index_versions v, unnest(%(ids)s::text[]) AS ids(id)
 WHERE v.entity_kind = %(kind)s AND v.state IN ('building', 'retired')
ON CONFLICT (entity_kind, version, entity_id)
DO UPDATE SET generation = p.generation + 1, marked_at = now()
"""
_PENDING_SQL = """
SELECT entity_id, generation FROM idxr.version_pending
 WHERE entity_kind = %s AND version = %s
 ORDER BY marked_at, entity_id
 LIMIT %s
"""
_CLEAR_PENDING_SQL = """
DELETE FROM idxr.version_pending p
 USING unnest(%(ids)s::text[], %(generations)s::bigint[]) AS d(entity_id, generation)
 WHERE p.entity_kind = %(kind)s AND p.version = %(version)s
   AND p.entity_id = d.entity_id AND p.generation = d.generation
"""

# A worker holds the kind's lock shared for a batch (prepare ... write); `activate` takes it
# exclusively, so no batch embedded with the old model is written after the switch.
_LOCK_SHARED_SQL = "SELECT pg_advisory_lock_shared(%s, hashtext(%s))"
_UNLOCK_SHARED_SQL = "SELECT pg_advisory_unlock_shared(%s, hashtext(%s))"
_LOCK_EXCLUSIVE_SQL = "SELECT pg_advisory_xact_lock(%s, hashtext(%s))"
_LOCK_SESSION_SQL = "SELECT pg_advisory_lock(%s, hashtext(%s))"
_UNLOCK_SESSION_SQL = "SELECT pg_advisory_unlock(%s, hashtext(%s))"

# The switch. search_index is locked against writes (SHARE ROW EXCLUSIVE: readers go on);
# the kind's rows move out to version_records under the old version, the new version's move in.
_LOCK_INDEX_SQL = "LOCK TABLE idxr.search_index IN SHARE ROW EXCLUSIVE MODE"
_LOCK_VERSIONS_SQL = """
SELECT version, state FROM idxr.index_versions WHERE entity_kind = %s ORDER BY version FOR UPDATE
"""
_PENDING_COUNT_SQL = """
SELECT count(*) FROM idxr.version_pending WHERE entity_kind = %s AND version = %s
"""
_ROW_COLUMNS = (
    "entity_id, path, value, value_type, content_hash, embedding, truncation, chunk, chunk_start,"
    " chunk_end, updated_at"
)
_ARCHIVE_SQL = f"""
INSERT INTO idxr.version_records (entity_kind, version, {_ROW_COLUMNS})
SELECT entity_kind, %(version)s, {_ROW_COLUMNS} FROM idxr.search_index
 WHERE entity_kind = %(kind)s
"""
_EMPTY_ACTIVE_SQL = "DELETE FROM idxr.search_index WHERE entity_kind = %(kind)s"
_RESTORE_SQL = f"""
INSERT INTO idxr.search_index (entity_kind, {_ROW_COLUMNS})
SELECT entity_kind, {_ROW_COLUMNS} FROM idxr.version_records
 WHERE entity_kind = %(kind)s AND version = %(version)s
 ORDER BY entity_id, path, chunk
"""
_EMPTY_VERSION_SQL = """
DELETE FROM idxr.version_records WHERE entity_kind = %(kind)s AND version = %(version)s
"""
_RETIRE_SQL = """
UPDATE idxr.index_versions SET state = 'retired', retired_at = now()
 WHERE entity_kind = %(kind)s AND version = %(version)s
"""
_MAKE_ACTIVE_SQL = """
UPDATE idxr.index_versions SET state = 'active', activated_at = now(), retired_at = NULL
 WHERE entity_kind = %(kind)s AND version = %(version)s
RETURNING model_name
"""
_KIND_MODEL_SQL = "UPDATE idxr.entity_kinds SET model_name = %s, updated_at = now() WHERE name = %s"
_DROP_SQL = "DELETE FROM idxr.index_versions WHERE entity_kind = %s AND version = %s"


def _versions(
    conn: psycopg.Connection, sql: str, params: Sequence[Any] | dict[str, Any]
) -> list[IndexVersion]:
    with conn.cursor(row_factory=dict_row) as cur:
        return [IndexVersion(**row) for row in cur.execute(sql, params).fetchall()]


def list_versions(conn: psycopg.Connection, kind: str | None = None) -> list[IndexVersion]:
    return _versions(conn, _LIST_SQL, {"kind": kind})


def get_version(conn: psycopg.Connection, kind: str, version: int) -> IndexVersion | None:
    found = _versions(conn, _GET_SQL, [kind, version])
    return found[0] if found else None


def active_version(conn: psycopg.Connection, kind: str) -> IndexVersion | None:
    found = _versions(conn, _IN_STATE_SQL, [kind, ACTIVE])
    return found[0] if found else None


def building_version(conn: psycopg.Connection, kind: str) -> IndexVersion | None:
    found = _versions(conn, _IN_STATE_SQL, [kind, BUILDING])
    return found[0] if found else None


def _insert(
    conn: psycopg.Connection,
    kind: str,
    *,
    model: str,
    source: str,
    model_version: str,
    dimensions: int,
    backend: str | None,
    precision: str | None,
    fingerprint: str | None,
    state: str,
    first_only: bool,
) -> int | None:
    row = conn.execute(
        _INSERT_SQL,
        {
            "kind": kind,
            "model": model,
            "source": source,
            "model_version": model_version,
            "dims": dimensions,
            "backend": backend,
            "precision": precision,
            "fingerprint": fingerprint,
            "state": state,
            "first_only": first_only,
        },
    ).fetchone()
    return row[0] if row else None


def ensure_first_version(conn: psycopg.Connection, kind: str, **model: Any) -> int | None:
    """Version 1, active, for a kind that has no version yet (its first registration);
    returns 1 when created, None when the kind had versions. ``model``: model, source,
    model_version, dimensions, backend, precision, fingerprint."""
    return _insert(conn, kind, state=ACTIVE, first_only=True, **model)


def create_version(conn: psycopg.Connection, kind: str, **model: Any) -> int:
    """A new version of ``kind`` in state building (the next number); returns it. Raises
    `VersionError` when one is building already."""
    try:
        with conn.transaction():
            version = _insert(conn, kind, state=BUILDING, first_only=False, **model)
    except psycopg.errors.UniqueViolation:
        building = building_version(conn, kind)
        raise VersionError(
            f"entity kind {kind!r} already has a version being built"
            + (f" (version {building.version}, model {building.model_name})" if building else "")
            + ": resume it with the same --model, or drop it first"
        ) from None
    assert version is not None
    return version


def set_model(
    conn: psycopg.Connection,
    kind: str,
    version: int,
    *,
    model: str,
    model_version: str,
    dimensions: int,
    source: str | None = None,
) -> None:
    """Re-point a version that holds no row yet at another model (a kind's first version,
    when the configured model changed before anything was indexed)."""
    conn.execute(_SET_MODEL_SQL, [model, source or model, model_version, dimensions, kind, version])


def set_build_job(conn: psycopg.Connection, kind: str, version: int, job_id: int) -> None:
    conn.execute(_SET_JOB_SQL, [job_id, kind, version])


def finish_build(
    conn: psycopg.Connection,
    kind: str,
    version: int,
    *,
    texts: int,
    seconds: float,
    coverage: float | None,
) -> None:
    conn.execute(
        _FINISH_BUILD_SQL,
        {
            "kind": kind,
            "version": version,
            "texts": texts,
            "seconds": seconds,
            "coverage": coverage,
        },
    )


def version_entities(conn: psycopg.Connection, kind: str, version: int) -> int:
    """Entities with rows in a version that is not active."""
    row = conn.execute(_VERSION_ENTITIES_SQL, [kind, version]).fetchone()
    return int(row[0]) if row else 0


# ---- pending entities of a building version -----------------------------------------------------


def mark_pending(conn: psycopg.Connection, kind: str, ids: Sequence[str]) -> int:
    """Mark these entities for every building and retired version of ``kind`` (in the
    caller's write transaction); returns how many marks were made (0: no other version)."""
    if not ids:
        return 0
    return conn.execute(_MARK_SQL, {"kind": kind, "ids": list(ids)}).rowcount


def pending(conn: psycopg.Connection, kind: str, version: int, limit: int) -> list[tuple[str, int]]:
    """Up to ``limit`` marked entities of a version: (entity_id, generation), oldest first."""
    return [(i, g) for i, g in conn.execute(_PENDING_SQL, [kind, version, limit]).fetchall()]


def clear_pending(
    conn: psycopg.Connection, kind: str, version: int, marks: Sequence[tuple[str, int]]
) -> int:
    """Delete the marks processed (a mark renewed meanwhile has another generation: it stays)."""
    if not marks:
        return 0
    return conn.execute(
        _CLEAR_PENDING_SQL,
        {
            "kind": kind,
            "version": version,
            "ids": [i for i, _ in marks],
            "generations": [g for _, g in marks],
        },
    ).rowcount


def lock_kind_shared(conn: psycopg.Connection, kind: str) -> None:
    """Held by a worker across one batch of ``kind`` (session lock; see `activate`)."""
    conn.execute(_LOCK_SHARED_SQL, [VERSION_NAMESPACE, kind])


def unlock_kind_shared(conn: psycopg.Connection, kind: str) -> None:
    conn.execute(_UNLOCK_SHARED_SQL, [VERSION_NAMESPACE, kind])


def lock_kind_exclusive(conn: psycopg.Connection, kind: str) -> None:
    """Wait for the kind's worker batches in flight and hold off new ones (session lock):
    while it is held no entity of the kind is written or marked, so a version can be caught
    up and switched to without new marks arriving."""
    conn.execute(_LOCK_SESSION_SQL, [VERSION_NAMESPACE, kind])


def unlock_kind_exclusive(conn: psycopg.Connection, kind: str) -> None:
    conn.execute(_UNLOCK_SESSION_SQL, [VERSION_NAMESPACE, kind])


# ---- switching ------------------------------------------------------------------------------------


def activate(conn: psycopg.Connection, kind: str, version: int) -> int | None:
    """Make ``version`` the kind's active version, in the caller's transaction; returns the
    version it replaces (None: there was none). Waits for the kind's worker batches in flight
    and blocks index writes until commit; searches keep reading the old rows until then.

    Raises `VersionError` for an unknown version, one already active, or a building version
    with entities still to re-run (``version_pending``; the caller drains them and retries)."""
    conn.execute(_LOCK_EXCLUSIVE_SQL, [VERSION_NAMESPACE, kind])
    conn.execute(_LOCK_INDEX_SQL)
    states = dict(conn.execute(_LOCK_VERSIONS_SQL, [kind]).fetchall())
    if version not in states:
        known = ", ".join(f"{v} ({s})" for v, s in states.items()) or "none"
        raise VersionError(f"entity kind {kind!r} has no version {version} (versions: {known})")
    if states[version] == ACTIVE:
        raise VersionError(f"version {version} of {kind!r} is already active")
    row = conn.execute(_PENDING_COUNT_SQL, [kind, version]).fetchone()
    if row and row[0]:
        raise PendingChanges(kind, version, int(row[0]))
    previous = next((v for v, s in states.items() if s == ACTIVE), None)
    if previous is not None:
        conn.execute(_EMPTY_VERSION_SQL, {"kind": kind, "version": previous})
        conn.execute(_ARCHIVE_SQL, {"kind": kind, "version": previous})
        conn.execute(_EMPTY_ACTIVE_SQL, {"kind": kind})
        conn.execute(_RETIRE_SQL, {"kind": kind, "version": previous})
    conn.execute(_RESTORE_SQL, {"kind": kind, "version": version})
    conn.execute(_EMPTY_VERSION_SQL, {"kind": kind, "version": version})
    model = conn.execute(_MAKE_ACTIVE_SQL, {"kind": kind, "version": version}).fetchone()
    assert model is not None
    conn.execute(_KIND_MODEL_SQL, [model[0], kind])
    return previous


class PendingChanges(VersionError):
    """Entities changed since they were built into the version: re-run them, then switch."""

    def __init__(self, kind: str, version: int, count: int) -> None:
        self.kind, self.version, self.count = kind, version, count
        super().__init__(
            f"version {version} of {kind!r} has {count} entities changed since they were built "
            "into it; they are re-run first"
        )


def drop_version(conn: psycopg.Connection, kind: str, version: int) -> IndexVersion:
    """Delete a version that is not active, with its rows; returns what it was."""
    found = get_version(conn, kind, version)
    if found is None:
        known = ", ".join(str(v.version) for v in list_versions(conn, kind)) or "none"
        raise VersionError(f"entity kind {kind!r} has no version {version} (versions: {known})")
    if found.state == ACTIVE:
        raise VersionError(
            f"version {version} of {kind!r} is active: activate another version first "
            f"(`idxr-pg versions rollback {kind}` or `idxr-pg versions activate {kind} V`)"
        )
    if found.state == BUILDING and found.build_state == "running":
        raise VersionError(
            f"version {version} of {kind!r} is being built (job #{found.job_id}): stop the "
            "build (Ctrl-C, or end its process) before dropping it"
        )
    conn.execute(_DROP_SQL, [kind, version])
    return found


# ---- a version's rows, as the pipeline writes them -------------------------------------------------

# One row per field (chunk 0), as `idxr_pg.db.search_index.stored_state` reads them.
_STORED_SQL = """
SELECT entity_id, path::text, content_hash, truncation IS NOT NULL AND chunk_start IS NULL
  FROM idxr.version_records
 WHERE entity_kind = %(kind)s AND version = %(version)s AND entity_id = ANY(%(ids)s::text[])
   AND chunk = 0
"""
_STAGE_TABLE = "idxr_stage_version_records"
_ON_CONFLICT_UPDATE = (
    "\nON CONFLICT (entity_kind, version, entity_id, path, chunk) DO UPDATE SET"
    + search_index.UPSERT_SET
)
_UPSERT_STAGED_SQL = (
    """
INSERT INTO idxr.version_records AS r
    (entity_kind, version, entity_id, path, value, value_type, content_hash, embedding,
     truncation, chunk, chunk_start, chunk_end, updated_at)
SELECT t.entity_kind, %(version)s, t.entity_id, t.path::ltree, t.value,
       t.value_type::idxr.value_type, t.content_hash, t.embedding, t.truncation, t.chunk,
       t.chunk_start, t.chunk_end, now()
  FROM pg_temp.idxr_stage_version_records AS t
 ORDER BY t.entity_kind, t.entity_id, t.path, t.chunk"""
    + _ON_CONFLICT_UPDATE
)
_UPSERT_ROW_SQL = (
    """
INSERT INTO idxr.version_records AS r
    (entity_kind, version, entity_id, path, value, value_type, content_hash, embedding,
     truncation, chunk, chunk_start, chunk_end, updated_at)
VALUES (%s, %s, %s, %s::ltree, %s, %s::idxr.value_type, %s, %s::vector, %s, %s, %s, %s, now())"""
    + _ON_CONFLICT_UPDATE
)
_DELETE_PATHS_SQL = """
DELETE FROM idxr.version_records AS r
 USING unnest(%(ids)s::text[], %(paths)s::ltree[]) AS d(entity_id, path)
 WHERE r.entity_kind = %(kind)s AND r.version = %(version)s
   AND r.entity_id = d.entity_id AND r.path = d.path
"""
# The chunk rows of a rewritten field beyond its new number of chunks.
_TRIM_CHUNKS_SQL = """
DELETE FROM idxr.version_records AS r
 USING unnest(%(ids)s::text[], %(paths)s::ltree[], %(keep)s::integer[]) AS d(entity_id, path, keep)
 WHERE r.entity_kind = %(kind)s AND r.version = %(version)s
   AND r.entity_id = d.entity_id AND r.path = d.path AND r.chunk >= d.keep
"""
_DELETE_ENTITIES_SQL = """
DELETE FROM idxr.version_records
 WHERE entity_kind = %(kind)s AND version = %(version)s AND entity_id = ANY(%(ids)s::text[])
"""


@dataclass(frozen=True)
class VersionRows:
    """The rows of one version that is not active, with the write interface of
    `idxr_pg.db.search_index` (the pipeline's ``rows`` target)."""

    version: int

    def stored_state(
        self, conn: psycopg.Connection, kind: str, ids: Sequence[str]
    ) -> tuple[dict[str, dict[str, str]], list[tuple[str, str]]]:
        out: dict[str, dict[str, str]] = {}
        cut: list[tuple[str, str]] = []
        if not ids:
            return out, cut
        params = {"kind": kind, "version": self.version, "ids": list(ids)}
        for entity_id, path, hash_, truncated in conn.execute(_STORED_SQL, params):
            out.setdefault(entity_id, {})[path] = hash_
            if truncated:
                cut.append((entity_id, path))
        return out, cut

    def upsert_records(self, conn: psycopg.Connection, rows: Sequence[Sequence[Any]]) -> int:
        if not rows:
            return 0
        if not staging.can_stage(conn):
            with conn.cursor() as cur:
                cur.executemany(_UPSERT_ROW_SQL, [(r[0], self.version, *r[1:]) for r in rows])
            return len(rows)
        staging.copy_into_stage(conn, _STAGE_TABLE, search_index.ROW_COLUMNS, rows)
        conn.execute(_UPSERT_STAGED_SQL, {"version": self.version})
        return len(rows)

    def delete_paths(
        self, conn: psycopg.Connection, kind: str, pairs: Sequence[tuple[str, str]]
    ) -> int:
        if not pairs:
            return 0
        params = {
            "kind": kind,
            "version": self.version,
            "ids": [i for i, _ in pairs],
            "paths": [p for _, p in pairs],
        }
        return conn.execute(_DELETE_PATHS_SQL, params).rowcount

    def trim_chunks(
        self, conn: psycopg.Connection, kind: str, trims: Sequence[tuple[str, str, int]]
    ) -> int:
        if not trims:
            return 0
        ids, paths, keep = (list(column) for column in zip(*trims, strict=True))
        params = {"kind": kind, "version": self.version, "ids": ids, "paths": paths, "keep": keep}
        return conn.execute(_TRIM_CHUNKS_SQL, params).rowcount

    def delete_entities(self, conn: psycopg.Connection, kind: str, ids: Sequence[str]) -> int:
        if not ids:
            return 0
        params = {"kind": kind, "version": self.version, "ids": list(ids)}
        return conn.execute(_DELETE_ENTITIES_SQL, params).rowcount

    def stamp_kind(self, conn: psycopg.Connection, kind: str, *, wrote: bool) -> None:
        """A version being built is not the kind's refresh: nothing to stamp."""
