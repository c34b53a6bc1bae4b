"""Counts: the one immutable tally shared by a batch, a worker's totals and a job."""

from __future__ import annotations

import dataclasses

import pytest

from idxr_pg.records.counts import Counts


def test_counts_add_field_by_field_and_start_at_zero():
    a = Counts(batches=1, entities=3, indexed=2, unchanged=1, texts_embedded=5)
    b = Counts(batches=1, entities=2, deleted=1, skipped=1, cache_hits=4, records_deleted=7)
    total = a + b
    assert total == Counts(
        batches=2,
        entities=5,
        indexed=2,
        unchanged=1,
        deleted=1,
        skipped=1,
        texts_embedded=5,
        cache_hits=4,
        records_deleted=7,
    )
    assert Counts() + a == a
    assert sum([a, b], Counts()) == total


def test_counts_are_immutable():
    counts = Counts(entities=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        counts.entities = 2  # type: ignore[misc]
    assert counts.replace(entities=0) == Counts() and counts.entities == 1


def test_adding_something_else_is_refused():
    with pytest.raises(TypeError):
        Counts() + 1  # type: ignore[operator]


def test_wrote_means_a_row_written_or_removed():
    assert not Counts(entities=3, unchanged=3).wrote
    assert Counts(records_written=1).wrote and Counts(records_deleted=1).wrote


def test_as_dict_keeps_the_output_keys_in_order():
    assert list(Counts().as_dict()) == [
        "batches",
        "entities",
        "indexed",
        "unchanged",
        "deleted",
        "skipped",
        "failed",
        "dead_lettered",
        "texts_embedded",
        "cache_hits",
        "records_written",
        "records_deleted",
    ]
