"""`--where` parsing and Filter validation (no database)."""

from __future__ import annotations

import pytest

from idxr_pg.search import Filter, SearchError, parse_where, search


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        (
            "subscription.product.basic_block.value>40",
            {"path": "subscription.product.basic_block.value", "op": ">", "value": 40},
        ),
        ("*.start_date >= 2024-01-01", {"path": "*.start_date", "op": ">=", "value": "2024-01-01"}),
        ("*.status=on hold", {"path": "*.status", "op": "=", "value": "on hold"}),
        ('*.code:string="40"', {"path": "*.code", "op": "=", "value": "40", "type": "string"}),
        ("*.code='007'", {"path": "*.code", "op": "=", "value": "007"}),
        ("a.b<>1.5", {"path": "a.b", "op": "!=", "value": 1.5}),
        ("a.b!=-3", {"path": "a.b", "op": "!=", "value": -3}),
        ("a.!legacy.*.price<=1e3", {"path": "a.!legacy.*.price", "op": "<=", "value": 1000.0}),
        ("*.active=TRUE", {"path": "*.active", "op": "=", "value": True}),
        ("subscription.notes", {"path": "subscription.notes", "op": "exists"}),
        (
            "subscription.*{1,2}.seats:integer",
            {"path": "subscription.*{1,2}.seats", "op": "exists", "type": "integer"},
        ),
    ],
)
def test_parse_where(expression, expected):
    assert parse_where(expression).to_json() == expected


@pytest.mark.parametrize("expression", ["", "  ", "a.b>", "a.b = ", ">3", "a b>3"])
def test_unparseable_where_is_a_clear_error(expression):
    with pytest.raises(SearchError, match="cannot parse filter"):
        parse_where(expression)


def test_filter_validation():
    with pytest.raises(SearchError, match="unknown operator '~'"):
        Filter("a.b", "~", 3)
    with pytest.raises(SearchError, match="'>' needs a value"):
        Filter("a.b", ">")
    with pytest.raises(SearchError, match="'exists' takes no value"):
        Filter("a.b", "exists", 3)
    with pytest.raises(SearchError, match="unknown value type 'number'"):
        parse_where("a.b:number>3")
    assert Filter("a.b", ">", 3, type="integer").to_json()["type"] == "integer"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"text": ""}, "query text is empty"),
        ({"text": "x", "k": 0}, "between 1 and 1000, got 0"),
        ({"text": "x", "k": 10_000}, "got 10000"),
        ({"text": "x", "k": True}, "got True"),
        ({"text": "x", "where": [3]}, "expected a string, a Filter or a mapping"),
    ],
)
def test_search_rejects_bad_arguments_before_touching_the_database(kwargs, message):
    with pytest.raises(SearchError, match=message):
        search(database_url="postgresql://nobody@256.0.0.1:1/none", **kwargs)
