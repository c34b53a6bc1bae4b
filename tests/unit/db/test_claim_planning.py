"""The pure parts of claiming and leasing: which entities a claim takes, which rows go with them."""

from __future__ import annotations

from idxr_pg.db.leases import Leases
from idxr_pg.db.queue import Claim, add_rows, choose_entities, keep_leased


def test_the_first_distinct_entities_are_chosen_with_all_their_ready_rows():
    ready = [(1, "a"), (2, "b"), (3, "a"), (4, "c"), (5, "b"), (6, "d")]
    assert choose_entities(ready, 2) == {"a": [1, 3], "b": [2, 5]}
    assert choose_entities(ready, 10) == {"a": [1, 3], "b": [2, 5], "c": [4], "d": [6]}
    assert choose_entities([], 5) == {}


def test_chosen_order_follows_the_ready_order():
    assert list(choose_entities([(9, "z"), (3, "y"), (1, "x")], 3)) == ["z", "y", "x"]


def test_only_the_entities_leased_stay_in_the_claim():
    chosen = {"a": [1, 3], "b": [2], "c": [4]}
    assert keep_leased(chosen, ["c", "a"]) == {"a": [1, 3], "c": [4]}
    assert keep_leased(chosen, []) == {}
    assert chosen == {"a": [1, 3], "b": [2], "c": [4]}  # not modified


def test_more_rows_join_their_entity_and_others_are_ignored():
    rows = {"a": [1], "c": [4]}
    assert add_rows(rows, [(7, "a"), (8, "b"), (9, "c"), (10, "a")]) == {
        "a": [1, 7, 10],
        "c": [4, 9],
    }
    assert rows == {"a": [1], "c": [4]}


def test_a_claim_hands_over_the_leases_of_exactly_its_entities():
    claim = Claim("article", "w1", {"2": [10, 12], "1": [11]})
    assert claim.entity_ids == ["2", "1"] and len(claim) == 2
    assert claim.row_ids(["1", "2", "nope"]) == [11, 10, 12]
    leased = claim.leases
    assert (leased.kind, leased.owner, leased.ids, leased.refused) == (
        "article",
        "w1",
        ["2", "1"],
        [],
    )
    assert not Claim("article", "w1", {})


def test_leases_keep_the_request_order_and_name_the_refused():
    leased = Leases.of("article", "me", ["3", "1", "2", "1"], ["2", "3", "9"])
    assert leased.requested == ("3", "1", "2")
    assert leased.ids == ["3", "2"]  # held, in request order; "9" was never asked for
    assert leased.refused == ["1"]
