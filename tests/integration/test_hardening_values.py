"""Hardening (issue 12) of values and texts through the real pipeline: numbers keep their
precision, excluded fields stay out of the index, NUL characters, huge texts."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import numpy as np
import psycopg
import pytest
from pydantic import BaseModel, Field, Json

from idxr_pg.config import EmbeddingSettings
from idxr_pg.db import leases as db_leases
from idxr_pg.db.connection import connect
from idxr_pg.embedding import DeterministicEmbedder, EmbeddingService, EmbedRequest, load_embedder
from idxr_pg.embedding.truncation import char_bound, precut
from idxr_pg.indexing.pipeline import Pipeline
from idxr_pg.indexing.registry import register, resolve_kinds
from idxr_pg.records.record import ValueType, content_hash
from tests.integration.worker_support import execute, fetch_index, make_config

# --------------------------------------------------------------------------- models


class Price(BaseModel):
    id: int
    big: Decimal
    money: Decimal
    fine: Decimal
    huge_int: int
    approx: float
    anything: Any = None


PRICES_DDL = """
CREATE TABLE public.prices (
    id       integer PRIMARY KEY,
    big      numeric NOT NULL,
    money    numeric(12, 2) NOT NULL,
    fine     numeric(38, 10) NOT NULL,
    huge_int numeric NOT NULL,
    approx   numeric NOT NULL,
    anything numeric
);
"""


def price_entity(**overrides: Any) -> dict[str, Any]:
    entity = {
        "name": "price",
        "model": "tests.integration.test_hardening_values:Price",
        "table": "public.prices",
        "key": "id",
    }
    entity.update(overrides)
    return entity


def run_pipeline(url: str, tmp_path, entity: dict[str, Any], ids: list[str], **embedder_kw):
    """Index ``ids`` of the one configured kind with the deterministic embedder."""
    config = make_config(tmp_path, [entity])
    embedder = DeterministicEmbedder(**embedder_kw)
    with connect(url, autocommit=True) as conn:
        kinds = resolve_kinds(conn, config)
        register(conn, kinds.values(), embedder)
        kind = kinds[entity["name"]]
        pipeline = Pipeline(kind, EmbeddingService(embedder, config.embedding))
        leased = db_leases.acquire(conn, kind.name, ids, "test", 30)
        return pipeline.index(conn, leased)


# --------------------------------------------------------------------------- item 2


def test_numbers_keep_their_precision_through_the_pipeline(isolated_database_url, tmp_path):
    url = isolated_database_url
    execute(url, PRICES_DDL)
    execute(
        url,
        "INSERT INTO prices VALUES (1, 12345678901234567.89, 29.90, 1234567890123456789.0123456789,"
        " 123456789012345678901234567890, 0.1, 98765432109876543.21),"
        " (2, 0.0000000001, 0.00, 0.0000000001, 9007199254740993, 2.50, NULL)",
    )
    result = run_pipeline(url, tmp_path, price_entity(), ["1", "2"])
    assert result.failed == 0, result.failures
    values = {
        key: (row["value"], row["value_type"]) for key, row in fetch_index(url, "price").items()
    }

    assert values[("1", "price.big")] == ("12345678901234567.89", "decimal")
    assert values[("1", "price.money")] == ("29.90", "decimal")
    assert values[("1", "price.fine")] == ("1234567890123456789.0123456789", "decimal")
    assert values[("1", "price.huge_int")] == ("123456789012345678901234567890", "integer")
    assert values[("1", "price.anything")] == ("98765432109876543.21", "decimal")
    assert values[("2", "price.big")] == ("0.0000000001", "decimal")
    assert values[("2", "price.money")] == ("0.00", "decimal")
    assert values[("2", "price.fine")] == ("0.0000000001", "decimal")
    assert values[("2", "price.huge_int")] == ("9007199254740993", "integer")
    # A field declared float gets a float: the user's declared type decides.
    assert values[("1", "price.approx")] == ("0.1", "float")
    assert values[("2", "price.approx")] == ("2.5", "float")
    # The stored text is exactly the source's numeric text.
    with psycopg.connect(url) as conn:
        source = dict(conn.execute("SELECT id::text, big::text FROM prices").fetchall())
    assert values[("1", "price.big")][0] == source["1"]


def test_document_sql_numbers_keep_their_precision(isolated_database_url, tmp_path):
    url = isolated_database_url
    execute(url, PRICES_DDL)
    execute(url, "INSERT INTO prices VALUES (1, 12345678901234567.89, 29.90, 0.5, 1, 1.0, 7.10)")
    document = (
        "SELECT p.id, jsonb_build_object('id', p.id, 'big', p.big, 'money', p.money, 'fine',"
        " p.fine, 'huge_int', p.huge_int, 'approx', p.approx, 'anything', p.anything)"
        " FROM public.prices p WHERE p.id = ANY(%(keys)s::int[])"
    )
    result = run_pipeline(url, tmp_path, price_entity(document=document), ["1"])
    assert result.failed == 0, result.failures
    rows = fetch_index(url, "price")
    assert rows[("1", "price.big")]["value"] == "12345678901234567.89"
    assert rows[("1", "price.money")]["value"] == "29.90"
    assert rows[("1", "price.anything")]["value"] == "7.10"


# --------------------------------------------------------------------------- item 4


class Note(BaseModel):
    id: int
    title: str
    payload: Json[dict[str, str]]


NOTES_DDL = "CREATE TABLE public.notes (id integer PRIMARY KEY, title text NOT NULL, payload text)"


def note_entity() -> dict[str, Any]:
    return {
        "name": "note",
        "model": "tests.integration.test_hardening_values:Note",
        "table": "public.notes",
        "key": "id",
    }


def test_nul_in_a_string_is_stripped_and_the_entity_indexed(isolated_database_url, tmp_path):
    """A JSON text column decoded by the model can carry U+0000, which PostgreSQL text cannot
    store: the record builder strips it and hashes the stored value."""
    url = isolated_database_url
    execute(url, NOTES_DDL)
    execute(
        url,
        "INSERT INTO notes VALUES (1, 'Fine', %s), (2, 'Also fine', '{\"note\": \"plain\"}')",
        ['{"note": "before\\u0000after", "only": "\\u0000"}'],
    )
    result = run_pipeline(url, tmp_path, note_entity(), ["1", "2"])
    assert result.failed == 0, result.failures
    assert sorted(result.done_ids) == ["1", "2"]
    rows = fetch_index(url, "note")
    note = rows[("1", "note.payload.note")]
    assert note["value"] == "beforeafter"
    assert note["content_hash"] == content_hash(
        "note.payload.note", "beforeafter", ValueType.STRING
    )
    assert note["embedding"] is not None
    only = rows[("1", "note.payload.only")]
    assert (only["value"], only["embedding"]) == ("", None)
    assert rows[("2", "note.payload.note")]["value"] == "plain"


# --------------------------------------------------------------------------- item 6


@pytest.mark.model
@pytest.mark.parametrize("strategy", ["end", "middle_out"])
def test_a_5_mb_text_embeds_in_bounded_time_as_its_pre_cut_text(monkeypatch, strategy):
    """The real model: a 5 MB field is cut by characters before it is tokenized, so the
    tokenizer never sees more than the bound, and the vector is that of the pre-cut text."""
    settings = EmbeddingSettings(truncation=strategy)
    embedder = load_embedder(settings)
    longest = [0]
    count_tokens = embedder.count_tokens

    def spy(texts):
        longest[0] = max([longest[0], *map(len, texts)])
        return count_tokens(texts)

    monkeypatch.setattr(embedder, "count_tokens", spy)
    words = [
        "solar",
        "roof",
        "panel",
        "inverter",
        "battery",
        "meter",
        "grid",
        "tariff",
        "export",
        "import",
    ]
    huge = "doc.body: " + " ".join(words[i % len(words)] for i in range(800_000))
    assert len(huge) > 5_000_000
    service = EmbeddingService(embedder, settings)

    started = time.monotonic()
    (result,) = service.embed([EmbedRequest("doc:1", huge)])
    elapsed = time.monotonic() - started

    bound = char_bound(embedder.max_tokens)
    assert longest[0] <= bound + 1
    assert elapsed < 20, f"embedding a 5 MB text took {elapsed:.1f} s"
    assert result.truncation == strategy
    pre_cut = precut(huge, bound, strategy)
    expected = embedder.embed([embedder.truncate(pre_cut, embedder.max_tokens, strategy)])[0]
    assert np.allclose(result.vector, expected, atol=1e-6)


# --------------------------------------------------------------------------- item 3


class Account(BaseModel):
    id: int
    name: str
    password: str = Field(exclude=True)
    notes: str
    profile: Json[dict[str, Any]]


ACCOUNTS_DDL = """
CREATE TABLE public.accounts (
    id integer PRIMARY KEY, name text NOT NULL, password text NOT NULL, notes text NOT NULL,
    profile text NOT NULL
)
"""


def test_excluded_fields_and_paths_are_neither_indexed_nor_embedded(
    isolated_database_url, tmp_path
):
    url = isolated_database_url
    execute(url, ACCOUNTS_DDL)
    execute(
        url,
        "INSERT INTO accounts VALUES (1, 'Ada', 'hunter2', 'owes us money', %s)",
        ['{"bio": "Mathematician", "internal": {"score": "risky", "flag": "watch"}}'],
    )
    entity = {
        "name": "account",
        "model": "tests.integration.test_hardening_values:Account",
        "table": "public.accounts",
        "key": "id",
        "exclude_paths": ["account.notes", "*.internal.*"],
    }
    result = run_pipeline(url, tmp_path, entity, ["1"])
    assert result.failed == 0, result.failures
    rows = fetch_index(url, "account")
    assert sorted(path for _, path in rows) == [
        "account.id",
        "account.name",
        "account.profile.bio",
    ]
    values = " ".join(row["value"] for row in rows.values())
    assert "hunter2" not in values and "owes" not in values and "risky" not in values


LQUERY_CASES = [
    ("a.b", "a.b"),
    ("a.*", "a"),
    ("*.c", "a.b.c"),
    ("*{1}.c", "a.b.c"),
    ("*{2}.c", "a.b.c"),
    ("*{1,}.b", "a.b"),
    ("*{,1}.b", "x.y.b"),
    ("a.b{2}.c", "a.b.b.c"),
    ("a.b{1,2}.c", "a.b.b.b.c"),
    ("a.!b.c", "a.x.c"),
    ("a.!b.c", "a.b.c"),
    ("a.!b|x.c", "a.x.c"),
    ("a.!b{2}.c", "a.x.y.c"),
    ("a.pass*", "a.password"),
    ("a.PASS*@", "a.password"),
    ("a.Pass@", "a.pASS"),
    ("a.secret%", "a.my_secret_key"),
    ("a.secret_k*%", "a.my_secret_key"),
    ("a.key_secret%", "a.my_secret_key"),
    ("a.secret%", "a.secretkey"),
    ("a.sec*%", "a.my_secretkey"),
    ("*.x.*", "x"),
    ("*.x.*", "a.x.b.x"),
    ("*.*", "a"),
    ("a|b.*{0}", "b"),
    ("*.!x", "x"),
    ("*.!x", "a.x"),
]


def test_the_lquery_matcher_agrees_with_postgresql(database_url):
    from idxr_pg.records.lquery import compile_lquery

    with psycopg.connect(database_url) as conn:
        for pattern, path in LQUERY_CASES:
            expected = conn.execute("SELECT %s::ltree ~ %s::lquery", [path, pattern]).fetchone()[0]
            assert compile_lquery(pattern)(path) is expected, (pattern, path)


# --------------------------------------------------------------------------- server limits


class Tree(BaseModel):
    id: int
    title: str
    attrs: dict[str, Any] | None = None


TREES_DDL = "CREATE TABLE public.trees (id integer PRIMARY KEY, title text NOT NULL, attrs jsonb)"


def test_a_path_past_the_btree_limit_fails_its_entity_alone(isolated_database_url, tmp_path):
    """An ltree path over PostgreSQL's 2704-byte btree row limit raises ProgramLimitExceeded (an
    OperationalError in psycopg): that entity fails at the write stage, the others are indexed."""
    url = isolated_database_url
    execute(url, TREES_DDL)
    deep: dict[str, Any] = {"leaf": "x"}
    for level in range(60):
        deep = {f"k{level}_" + "a" * 240: deep}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO trees VALUES (1, 'first', NULL), (2, 'too deep', %s), (3, 'third', NULL)",
            [psycopg.types.json.Jsonb(deep)],
        )
    entity = {
        "name": "tree",
        "model": "tests.integration.test_hardening_values:Tree",
        "table": "public.trees",
        "key": "id",
        "max_depth": 100,
    }
    result = run_pipeline(url, tmp_path, entity, ["1", "2", "3"])

    assert [(f.entity_id, f.stage) for f in result.failures] == [("2", "write")]
    assert sorted(result.done_ids) == ["1", "3"]
    indexed = {entity_id for entity_id, _ in fetch_index(url, "tree")}
    assert indexed == {"1", "3"}
