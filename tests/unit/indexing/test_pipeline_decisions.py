"""The pipeline's batching decisions without a database: what is embedded, what is written,
what counts as unchanged, deleted, skipped or failed."""

from __future__ import annotations

import numpy as np

from idxr_pg.db.leases import Leases
from idxr_pg.embedding import EmbeddedText
from idxr_pg.indexing.failures import EntityFailure
from idxr_pg.indexing.pipeline import (
    BatchResult,
    EntityWork,
    embedding_requests,
    plan_writes,
    settle,
)
from idxr_pg.records.counts import Counts
from idxr_pg.records.diff import diff
from idxr_pg.records.record import FieldRecord, ValueType


def record(path: str, value: str, *, embeddable: bool = True) -> FieldRecord:
    value_type = ValueType.STRING if embeddable else ValueType.INTEGER
    return FieldRecord.create(path, value, value_type, embeddable)


TITLE = record("doc.title", "Solar panels")
BODY = record("doc.body", "How we halved the bill")
VIEWS = record("doc.views", "10", embeddable=False)


def entity(entity_id: str, records: list[FieldRecord], stored: dict[str, str]) -> EntityWork:
    work = EntityWork(entity_id, document={"id": entity_id}, records=records)
    work.change = diff(records, stored)
    return work


def test_only_new_or_changed_embeddable_texts_are_embedded():
    new = entity("1", [TITLE, BODY, VIEWS], {})
    same = entity("2", [TITLE], {TITLE.path: TITLE.content_hash})
    changed = entity("3", [TITLE, BODY], {TITLE.path: TITLE.content_hash, BODY.path: "old"})
    numbers_only = entity("4", [VIEWS], {})
    gone = EntityWork("5")
    assert embedding_requests([new, same, changed, numbers_only, gone]) == {
        "1": [TITLE, BODY],
        "3": [BODY],
    }


def test_failed_entities_are_not_embedded():
    assert embedding_requests([entity("1", [TITLE], {})], failed=["1"]) == {}


def test_plan_writes_upserts_changes_deletes_stale_paths_and_gone_entities():
    vector = EmbeddedText(np.ones(3, dtype=np.float32), truncation=None, cached=False)
    new = entity("1", [TITLE, VIEWS], {})
    new.vectors[TITLE.path] = vector
    same = entity("2", [TITLE], {TITLE.path: TITLE.content_hash})
    shrunk = entity("3", [TITLE], {TITLE.path: TITLE.content_hash, "doc.body": "h"})
    gone = EntityWork("4")

    plan = plan_writes("doc", [new, same, shrunk, gone])

    assert [row[:3] for row in plan.rows] == [("doc", "1", "doc.title"), ("doc", "1", "doc.views")]
    title_row, views_row = plan.rows
    assert title_row[3:6] == ("Solar panels", "string", TITLE.content_hash)
    assert title_row[6] is vector.vector and views_row[6] is None  # numbers carry no vector
    assert plan.stale == [("3", "doc.body")]
    assert plan.gone == ["4"]
    assert plan.done_ids == ["1", "2", "3", "4"]
    assert plan.counts == Counts(indexed=2, unchanged=1, deleted=1)


def test_an_unchanged_entity_plans_no_row_at_all():
    plan = plan_writes("doc", [entity("2", [TITLE], {TITLE.path: TITLE.content_hash})])
    assert (plan.rows, plan.stale, plan.gone) == ([], [], [])
    assert plan.counts == Counts(unchanged=1)


def test_settle_skips_refused_and_lost_leases_and_drops_their_failures():
    leased = Leases.of("doc", "me", ["1", "2", "3", "4"], ["1", "2", "3"])  # "4": refused
    failures = [
        EntityFailure("2", "validate", ValueError("bad")),
        EntityFailure("3", "embed", RuntimeError("lost meanwhile")),
    ]
    result = settle(
        "doc",
        leased,
        held=["1", "2"],  # "3" was taken over while it embedded
        done_ids=["1"],
        failures=failures,
        counts=Counts(indexed=1, texts_embedded=2, records_written=3),
    )
    assert isinstance(result, BatchResult)
    assert result.skipped_ids == ["4", "3"] and result.done_ids == ["1"]
    assert [f.entity_id for f in result.failures] == ["2"]
    assert result.counts == Counts(
        batches=1,
        entities=4,
        indexed=1,
        skipped=2,
        failed=1,
        texts_embedded=2,
        records_written=3,
    )
    # Each count also reads as an attribute of the result.
    assert (result.entities, result.indexed, result.skipped, result.failed) == (4, 1, 2, 1)
    assert result.wrote


def test_entity_counts_add_up_to_the_batch():
    leased = Leases.of("doc", "me", ["1", "2", "3"], ["1", "2", "3"])
    plan = plan_writes("doc", [entity("1", [TITLE], {}), EntityWork("2")])
    result = settle(
        "doc",
        leased,
        held=["1", "2", "3"],
        done_ids=plan.done_ids,
        failures=[EntityFailure("3", "load", OSError("x"))],
        counts=plan.counts,
    )
    c = result.counts
    assert c.entities == c.indexed + c.unchanged + c.deleted + c.skipped + c.failed == 3


def test_plan_writes_a_chunked_field_as_one_row_per_chunk_and_trims_a_rewritten_one():
    from idxr_pg.embedding.chunking import Chunk

    long_body = record("doc.body", "alpha beta gamma delta")
    work = entity("1", [long_body], {long_body.path: "old"})
    work.stored_paths = frozenset({long_body.path})
    vectors = [EmbeddedText(np.full(3, i, dtype=np.float32), None, False) for i in range(2)]
    work.chunks[long_body.path] = [(Chunk(0, 0, 16), vectors[0]), (Chunk(1, 11, 22), vectors[1])]
    work.vectors[long_body.path] = vectors[0]
    plan = plan_writes("doc", [work])
    assert [(r[2], r[3], r[5], r[7], r[8], r[9], r[10]) for r in plan.rows] == [
        ("doc.body", long_body.value, long_body.content_hash, None, 0, 0, 16),
        ("doc.body", "", long_body.content_hash, None, 1, 11, 22),
    ]
    assert plan.rows[1][6] is vectors[1].vector
    assert plan.trims == [("1", "doc.body", 2)]
    fresh = entity("2", [TITLE], {})
    assert plan_writes("doc", [fresh]).trims == []  # nothing stored: nothing to trim
