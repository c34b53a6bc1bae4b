"""The indexing pipeline for a batch of entity keys: load → validate → flatten → diff → embed → write.

One `Pipeline` per entity kind serves both callers, the worker (queue rows) and the backfill
(streamed keys)::

    kinds = registry.resolve_kinds(conn, config, ["article"])
    registry.register(conn, kinds.values(), embedder)
    service = EmbeddingService(embedder, config.embedding, EmbeddingCache(database_url))
    pipeline = Pipeline(kinds["article"], service, lease_seconds=config.worker.lease_seconds)

    result = pipeline.index(conn, ["1", "2", "3"], owner="backfill:17", finalize=checkpoint)

``Pipeline.index(conn, entity_ids, *, owner, force=False, finalize=None) -> BatchResult``

- ``conn``: an open connection that is NOT inside a transaction (autocommit recommended). The
  pipeline opens only short transactions on it and none across model inference (invariant 2).
- Leases: the ids are leased to ``owner`` (``idxr.leases``; the owner's own leases are renewed,
  expired ones taken over). Ids leased by someone else are not touched: ``skipped_ids``.
- Processing holds no transaction: documents are loaded in one query (a loader error falls back
  to loading key by key, so one bad key fails alone), validated into the kind's Pydantic model,
  flattened, diffed against the stored hashes (one query), and only new/changed embeddable
  texts are embedded (``force`` re-writes and re-embeds every record; the cache still applies).
- One short write transaction: the leases still held are locked (``FOR UPDATE``; an entity
  whose lease was lost is skipped, its new owner does the work), changed rows upserted
  (``updated_at = now()`` only for them), stale paths deleted, every row of an entity whose
  document no longer exists deleted, then ``finalize(conn, result)`` runs INSIDE that
  transaction (the worker deletes exactly its claimed queue rows and records failures there,
  the backfill moves its checkpoint), the leases are released and the kind is stamped
  (``last_refresh_at``, ``last_embedded_at``). If that transaction fails on data (not on a lost
  connection), each entity is written in its own transaction so a bad one fails alone
  (stage ``write``), then finalize runs in a last short transaction.
- Re-processing an unchanged entity makes no embedding call and writes no row (invariant 4).
- Failures never raise: they are in ``result.failures`` as `EntityFailure` (entity id, stage
  ``load|validate|flatten|embed|write``, the exception, the document). Record them with
  `idxr_pg.indexing.failures.record_failure` in ``finalize`` (while the lease is held). A lost
  database connection does raise (``psycopg.OperationalError``); the leases then simply expire.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus

from idxr_pg.db import queue, search_index
from idxr_pg.embedding import EmbeddedText, EmbeddingError, EmbeddingService, EmbedRequest
from idxr_pg.indexing.registry import RegisteredKind
from idxr_pg.records.diff import Diff, diff
from idxr_pg.records.record import FieldRecord
from idxr_pg.records.traverse import flatten

__all__ = ["STAGES", "BatchResult", "EntityFailure", "Finalizer", "Pipeline"]

log = logging.getLogger(__name__)

STAGES = ("load", "validate", "flatten", "embed", "write")


@dataclass
class EntityFailure:
    """One entity that could not be indexed in this batch; nothing of it was written."""

    entity_id: str
    stage: str
    exception: BaseException
    document: Any = None

    def __str__(self) -> str:
        return f"{self.entity_id} ({self.stage}): {type(self.exception).__name__}: {self.exception}"


@dataclass
class BatchResult:
    """What one `Pipeline.index` call did. Entity counts add up to ``entities``:
    indexed + unchanged + deleted + skipped + failed."""

    kind: str
    entities: int = 0
    indexed: int = 0  # entities with at least one row written or removed
    unchanged: int = 0  # entities that needed no write at all
    deleted: int = 0  # entities whose document no longer exists (their rows removed)
    skipped: int = 0  # leased by another owner, before or during processing
    failed: int = 0
    texts_embedded: int = 0  # distinct texts the model embedded (cache misses)
    cache_hits: int = 0
    records_written: int = 0
    records_deleted: int = 0
    failures: list[EntityFailure] = field(default_factory=list)
    done_ids: list[str] = field(default_factory=list)  # indexed, unchanged or deleted
    skipped_ids: list[str] = field(default_factory=list)

    @property
    def wrote(self) -> bool:
        return bool(self.records_written or self.records_deleted)

    def counts(self) -> dict[str, int]:
        names = (
            "entities",
            "indexed",
            "unchanged",
            "deleted",
            "skipped",
            "failed",
            "texts_embedded",
            "cache_hits",
            "records_written",
            "records_deleted",
        )
        return {name: getattr(self, name) for name in names}


Finalizer = Callable[[psycopg.Connection, BatchResult], None]
"""Called inside the write transaction with the batch's outcome (``done_ids``, ``failures``)."""


@dataclass
class _Entity:
    id: str
    document: dict[str, Any] | None = None
    records: list[FieldRecord] = field(default_factory=list)
    change: Diff | None = None
    vectors: dict[str, EmbeddedText] = field(default_factory=dict)

    @property
    def gone(self) -> bool:
        return self.document is None


class _WritesFailed(Exception):
    """The batch's writes hit bad data (not a lost connection): retry entity by entity."""


class Pipeline:
    """Indexes batches of one entity kind; see the module docstring for the contract."""

    def __init__(
        self,
        kind: RegisteredKind,
        service: EmbeddingService,
        *,
        lease_seconds: float = 300.0,
    ) -> None:
        self.kind = kind
        self.service = service
        self.lease_seconds = lease_seconds

    # ----------------------------------------------------------------------------- public

    def index(
        self,
        conn: psycopg.Connection,
        entity_ids: Sequence[str],
        *,
        owner: str,
        force: bool = False,
        finalize: Finalizer | None = None,
    ) -> BatchResult:
        """Index these entities (see module docstring); returns what happened."""
        if conn.info.transaction_status != TransactionStatus.IDLE:
            raise RuntimeError(
                "Pipeline.index needs a connection outside a transaction: it opens only short "
                "transactions of its own, so that no lock is held across embedding"
            )
        ids = list(dict.fromkeys(str(i) for i in entity_ids))
        result = BatchResult(kind=self.kind.name, entities=len(ids))
        leased = queue.acquire_leases(conn, self.kind.name, ids, owner, self.lease_seconds)
        result.skipped_ids = [i for i in ids if i not in leased]
        entities = [_Entity(i) for i in ids if i in leased]
        try:
            self._prepare(conn, entities, force, result)
            self._embed(entities, result)
            self._write(conn, entities, owner, result, finalize)
        except BaseException:
            self._release_quietly(conn, [e.id for e in entities], owner)
            raise
        result.skipped = len(result.skipped_ids)
        result.failed = len(result.failures)
        return result

    # ----------------------------------------------------------------------------- stages

    def _fail(self, result: BatchResult, entity: _Entity, stage: str, exc: BaseException) -> None:
        log.warning(
            "entity %s:%s failed at %s: %s: %s",
            self.kind.name,
            entity.id,
            stage,
            type(exc).__name__,
            exc,
        )
        result.failures.append(EntityFailure(entity.id, stage, exc, entity.document))

    def _failed_ids(self, result: BatchResult) -> set[str]:
        return {f.entity_id for f in result.failures}

    def _prepare(
        self, conn: psycopg.Connection, entities: list[_Entity], force: bool, result: BatchResult
    ) -> None:
        """Load, validate, flatten and diff (reads only, each its own short transaction)."""
        if not entities:
            return
        documents = self._load(conn, entities, result)
        failed = self._failed_ids(result)
        with conn.transaction():
            stored = search_index.stored_hashes(conn, self.kind.name, [e.id for e in entities])
        for entity in entities:
            if entity.id in failed:
                continue
            entity.document = documents.get(entity.id)
            if entity.gone:
                continue
            try:
                instance = self.kind.validate(entity.document)  # type: ignore[arg-type]
            except Exception as exc:
                self._fail(result, entity, "validate", exc)
                continue
            try:
                entity.records = flatten(
                    instance,
                    self.kind.name,
                    max_depth=self.kind.config.max_depth,
                    max_records=self.kind.config.max_records,
                )
                entity.change = diff(entity.records, stored.get(entity.id, {}), force=force)
            except Exception as exc:
                self._fail(result, entity, "flatten", exc)

    def _load(
        self, conn: psycopg.Connection, entities: list[_Entity], result: BatchResult
    ) -> dict[str, dict[str, Any]]:
        keys = [e.id for e in entities]
        try:
            with conn.transaction():
                return self.kind.load_documents(conn, keys)
        except psycopg.Error as exc:
            if _connection_lost(conn, exc):
                raise
            log.warning(
                "loading %d %s documents failed (%s); loading them one by one",
                len(keys),
                self.kind.name,
                exc,
            )
        documents: dict[str, dict[str, Any]] = {}
        for entity in entities:
            try:
                with conn.transaction():
                    documents.update(self.kind.load_documents(conn, [entity.id]))
            except psycopg.Error as exc:
                if _connection_lost(conn, exc):
                    raise
                self._fail(result, entity, "load", exc)
        return documents

    def _embed(self, entities: list[_Entity], result: BatchResult) -> None:
        """Embed the new/changed embeddable texts; an entity whose texts fail fails alone."""
        pending = {
            e.id: [r for r in e.change.upserts if r.embeddable]
            for e in entities
            if e.change is not None and e.id not in self._failed_ids(result)
        }
        pending = {k: v for k, v in pending.items() if v}
        by_id = {e.id: e for e in entities}
        while pending:
            order = [(entity_id, r) for entity_id, records in pending.items() for r in records]
            requests = [
                EmbedRequest(key=entity_id, text=r.embedding_text) for entity_id, r in order
            ]
            before = self.service.stats.snapshot()
            try:
                embedded = self.service.embed(requests)
            except EmbeddingError as exc:
                self._count_embedding(before, result)
                culprits = [k for k in exc.keys if k in pending] or list(pending)
                for entity_id in culprits:
                    self._fail(result, by_id[entity_id], "embed", exc)
                    del pending[entity_id]
                continue
            except (psycopg.OperationalError, psycopg.InterfaceError):
                raise  # the cache's connection is gone: the caller reconnects and retries
            except Exception as exc:  # anything else cannot be pinned on one entity
                self._count_embedding(before, result)
                for entity_id in pending:
                    self._fail(result, by_id[entity_id], "embed", exc)
                return
            self._count_embedding(before, result)
            for (entity_id, record), vector in zip(order, embedded, strict=True):
                by_id[entity_id].vectors[record.path] = vector
            return

    def _count_embedding(self, before: Any, result: BatchResult) -> None:
        after = self.service.stats
        result.texts_embedded += after.texts_embedded - before.texts_embedded
        result.cache_hits += after.cache_hits - before.cache_hits

    # ----------------------------------------------------------------------------- write

    def _write(
        self,
        conn: psycopg.Connection,
        entities: list[_Entity],
        owner: str,
        result: BatchResult,
        finalize: Finalizer | None,
    ) -> None:
        leased = [e.id for e in entities]
        ready = [e for e in entities if e.id not in self._failed_ids(result)]
        try:
            with conn.transaction():
                owned = queue.owned_leases(conn, self.kind.name, leased, owner)
                self._lose(result, [i for i in leased if i not in owned])
                try:
                    self._write_entities(conn, [e for e in ready if e.id in owned], result)
                except psycopg.Error as exc:
                    if _connection_lost(conn, exc):
                        raise
                    raise _WritesFailed(exc) from exc
                self._finish(conn, owned, owner, result, finalize)
            return
        except _WritesFailed as failed:
            log.warning(
                "writing a batch of %d %s entities failed (%s); writing them one by one",
                len(ready),
                self.kind.name,
                failed.__cause__,
            )
        self._reset_counts(result)
        for entity in ready:
            alone = BatchResult(kind=self.kind.name)
            try:
                with conn.transaction():
                    if not queue.owned_leases(conn, self.kind.name, [entity.id], owner):
                        continue
                    self._write_entities(conn, [entity], alone)
            except psycopg.Error as exc:
                if _connection_lost(conn, exc):
                    raise
                self._fail(result, entity, "write", exc)
            else:
                self._merge_counts(result, alone)
        with conn.transaction():
            owned = queue.owned_leases(conn, self.kind.name, leased, owner)
            self._lose(result, [i for i in leased if i not in owned])
            self._finish(conn, owned, owner, result, finalize)

    def _write_entities(
        self, conn: psycopg.Connection, entities: list[_Entity], result: BatchResult
    ) -> None:
        """Write these entities' changes in the caller's transaction: one upsert for all their
        changed rows, one delete for their stale paths, one for the entities that are gone."""
        kind = self.kind.name
        rows: list[tuple[Any, ...]] = []
        stale: list[tuple[str, str]] = []
        gone: list[str] = []
        for entity in entities:
            if entity.gone:
                gone.append(entity.id)
                result.deleted += 1
                result.done_ids.append(entity.id)
                continue
            change = entity.change
            assert change is not None
            for record in change.upserts:
                embedded = entity.vectors.get(record.path)
                rows.append(
                    (
                        kind,
                        entity.id,
                        record.path,
                        record.value,
                        record.value_type.value,
                        record.content_hash,
                        embedded.vector if embedded is not None else None,
                        embedded.truncation if embedded is not None else None,
                    )
                )
            stale.extend((entity.id, path) for path in change.deletes)
            if change.is_noop:
                result.unchanged += 1
            else:
                result.indexed += 1
            result.done_ids.append(entity.id)
        result.records_written += search_index.upsert_records(conn, rows)
        result.records_deleted += search_index.delete_paths(conn, kind, stale)
        result.records_deleted += search_index.delete_entities(conn, kind, gone)

    @staticmethod
    def _merge_counts(result: BatchResult, part: BatchResult) -> None:
        for name in ("indexed", "unchanged", "deleted", "records_written", "records_deleted"):
            setattr(result, name, getattr(result, name) + getattr(part, name))
        result.done_ids.extend(part.done_ids)

    @staticmethod
    def _reset_counts(result: BatchResult) -> None:
        """Forget what a rolled-back batch write counted."""
        result.indexed = result.unchanged = result.deleted = 0
        result.records_written = result.records_deleted = 0
        result.done_ids = []

    def _finish(
        self,
        conn: psycopg.Connection,
        owned: set[str],
        owner: str,
        result: BatchResult,
        finalize: Finalizer | None,
    ) -> None:
        result.failures = [f for f in result.failures if f.entity_id in owned]
        result.failed = len(result.failures)
        result.skipped = len(result.skipped_ids)
        if finalize is not None:
            finalize(conn, result)
        queue.release_leases(conn, self.kind.name, sorted(owned), owner)
        search_index.stamp_kind(conn, self.kind.name, wrote=result.wrote)

    def _lose(self, result: BatchResult, lost: list[str]) -> None:
        """Entities whose lease went to another owner: skipped, their failures dropped."""
        for entity_id in lost:
            if entity_id not in result.skipped_ids:
                log.info(
                    "entity %s:%s: lease lost to another owner; skipped", self.kind.name, entity_id
                )
                result.skipped_ids.append(entity_id)

    def _release_quietly(self, conn: psycopg.Connection, ids: list[str], owner: str) -> None:
        if conn.closed or conn.broken:
            return
        try:
            if conn.info.transaction_status != TransactionStatus.IDLE:
                conn.rollback()
            with conn.transaction():
                queue.release_leases(conn, self.kind.name, ids, owner)
        except psycopg.Error:
            log.debug("could not release leases after an error; they will expire", exc_info=True)


def _connection_lost(conn: psycopg.Connection, exc: BaseException) -> bool:
    """Whether an error means the connection is gone (retry later) rather than bad data."""
    return (
        conn.broken
        or conn.closed
        or isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
    )
