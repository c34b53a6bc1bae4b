"""Comparing installed capture readers with the config's (capture/drift.py)."""

from idxr_pg.capture.drift import compare_readers


def reader(origin: str, key: str = "id", columns: list[str] | None = None) -> dict:
    return {"origin": origin, "key": key, "columns": columns}


def test_equal_readers_have_no_difference():
    same = [reader("table", columns=["a", "b"]), reader("watch[0]", "x_id")]
    assert (
        compare_readers(same, [reader("table", columns=["b", "a"]), reader("watch[0]", "x_id")])
        == []
    )


def test_columns_added_and_removed_are_named():
    (what,) = compare_readers(
        [reader("table", columns=["a", "b"])], [reader("table", columns=["a", "c"])]
    )
    assert what == "table: columns [a, b] installed, [a, c] configured (+c, -b)"
    (what,) = compare_readers([reader("table")], [reader("table", columns=["a"])])
    assert what == "table: columns all columns installed, [a] configured"


def test_keys_and_watch_entries():
    assert compare_readers([reader("watch[0]", "a_id")], [reader("watch[0]", "b_id")]) == [
        "watch[0]: key 'a_id' installed, 'b_id' configured"
    ]
    assert compare_readers([], [reader("watch[1]", "t_id")]) == [
        "watch[1] (key 't_id') is configured but not installed"
    ]
    assert compare_readers([reader("watch[1]", "t_id")], []) == [
        "watch[1] (key 't_id') is installed but no longer configured"
    ]
