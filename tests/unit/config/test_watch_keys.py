"""Watch keys and source kinds are checked at config load (issue 12, items 8 and 9).

A watch ``key`` that is not a column is one SQL expression: comments, semicolons, dollar
quotes and unbalanced parentheses are refused before anything reaches the database, with one
line naming the entity, the watch entry and the key.
"""

from __future__ import annotations

import pytest

from idxr_pg.config import ConfigError, parse_config

CRAFTED = (
    "item_id)::text FROM app.children UNION ALL "
    "SELECT pg_catalog.nextval('app.children_id_seq')::text --"
)


def config(key: str, **watch: object) -> dict:
    return {
        "entities": [
            {
                "name": "parent",
                "model": "app.models:Parent",
                "table": "app.parents",
                "key": "id",
                "watch": [{"table": "app.children", "key": key, **watch}],
            }
        ]
    }


def refused(key: str) -> str:
    with pytest.raises(ConfigError) as raised:
        parse_config(config(key), "idxr.yaml")
    return str(raised.value)


def test_the_crafted_key_is_refused_at_load_naming_entity_watch_and_key():
    message = refused(CRAFTED)
    assert "entity 'parent', watch[0] (app.children): key" in message
    assert "is not one SQL expression: unbalanced parentheses" in message
    assert repr(CRAFTED) in message
    assert "--" in refused("item_id::text -- x") and "comments" in refused("item_id::text -- x")


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("parent_id -- trailing", "comment"),
        ("parent_id /* c */", "comment"),
        ("parent_id; DROP TABLE app.parents", "';'"),
        ("(parent_id", "parenthes"),
        ("parent_id)", "parenthes"),
        ("(a)) + ((b", "parenthes"),
        ("$x$ a $x$", "dollar"),
        ("'unterminated", "unterminated"),
        ('"unterminated', "unterminated"),
    ],
)
def test_keys_that_are_not_one_expression_are_refused(key, reason):
    message = refused(key)
    assert "entity 'parent', watch[0] (app.children): key" in message
    assert reason in message


@pytest.mark.parametrize(
    "key",
    [
        "parent_id",
        "(payload->>'subscription')::uuid",
        "(payload->>'a--b; /* (')::uuid",  # inside a string literal
        '"odd -- name"',  # inside a quoted identifier
        "E'it\\'s -- fine' || parent_id::text",
        "coalesce(a, (b + 1))",
    ],
)
def test_expressions_with_those_characters_inside_literals_load(key):
    loaded = parse_config(config(key), "idxr.yaml")
    assert loaded.entities[0].watch[0].key == key


def test_trusted_key_is_a_boolean_defaulting_to_false():
    assert parse_config(config("parent_id"), "t").entities[0].watch[0].trusted_key is False
    trusted = parse_config(config("app.f(parent_id)", trusted_key=True), "t")
    assert trusted.entities[0].watch[0].trusted_key is True
    with pytest.raises(ConfigError, match="trusted_key"):
        parse_config(config("parent_id", trusted_key="maybe"), "t")


def test_trusted_key_does_not_lift_the_syntax_check():
    with pytest.raises(ConfigError, match="comment"):
        parse_config(config("parent_id --", trusted_key=True), "t")


def test_trusted_source_opts_in_to_views_and_defaults_to_false():
    plain = parse_config(config("parent_id"), "t").entities[0]
    assert plain.trusted_source is False
    data = config("parent_id")
    data["entities"][0]["trusted_source"] = True
    assert parse_config(data, "t").entities[0].trusted_source is True
