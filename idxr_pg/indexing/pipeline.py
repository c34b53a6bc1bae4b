"""The indexing pipeline for a batch of leased entity keys: load → validate → flatten → diff →
embed → write.

One `Pipeline` per entity kind serves both callers, the worker (claimed queue rows) and the
backfill (streamed keys); `idxr_pg.runtime.assembly` builds them::

    leased = leases.acquire(conn, "article", ["1", "2", "3"], "backfill:article", 300)
    result = pipeline.index(conn, leased, finalize=checkpoint)

``Pipeline.index(conn, leased, *, force=False, finalize=None) -> BatchResult``

It runs in two halves that a caller may also call apart: ``prepare(conn, leased, force=...)
-> PreparedBatch`` (everything up to and including embedding, no transaction held) and
``write(conn, prepared, finalize=...) -> BatchResult`` (the one write transaction); the
backfill prepares batch N+1 on a second connection while batch N is written.

- ``conn``: an open connection that is NOT inside a transaction (autocommit recommended). The
  pipeline opens only short transactions on it and none across model inference (invariant 2).
- Leases: the caller leases the entities (`idxr_pg.db.queue.claim` for the worker,
  `idxr_pg.db.leases.acquire` for the backfill) and hands the `Leases` over; the pipeline
  releases them. Ids the caller asked for but another owner holds are not touched:
  ``skipped_ids``.
- Processing holds no transaction: documents are loaded in one query (a loader error falls back
  to loading key by key, so one bad key fails alone), validated into the kind's Pydantic model,
  flattened, diffed against the stored hashes (one query), and only new/changed embeddable
  texts are embedded (``force`` re-writes and re-embeds every record; the cache still applies).
- One short write transaction: the leases still held are locked (``FOR UPDATE``; an entity
  whose lease was lost is skipped, its new owner does the work: invariant 3), changed rows
  upserted (``updated_at = now()`` only for them), stale paths deleted, every row of an entity
  whose document no longer exists deleted, then ``finalize(conn, result)`` runs INSIDE that
  transaction (the worker deletes exactly its claimed queue rows and records failures there,
  the backfill moves its checkpoint), the leases are released and the kind is stamped
  (``last_refresh_at``, ``last_embedded_at``). If that transaction fails on data (not on a lost
  connection), each entity is written in its own transaction so a bad one fails alone
  (stage ``write``), then finalize runs in a last short transaction.
- Re-processing an unchanged entity makes no embedding call and writes no row (invariant 4).
- Failures never raise: any error of one entity (not only SQL errors: a RecursionError while
  decoding deep JSON, an exception of a validator or of adapting a value) isolates it; they
  are in ``result.failures`` as `EntityFailure` (entity id, stage
  ``load|validate|flatten|embed|write``, the exception, the document). Record them with
  `idxr_pg.indexing.failures.record_failures` in ``finalize`` (while the lease is held). A lost
  database connection does raise (``psycopg.OperationalError``); the leases are released if
  the connection still works, else they simply expire.

The decisions that need no database are pure functions here: `embedding_requests` (what is
embedded), `plan_writes` (what is written, unchanged or deleted) and `settle` (what counts as
done, skipped and failed once the leases still held are known).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

import psycopg
from psycopg.pq import TransactionStatus

from idxr_pg.db import leases as lease_sql
from idxr_pg.db import search_index, source
from idxr_pg.db.connection import is_connection_lost
from idxr_pg.db.leases import Leases
from idxr_pg.embedding import EmbeddedText, EmbeddingError, EmbeddingService, EmbedRequest
from idxr_pg.embedding.chunking import Chunk, split
from idxr_pg.indexing.chunk_policy import ChunkPolicy, policy_for_paths
from idxr_pg.indexing.failures import STAGES, EntityFailure
from idxr_pg.indexing.registry import RegisteredKind
from idxr_pg.records.composite import composite_record
from idxr_pg.records.counts import Counts
from idxr_pg.records.diff import Diff, diff
from idxr_pg.records.record import FieldRecord
from idxr_pg.records.traverse import flatten

__all__ = [
    "STAGES",
    "BatchResult",
    "EntityFailure",
    "EntityWork",
    "Finalizer",
    "Pipeline",
    "Preview",
    "PreparedBatch",
    "WritePlan",
    "embedding_requests",
    "plan_writes",
    "settle",
]

log = logging.getLogger(__name__)

_COUNT_NAMES = frozenset(f.name for f in fields(Counts))


@dataclass(frozen=True)
class BatchResult:
    """What one `Pipeline.index` call did. ``counts`` add up: entities = indexed + unchanged +
    deleted + skipped + failed; each count also reads as an attribute (``result.indexed``)."""

    kind: str
    counts: Counts
    done_ids: list[str] = field(default_factory=list)  # indexed, unchanged or deleted
    skipped_ids: list[str] = field(default_factory=list)
    failures: list[EntityFailure] = field(default_factory=list)

    def __getattr__(self, name: str) -> Any:
        if name in _COUNT_NAMES:
            return getattr(object.__getattribute__(self, "counts"), name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def wrote(self) -> bool:
        return self.counts.wrote


Finalizer = Callable[[psycopg.Connection, BatchResult], None]
"""Called inside the write transaction with the batch's outcome (``done_ids``, ``failures``)."""


@dataclass
class EntityWork:
    """One entity on its way through the pipeline."""

    id: str
    document: dict[str, Any] | None = None
    records: list[FieldRecord] = field(default_factory=list)
    change: Diff | None = None
    vectors: dict[str, EmbeddedText] = field(default_factory=dict)
    # A chunked field's chunks and their vectors, by path (`vectors` holds its chunk 0 too).
    chunks: dict[str, list[tuple[Chunk, EmbeddedText]]] = field(default_factory=dict)
    # The paths stored before this pass: a changed one may leave chunk rows to remove.
    stored_paths: frozenset[str] = frozenset()

    @property
    def gone(self) -> bool:
        return self.document is None


# --------------------------------------------------------------------------- pure decisions


def embedding_requests(
    entities: Iterable[EntityWork], failed: Iterable[str] = ()
) -> dict[str, list[FieldRecord]]:
    """Per entity, the records whose text must be embedded: the new or changed embeddable
    ones of entities that are still in the batch (not failed, not gone)."""
    out_of_batch = set(failed)
    pending = {
        e.id: [r for r in e.change.upserts if r.embeddable]
        for e in entities
        if e.change is not None and e.id not in out_of_batch
    }
    return {entity_id: records for entity_id, records in pending.items() if records}


@dataclass
class PreparedBatch:
    """A leased batch loaded, flattened, diffed and embedded: what `Pipeline.write` writes."""

    leased: Leases
    entities: list[EntityWork]
    failures: list[EntityFailure]
    embedded: Counts  # the model's and the cache's share (texts_embedded, cache_hits)


@dataclass(frozen=True)
class WritePlan:
    """What one write of some entities does (see `plan_writes`)."""

    rows: list[tuple[Any, ...]]  # search_index rows to upsert
    stale: list[tuple[str, str]]  # (entity_id, path) rows to delete
    trims: list[tuple[str, str, int]]  # (entity_id, path, chunks kept): chunk rows beyond go
    gone: list[str]  # entities whose every row goes
    done_ids: list[str]
    counts: Counts  # indexed, unchanged, deleted


def plan_writes(kind: str, entities: Iterable[EntityWork]) -> WritePlan:
    """The rows to upsert and delete for these prepared entities, and how each one counts:
    gone → deleted; no upsert and no stale path → unchanged; otherwise indexed."""
    rows: list[tuple[Any, ...]] = []
    stale: list[tuple[str, str]] = []
    trims: list[tuple[str, str, int]] = []
    gone: list[str] = []
    done: list[str] = []
    indexed = unchanged = 0
    for entity in entities:
        done.append(entity.id)
        if entity.gone:
            gone.append(entity.id)
            continue
        change = entity.change
        assert change is not None
        for record in change.upserts:
            rows.extend(_record_rows(kind, entity, record))
            if record.path in entity.stored_paths:
                trims.append((entity.id, record.path, len(entity.chunks.get(record.path, ())) or 1))
        stale.extend((entity.id, path) for path in change.deletes)
        if change.is_noop:
            unchanged += 1
        else:
            indexed += 1
    counts = Counts(indexed=indexed, unchanged=unchanged, deleted=len(gone))
    return WritePlan(rows, stale, trims, gone, done, counts)


CHUNKS_CAPPED = "chunks"
"""The ``truncation`` of a field whose text went on past its ``max_chunks`` chunks."""


def _record_rows(kind: str, entity: EntityWork, record: FieldRecord) -> list[tuple[Any, ...]]:
    """The search_index rows of one record: its row (chunk 0), and for a chunked field one row
    per further chunk (value '', the field's type and hash, the chunk's vector and range; see
    schema/019_chunks.sql). Columns as `search_index.upsert_records` takes them."""
    base = (kind, entity.id, record.path)
    chunks = entity.chunks.get(record.path)
    if not chunks:
        embedded = entity.vectors.get(record.path)
        return [
            (
                *base,
                record.value,
                record.value_type.value,
                record.content_hash,
                embedded.vector if embedded is not None else None,
                embedded.truncation if embedded is not None else None,
                0,
                None,
                None,
            )
        ]
    capped = chunks[-1][0].end < len(record.value.rstrip())
    return [
        (
            *base,
            record.value if chunk.number == 0 else "",
            record.value_type.value,
            record.content_hash,
            embedded.vector,
            (CHUNKS_CAPPED if capped else None) if chunk.number == 0 else None,
            chunk.number,
            chunk.start,
            chunk.end,
        )
        for chunk, embedded in chunks
    ]


def _chunk_text(record: FieldRecord, chunk: Chunk | None) -> str:
    """The embedding text of a chunk of ``record`` (None: the path prefix alone), shaped as
    `FieldRecord.embedding_text`."""
    prefix = record.embedding_text[: len(record.embedding_text) - len(record.value)]
    return prefix if chunk is None else prefix + chunk.text(record.value)


def settle(
    kind: str,
    leased: Leases,
    held: Iterable[str],
    *,
    done_ids: Sequence[str],
    failures: Sequence[EntityFailure],
    counts: Counts,
) -> BatchResult:
    """The batch's result once the leases still ``held`` at write time are known: entities
    refused or lost are skipped (their failures dropped: their new owner does the work)."""
    still = set(held)
    skipped = leased.refused + [i for i in leased.ids if i not in still]
    kept = [f for f in failures if f.entity_id in still]
    total = counts + Counts(
        batches=1, entities=len(leased.requested), skipped=len(skipped), failed=len(kept)
    )
    return BatchResult(leased.kind, total, list(done_ids), skipped, kept)


@dataclass(frozen=True)
class Preview:
    """What `Pipeline.index` would start from for some entities (`Pipeline.preview`): each
    entity prepared (document, records, diff; ``gone`` when its row no longer exists), the
    failures so far (load, validate, flatten) and the stored hashes it diffed against."""

    entities: list[EntityWork]
    failures: list[EntityFailure]
    stored: dict[str, dict[str, str]]


# --------------------------------------------------------------------------- the pipeline


def _connection_lost(exc: BaseException, conn: psycopg.Connection) -> bool:
    """Only a lost connection ends the batch; any other error is the entity's own."""
    return isinstance(exc, psycopg.Error) and is_connection_lost(exc, conn)


class IndexRows(Protocol):
    """Where a pipeline reads stored hashes and writes rows: the module
    `idxr_pg.db.search_index` (the active index version) or a `VersionRows`."""

    def stored_state(
        self, conn: psycopg.Connection, kind: str, ids: Sequence[str]
    ) -> tuple[dict[str, dict[str, str]], list[tuple[str, str]]]: ...

    def upsert_records(self, conn: psycopg.Connection, rows: Sequence[Sequence[Any]]) -> int: ...

    def trim_chunks(
        self, conn: psycopg.Connection, kind: str, trims: Sequence[tuple[str, str, int]]
    ) -> int: ...

    def delete_paths(
        self, conn: psycopg.Connection, kind: str, pairs: Sequence[tuple[str, str]]
    ) -> int: ...

    def delete_entities(self, conn: psycopg.Connection, kind: str, ids: Sequence[str]) -> int: ...

    def stamp_kind(self, conn: psycopg.Connection, kind: str, *, wrote: bool) -> None: ...


class _WritesFailed(Exception):
    """The batch's writes hit bad data (not a lost connection): retry entity by entity."""


class Pipeline:
    """Indexes batches of one entity kind; see the module docstring for the contract."""

    def __init__(
        self, kind: RegisteredKind, service: EmbeddingService, rows: IndexRows = search_index
    ) -> None:
        self.kind = kind
        self.service = service
        # Where the kind's rows are read and written: idxr.search_index (the active index
        # version), or a version being built (`idxr_pg.db.versions.VersionRows`).
        self.rows = rows
        self.chunk_policy = policy_for_paths(
            service.settings.chunking, kind.config.chunking, service.max_tokens
        )

    # ----------------------------------------------------------------------------- public

    def index(
        self,
        conn: psycopg.Connection,
        leased: Leases,
        *,
        force: bool = False,
        finalize: Finalizer | None = None,
    ) -> BatchResult:
        """Index the leased entities (see module docstring); returns what happened."""
        return self.write(conn, self.prepare(conn, leased, force=force), finalize=finalize)

    def prepare(
        self, conn: psycopg.Connection, leased: Leases, *, force: bool = False
    ) -> PreparedBatch:
        """The first half of `index`: load, validate, flatten, diff and embed, holding no
        transaction. ``conn`` may differ from the one `write` gets: the backfill prepares the
        next batch on a connection of its own while this one is written (the entities of
        two batches are disjoint, so one's diff never depends on the other's write)."""
        self._check_idle(conn)
        if leased.kind != self.kind.name:
            raise ValueError(
                f"leases of kind {leased.kind!r} given to the {self.kind.name} pipeline"
            )
        entities = [EntityWork(i) for i in leased.ids]
        failures: list[EntityFailure] = []
        try:
            self._prepare(conn, entities, force, failures)
            embedded = self._embed(entities, failures)
        except BaseException:
            self._release_quietly(conn, leased)
            raise
        return PreparedBatch(leased, entities, failures, embedded)

    def write(
        self,
        conn: psycopg.Connection,
        prepared: PreparedBatch,
        *,
        finalize: Finalizer | None = None,
    ) -> BatchResult:
        """The second half of `index`: one short write transaction (see module docstring)."""
        self._check_idle(conn)
        try:
            return self._write(
                conn,
                prepared.leased,
                prepared.entities,
                prepared.failures,
                prepared.embedded,
                finalize,
            )
        except BaseException:
            self._release_quietly(conn, prepared.leased)
            raise

    def release(self, conn: psycopg.Connection, prepared: PreparedBatch) -> None:
        """Give up a prepared batch without writing it: its leases go (its vectors stay in
        the embedding cache, so indexing it later costs no inference)."""
        self.release_leases(conn, prepared.leased)

    def release_leases(self, conn: psycopg.Connection, leased: Leases) -> None:
        """Give back leases handed over to `prepare` whose batch is given up (its preparation
        failed or never ran); errors are logged, the leases then expire."""
        self._release_quietly(conn, leased)

    @staticmethod
    def _check_idle(conn: psycopg.Connection) -> None:
        if conn.info.transaction_status != TransactionStatus.IDLE:
            raise RuntimeError(
                "Pipeline.index needs a connection outside a transaction: it opens only short "
                "transactions of its own, so that no lock is held across embedding"
            )

    def preview(self, conn: psycopg.Connection, ids: Sequence[str]) -> Preview:
        """Load, validate, flatten and diff these entities as `index` would, without leasing,
        embedding or writing anything (`idxr-pg plan`)."""
        entities = [EntityWork(i) for i in ids]
        failures: list[EntityFailure] = []
        stored = self._prepare(conn, entities, False, failures)
        return Preview(entities, failures, stored)

    # ----------------------------------------------------------------------------- stages

    def _fail(
        self, failures: list[EntityFailure], entity: EntityWork, stage: str, exc: BaseException
    ) -> None:
        log.warning(
            "entity %s:%s failed at %s: %s: %s",
            self.kind.name,
            entity.id,
            stage,
            type(exc).__name__,
            exc,
        )
        failures.append(EntityFailure(entity.id, stage, exc, entity.document))

    def _prepare(
        self,
        conn: psycopg.Connection,
        entities: list[EntityWork],
        force: bool,
        failures: list[EntityFailure],
    ) -> dict[str, dict[str, str]]:
        """Load, validate, flatten and diff (reads only, each its own short transaction);
        returns the stored hashes diffed against."""
        if not entities:
            return {}
        documents = self._load(conn, entities, failures)
        failed = {f.entity_id for f in failures}
        with conn.transaction():
            stored, cut = self.rows.stored_state(conn, self.kind.name, [e.id for e in entities])
        # A field stored truncated, whose path is now to be chunked, reads as changed (a
        # reindex chunks the fields truncated before chunking existed).
        for entity_id, path in cut:
            if self.chunk_policy(path).chunks:
                stored[entity_id][path] = ""
        for entity in entities:
            if entity.id in failed:
                continue
            entity.document = documents.get(entity.id)
            entity.stored_paths = frozenset(stored.get(entity.id, ()))
            if entity.gone:
                continue
            try:
                instance = self.kind.validate(entity.document)  # type: ignore[arg-type]
            except Exception as exc:
                self._fail(failures, entity, "validate", exc)
                continue
            try:
                entity.records = flatten(
                    instance,
                    self.kind.name,
                    max_depth=self.kind.config.max_depth,
                    max_records=self.kind.config.max_records,
                    exclude_paths=self.kind.config.exclude_paths,
                )
                if self.kind.config.composite:
                    whole = composite_record(instance, self.kind.name, self.kind.config.composite)
                    if whole is not None:
                        entity.records.append(whole)
                entity.change = diff(entity.records, stored.get(entity.id, {}), force=force)
            except Exception as exc:
                self._fail(failures, entity, "flatten", exc)
        return stored

    def _load(
        self, conn: psycopg.Connection, entities: list[EntityWork], failures: list[EntityFailure]
    ) -> dict[str, dict[str, Any]]:
        keys = [e.id for e in entities]
        try:
            with conn.transaction():
                return source.load_documents(conn, self.kind, keys)
        except Exception as exc:  # a SQL error, or a document Python cannot decode (deep JSON)
            if _connection_lost(exc, conn):
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
                    documents.update(source.load_documents(conn, self.kind, [entity.id]))
            except Exception as exc:
                if _connection_lost(exc, conn):
                    raise
                self._fail(failures, entity, "load", exc)
        return documents

    def _embed(self, entities: list[EntityWork], failures: list[EntityFailure]) -> Counts:
        """Embed the new/changed embeddable texts; an entity whose texts fail fails alone.
        Returns the model's and the cache's share (``texts_embedded``, ``cache_hits``)."""
        before = self.service.stats.snapshot()
        pending = embedding_requests(entities, (f.entity_id for f in failures))
        by_id = {e.id: e for e in entities}
        chunked = self._chunk(pending, by_id, failures)
        while pending:
            order = [
                (entity_id, r, chunk)
                for entity_id, records in pending.items()
                for r in records
                for chunk in chunked.get((entity_id, r.path)) or (None,)
            ]
            requests = [
                EmbedRequest(
                    key=entity_id,
                    text=r.embedding_text if chunk is None else _chunk_text(r, chunk),
                )
                for entity_id, r, chunk in order
            ]
            try:
                embedded = self.service.embed(requests)
            except EmbeddingError as exc:
                culprits = [k for k in exc.keys if k in pending] or list(pending)
                for entity_id in culprits:
                    self._fail(failures, by_id[entity_id], "embed", exc)
                    del pending[entity_id]
                continue
            except (psycopg.OperationalError, psycopg.InterfaceError):
                raise  # the cache's connection is gone: the caller reconnects and retries
            except Exception as exc:  # anything else cannot be pinned on one entity
                for entity_id in pending:
                    self._fail(failures, by_id[entity_id], "embed", exc)
                break
            for (entity_id, record, chunk), vector in zip(order, embedded, strict=True):
                entity = by_id[entity_id]
                if chunk is not None:
                    entity.chunks.setdefault(record.path, []).append((chunk, vector))
                if chunk is None or chunk.number == 0:
                    entity.vectors[record.path] = vector
            break
        after = self.service.stats
        return Counts(
            texts_embedded=after.texts_embedded - before.texts_embedded,
            cache_hits=after.cache_hits - before.cache_hits,
        )

    def _chunk(
        self,
        pending: dict[str, list[FieldRecord]],
        by_id: dict[str, EntityWork],
        failures: list[EntityFailure],
    ) -> dict[tuple[str, str], list[Chunk]]:
        """The chunks of each pending text longer than its path's chunk size (by entity id and
        path); an entity whose text cannot be split fails alone (stage ``embed``)."""
        out: dict[tuple[str, str], list[Chunk]] = {}
        for entity_id in list(pending):
            try:
                for record in pending[entity_id]:
                    chunks = self.chunks_of(record)
                    if chunks:
                        out[(entity_id, record.path)] = chunks
            except Exception as exc:
                self._fail(failures, by_id[entity_id], "embed", exc)
                del pending[entity_id]
        return out

    def chunks_of(self, record: FieldRecord) -> list[Chunk]:
        """The chunks an embeddable record is embedded as ([]: its text whole)."""
        policy: ChunkPolicy = self.chunk_policy(record.path)
        if not policy.chunks:
            return []
        return split(
            self.service.embedder,
            _chunk_text(record, None),
            record.value,
            tokens=policy.tokens,
            overlap=policy.overlap,
            max_chunks=policy.max_chunks,
        )

    def embedding_texts(self, record: FieldRecord) -> list[str]:
        """The texts embedded for an embeddable record: one per chunk, or its text whole."""
        chunks = self.chunks_of(record)
        return [_chunk_text(record, c) for c in chunks] if chunks else [record.embedding_text]

    # ----------------------------------------------------------------------------- write

    def _write(
        self,
        conn: psycopg.Connection,
        leased: Leases,
        entities: list[EntityWork],
        failures: list[EntityFailure],
        embedded: Counts,
        finalize: Finalizer | None,
    ) -> BatchResult:
        failed = {f.entity_id for f in failures}
        ready = [e for e in entities if e.id not in failed]
        try:
            with conn.transaction():
                held = self._lock_held(conn, leased)
                try:
                    plan, written = self._write_entities(conn, [e for e in ready if e.id in held])
                except Exception as exc:  # bad data of some entity (SQL or adapting a value)
                    if _connection_lost(exc, conn):
                        raise
                    raise _WritesFailed(exc) from exc
                result = settle(
                    self.kind.name,
                    leased,
                    held,
                    done_ids=plan.done_ids,
                    failures=failures,
                    counts=embedded + written,
                )
                self._finish(conn, held, leased, result, finalize)
            return result
        except _WritesFailed as failure:
            log.warning(
                "writing a batch of %d %s entities failed (%s); writing them one by one",
                len(ready),
                self.kind.name,
                failure.__cause__,
            )
        # One transaction per entity: what a rolled-back batch write counted is forgotten.
        done: list[str] = []
        written = Counts()
        for entity in ready:
            try:
                with conn.transaction():
                    if not lease_sql.lock_held(conn, self.kind.name, [entity.id], leased.owner):
                        continue
                    plan, alone = self._write_entities(conn, [entity])
            except Exception as exc:
                if _connection_lost(exc, conn):
                    raise
                self._fail(failures, entity, "write", exc)
            else:
                done.extend(plan.done_ids)
                written = written + alone
        with conn.transaction():
            held = self._lock_held(conn, leased)
            result = settle(
                self.kind.name,
                leased,
                held,
                done_ids=done,
                failures=failures,
                counts=embedded + written,
            )
            self._finish(conn, held, leased, result, finalize)
        return result

    def _lock_held(self, conn: psycopg.Connection, leased: Leases) -> set[str]:
        """In the write transaction: lock the leases still held; log the ones lost."""
        held = lease_sql.lock_held(conn, self.kind.name, leased.ids, leased.owner)
        for entity_id in leased.ids:
            if entity_id not in held:
                log.info(
                    "entity %s:%s: lease lost to another owner; skipped", self.kind.name, entity_id
                )
        return held

    def _write_entities(
        self, conn: psycopg.Connection, entities: list[EntityWork]
    ) -> tuple[WritePlan, Counts]:
        """Write these entities' changes in the caller's transaction: one upsert for all their
        changed rows, one delete for their stale paths, one for the entities that are gone."""
        kind = self.kind.name
        plan = plan_writes(kind, entities)
        written = self.rows.upsert_records(conn, plan.rows)
        removed = self.rows.delete_paths(conn, kind, plan.stale)
        removed += self.rows.trim_chunks(conn, kind, plan.trims)
        removed += self.rows.delete_entities(conn, kind, plan.gone)
        return plan, plan.counts + Counts(records_written=written, records_deleted=removed)

    def _finish(
        self,
        conn: psycopg.Connection,
        held: set[str],
        leased: Leases,
        result: BatchResult,
        finalize: Finalizer | None,
    ) -> None:
        if finalize is not None:
            finalize(conn, result)
        lease_sql.release(conn, self.kind.name, sorted(held), leased.owner)
        self.rows.stamp_kind(conn, self.kind.name, wrote=result.wrote)

    def _release_quietly(self, conn: psycopg.Connection, leased: Leases) -> None:
        if conn.closed or conn.broken:
            return
        try:
            if conn.info.transaction_status != TransactionStatus.IDLE:
                conn.rollback()
            with conn.transaction():
                lease_sql.release(conn, self.kind.name, leased.ids, leased.owner)
        except psycopg.Error:
            log.debug("could not release leases after an error; they will expire", exc_info=True)
