import pytest

from idxr_pg.records.diff import Diff, diff
from idxr_pg.records.record import ValueType, make_record


def rec(path: str, value: str) -> object:
    return make_record(path, value, ValueType.STRING, True)


def stored_of(*records) -> dict[str, str]:
    return {r.path: r.content_hash for r in records}


A, B, C = rec("k.a", "alpha"), rec("k.b", "beta"), rec("k.c", "gamma")


def test_everything_new_when_nothing_stored():
    result = diff([A, B], {})
    assert result == Diff(upserts=[A, B], unchanged=[], deletes=[])
    assert not result.is_noop


def test_unchanged_records_are_not_upserted():
    result = diff([A, B], stored_of(A, B))
    assert result == Diff(upserts=[], unchanged=[A, B], deletes=[])
    assert result.is_noop


def test_changed_value_is_upserted():
    changed = rec("k.b", "beta v2")
    result = diff([A, changed], stored_of(A, B))
    assert result.upserts == [changed]
    assert result.unchanged == [A]
    assert result.deletes == []


def test_changed_type_alone_is_upserted():
    as_int = make_record("k.n", "1", ValueType.INTEGER, False)
    as_str = make_record("k.n", "1", ValueType.STRING, False)
    assert diff([as_str], stored_of(as_int)).upserts == [as_str]


def test_removed_paths_are_deleted_sorted():
    result = diff([B], stored_of(C, A, B))
    assert result.deletes == ["k.a", "k.c"]
    assert result.unchanged == [B]
    assert not result.is_noop


def test_all_kinds_at_once_preserve_current_order():
    new, changed = rec("k.d", "delta"), rec("k.a", "alpha v2")
    result = diff([new, B, changed], stored_of(A, B, C))
    assert result.upserts == [new, changed]
    assert result.unchanged == [B]
    assert result.deletes == ["k.c"]


def test_force_upserts_every_current_record():
    result = diff([A, B], stored_of(A, B, C), force=True)
    assert result.upserts == [A, B]
    assert result.unchanged == []
    assert result.deletes == ["k.c"]


def test_empty_current_deletes_everything():
    assert diff([], stored_of(A, B)).deletes == ["k.a", "k.b"]
    assert diff([], {}).is_noop


def test_duplicate_current_paths_are_rejected():
    with pytest.raises(ValueError, match="k.a"):
        diff([A, rec("k.a", "other")], {})
