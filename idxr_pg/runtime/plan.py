"""`idxr-pg plan KIND`: what `idxr-pg reindex KIND` would do, found without writing anything.

It walks the kind exactly as the reindex (a backfill) does: the source keys in pages, each
batch through `Pipeline.preview` (load → validate → flatten → diff against the stored hashes:
the very code the reindex runs, minus leases, embedding and writes), then the indexed entities
whose source row is gone. It counts the entities and records to add, update and remove, and
the texts to embed: distinct texts (by their cache address, after truncation), split into
those already in the embedding cache and those the model must compute. The reindex embeds
exactly the latter (`EmbeddingService` never embeds a cached text, nor one text twice).

The estimate: the plan's own scan time (what the reindex also spends reading and flattening)
plus the texts to embed at a rate measured now, by embedding up to `SAMPLE_TEXTS` of them
(nothing is stored: the embedder is called directly, not the cached service). The kind's
last jobs' rate (texts per second over their whole run) would be cheaper, but it is the rate
of other texts (bench/reindex.py: an initial load's short texts ran 4x faster than an added
field's), so it serves only when there is nothing to measure on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import psycopg

from idxr_pg.config import IdxrConfig
from idxr_pg.db import jobs, source
from idxr_pg.db.connection import connect, conninfo
from idxr_pg.embedding import Embedder, EmbeddingCache, EmbeddingService, load_embedder
from idxr_pg.indexing import schema_state
from idxr_pg.indexing.pipeline import Pipeline, Preview
from idxr_pg.indexing.registry import resolve_kind
from idxr_pg.records.record import content_hash
from idxr_pg.records.shape import ShapeChange, rename_path
from idxr_pg.runtime.backfill import MIN_PAGE_SIZE, chunks

__all__ = ["SAMPLE_TEXTS", "ReindexPlan", "RenameCheck", "plan_reindex"]

SAMPLE_TEXTS = 64
"""Texts to embed that the plan embeds (storing nothing) to measure the model's rate."""


@dataclass
class RenameCheck:
    """A rename the shapes suggest, checked on the data: in how many records the value at the
    new path equals the stored value at the old one (by content hash)."""

    old: str
    new: str
    same_values: int = 0
    other_values: int = 0

    @property
    def confirmed(self) -> bool:
        return self.same_values > 0 and self.other_values == 0


@dataclass
class ReindexPlan:
    kind: str
    change: ShapeChange | None
    source_rows: int = 0
    entities_to_add: int = 0  # no row indexed yet
    entities_to_update: int = 0  # indexed; some record is added, changed or removed
    entities_to_remove: int = 0  # indexed, but their source row is gone
    entities_unchanged: int = 0
    entities_failing: int = 0  # cannot be loaded, validated or flattened (the reindex retries)
    entities_to_reembed: int = 0  # with at least one text to (re-)embed
    records_to_add: int = 0
    records_to_update: int = 0
    records_to_remove: int = 0
    texts: int = 0  # texts of the embeddable records to write (a chunked field: one per chunk)
    distinct_texts: int = 0
    texts_cached: int = 0  # distinct texts already in the embedding cache
    texts_to_embed: int = 0  # distinct texts the model computes
    renames: list[RenameCheck] = field(default_factory=list)
    scan_seconds: float = 0.0
    texts_per_second: float | None = None
    rate_source: str = "none"
    eta_seconds: float | None = None

    @property
    def records_to_write(self) -> int:
        return self.records_to_add + self.records_to_update

    @property
    def nothing_to_do(self) -> bool:
        return not (
            self.entities_to_add
            or self.entities_to_update
            or self.entities_to_remove
            or self.entities_failing
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "entity_kind": self.kind,
            "stale": bool(self.change),
            "schema_change": self.change.as_dict() if self.change else None,
            "source_rows": self.source_rows,
            "entities": {
                "add": self.entities_to_add,
                "update": self.entities_to_update,
                "remove": self.entities_to_remove,
                "unchanged": self.entities_unchanged,
                "failing": self.entities_failing,
                "reembed": self.entities_to_reembed,
            },
            "records": {
                "add": self.records_to_add,
                "update": self.records_to_update,
                "remove": self.records_to_remove,
                "write": self.records_to_write,
            },
            "texts": {
                "records": self.texts,
                "distinct": self.distinct_texts,
                "cached": self.texts_cached,
                "to_embed": self.texts_to_embed,
            },
            "renames": [
                {
                    "old": r.old,
                    "new": r.new,
                    "same_values": r.same_values,
                    "other_values": r.other_values,
                    "confirmed": r.confirmed,
                }
                for r in self.renames
            ],
            "scan_seconds": round(self.scan_seconds, 3),
            "texts_per_second": None
            if self.texts_per_second is None
            else round(self.texts_per_second, 2),
            "rate_source": self.rate_source,
            "eta_seconds": None if self.eta_seconds is None else round(self.eta_seconds, 3),
        }


class _Tally:
    """Accumulates previews into a plan."""

    def __init__(self, plan: ReindexPlan, service: EmbeddingService, pipeline: Pipeline) -> None:
        self.plan = plan
        self.service = service
        self.pipeline = pipeline  # what a record is embedded as (its chunks)
        self.seen: set[str] = set()
        self.cached: set[str] = set()
        self.sample: list[str] = []  # texts to embed, for measuring the model's rate

    def add(self, preview: Preview) -> None:
        plan = self.plan
        failed = {f.entity_id for f in preview.failures}
        for entity in preview.entities:
            stored = preview.stored.get(entity.id, {})
            if entity.id in failed:
                plan.entities_failing += 1
                continue
            if entity.gone:
                if stored:
                    plan.entities_to_remove += 1
                    plan.records_to_remove += len(stored)
                continue
            change = entity.change
            assert change is not None
            self._renames(entity.records, stored)
            if change.is_noop:
                plan.entities_unchanged += 1
                continue
            if stored:
                plan.entities_to_update += 1
            else:
                plan.entities_to_add += 1
            for record in change.upserts:
                if record.path in stored:
                    plan.records_to_update += 1
                else:
                    plan.records_to_add += 1
            plan.records_to_remove += len(change.deletes)
            texts = [
                text
                for r in change.upserts
                if r.embeddable
                for text in self.pipeline.embedding_texts(r)
            ]
            if texts:
                plan.entities_to_reembed += 1
                plan.texts += len(texts)
                self._texts(texts)

    def _texts(self, texts: list[str]) -> None:
        hashes = self.service.text_hashes(texts)
        new = sorted(set(hashes) - self.seen)
        if not new:
            return
        self.seen.update(new)
        cached = (
            self.service.cache.cached(self.service.model_key, new) if self.service.cache else set()
        )
        self.cached |= cached
        for text, hash_ in zip(texts, hashes, strict=True):
            if len(self.sample) >= SAMPLE_TEXTS:
                break
            if hash_ in new and hash_ not in cached:
                self.sample.append(text)

    def _renames(self, records: list[Any], stored: dict[str, str]) -> None:
        for check in self.plan.renames:
            for record in records:
                old_path = rename_path(record.path, check.old, check.new)
                if old_path is None or old_path not in stored:
                    continue
                if content_hash(old_path, record.value, record.value_type) == stored[old_path]:
                    check.same_values += 1
                else:
                    check.other_values += 1

    def finish(self) -> None:
        self.plan.distinct_texts = len(self.seen)
        self.plan.texts_cached = len(self.cached)
        self.plan.texts_to_embed = len(self.seen) - len(self.cached)


def _rate(
    conn: psycopg.Connection, plan: ReindexPlan, embedder: Embedder, sample: list[str]
) -> None:
    """Texts per second: measured now on ``sample`` (texts the reindex will embed), else,
    when there is nothing to measure on, the kind's last jobs."""
    if sample:
        embedder.embed(sample[:1])  # the first call warms the model up
        started = time.perf_counter()
        embedder.embed(sample)
        seconds = max(time.perf_counter() - started, 1e-6)
        plan.texts_per_second = len(sample) / seconds
        plan.rate_source = (
            f"measured now: {len(sample)} of the texts to embed in {seconds:.2f}s (model only)"
        )
    elif (history := jobs.recent_text_rate(conn, plan.kind)) is not None:
        plan.texts_per_second = history.per_second
        plan.rate_source = (
            f"the kind's last {history.jobs} job(s): {history.texts:,} texts in "
            f"{history.seconds:.1f}s, reads and writes included"
        )
    else:
        plan.rate_source = "nothing to embed"
    embedding = (
        plan.texts_to_embed / plan.texts_per_second
        if plan.texts_to_embed and plan.texts_per_second
        else 0.0
    )
    plan.eta_seconds = plan.scan_seconds + embedding


def plan_reindex(
    database_url: str,
    config: IdxrConfig,
    kind_name: str,
    *,
    batch_size: int | None = None,
    embedder: Embedder | None = None,
) -> ReindexPlan:
    """Walk ``kind_name`` as `idxr-pg reindex` would and count its work; writes nothing."""
    entity = config.entity(kind_name)
    batch = batch_size or config.backfill.batch_size
    name = f"idxr-plan {kind_name}"
    with connect(conninfo(database_url, name), autocommit=True) as conn:
        kind = resolve_kind(conn, entity)
        change = schema_state.detect(conn, kind)
        embedder = embedder or load_embedder(config.embedding)
        with EmbeddingCache(conninfo(database_url, f"{name} cache")) as cache:
            service = EmbeddingService(embedder, config.embedding, cache)
            pipeline = Pipeline(kind, service)
            plan = ReindexPlan(kind.name, change)
            plan.renames = [
                RenameCheck(old, new) for old, new in (change.renamed if change else [])
            ]
            tally = _Tally(plan, service, pipeline)
            started = time.perf_counter()
            plan.source_rows = source.count_keys(conn, kind)
            with connect(conninfo(database_url, f"{name} keys"), autocommit=True) as keys:
                pages = source.iter_key_pages(
                    keys, kind, after=None, page_size=max(batch, MIN_PAGE_SIZE)
                )
                for page in pages:
                    for ids in chunks(page, batch):
                        tally.add(pipeline.preview(conn, ids))
            with connect(conninfo(database_url, f"{name} sweep"), vector=False) as sweep:
                for ids in source.iter_orphan_batches(sweep, kind, batch):
                    tally.add(pipeline.preview(conn, ids))
            tally.finish()
            plan.scan_seconds = time.perf_counter() - started
        _rate(conn, plan, embedder, tally.sample)
    return plan
