"""Hardening of search (issue 12): bounded structured filters, clear errors for bad k and a zero
query vector. Over real PostgreSQL, with a small synthetic index (no model)."""

from __future__ import annotations

import time

import psycopg
import pytest

from idxr_pg.db.connection import connect
from idxr_pg.search import MAX_FILTERS, SearchError, search_vector

DIMS = 384
QUERY = "[" + ",".join(["0.1"] * DIMS) + "]"
ZERO = "[" + ",".join(["0"] * DIMS) + "]"
VECTOR = [0.1] * DIMS  # QUERY, for the Python API


@pytest.fixture
def small_index(isolated_database_url: str) -> str:
    """20 entities of kind 'item', each with an embedded name and an integer rank."""
    with connect(isolated_database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO idxr.entity_kinds (name) VALUES ('item')")
        conn.execute(
            """
            INSERT INTO idxr.search_index
                (entity_kind, entity_id, path, value, value_type, content_hash, embedding)
            SELECT 'item', n::text, 'item.name'::ltree, 'item ' || n, 'string'::idxr.value_type,
                   md5('n' || n),
                   (SELECT array_agg(random() - 0.5) FROM generate_series(1, %(dims)s)
                     WHERE n IS NOT NULL)::vector
              FROM generate_series(1, 20) n
            UNION ALL
            SELECT 'item', n::text, 'item.rank'::ltree, n::text, 'integer'::idxr.value_type,
                   md5('r' || n), NULL
              FROM generate_series(1, 20) n
            """,
            {"dims": DIMS},
        )
        conn.execute("ANALYZE idxr.search_index")
    return isolated_database_url


def conditions(count: int) -> list[dict]:
    """``count`` conditions, all true for items ranked 5 and above."""
    return [{"path": "item.rank", "op": ">=", "value": 5 - i % 5} for i in range(count)]


def test_the_filter_cap_is_the_sql_one(small_index):
    with connect(small_index, autocommit=True) as conn:
        assert conn.execute("SELECT idxr.max_search_filters()").fetchone()[0] == MAX_FILTERS
    assert MAX_FILTERS == 32


def test_the_most_filters_allowed_plan_and_run_quickly(small_index):
    with connect(small_index, autocommit=True) as conn:
        for function in ("search", "search_entities"):
            started = time.monotonic()
            rows = conn.execute(
                f"SELECT entity_id FROM idxr.{function}(%s::vector, k => 100, filters => %s)",
                [QUERY, psycopg.types.json.Jsonb(conditions(MAX_FILTERS))],
            ).fetchall()
            elapsed = time.monotonic() - started
            assert sorted(int(r[0]) for r in rows) == list(range(5, 21))
            assert elapsed < 5, f"{function} with {MAX_FILTERS} filters took {elapsed:.1f} s"
    started = time.monotonic()
    hits = search_vector(VECTOR, k=100, where=conditions(MAX_FILTERS), database_url=small_index)
    assert sorted(int(h.entity_id) for h in hits) == list(range(5, 21))
    assert time.monotonic() - started < 5


def test_filters_still_mean_every_condition_on_some_record(small_index):
    where = [
        {"path": "item.rank", "op": ">", "value": 10},
        {"path": "item.rank", "op": "<", "value": 13},
        {"path": "item.name", "op": "exists"},
        {"path": "item.name", "value": "item 12", "type": "string"},
    ]
    hits = search_vector(VECTOR, k=100, where=where, database_url=small_index)
    assert [h.entity_id for h in hits] == ["12"]
    assert search_vector(VECTOR, k=100, where=["item.missing"], database_url=small_index) == []


def test_one_filter_too_many_is_refused(small_index):
    too_many = psycopg.types.json.Jsonb(conditions(MAX_FILTERS + 1))
    with connect(small_index, autocommit=True) as conn, pytest.raises(psycopg.Error) as excinfo:
        conn.execute("SELECT * FROM idxr.search(%s::vector, filters => %s)", [QUERY, too_many])
    message = str(excinfo.value).splitlines()[0]
    assert message == f"idxr: at most {MAX_FILTERS} filters per search, got {MAX_FILTERS + 1}"
    with pytest.raises(SearchError, match=f"at most {MAX_FILTERS} filters per search, got 33"):
        search_vector(VECTOR, where=conditions(MAX_FILTERS + 1), database_url=small_index)


def test_the_cli_refuses_one_filter_too_many_in_one_line(small_index):
    from click.testing import CliRunner

    from idxr_pg.cli import main

    where = [arg for i in range(MAX_FILTERS + 1) for arg in ("--where", f"item.rank>{i}")]
    result = CliRunner().invoke(main, ["--database-url", small_index, "search", "x", *where])
    assert result.exit_code == 1
    assert result.output.strip() == f"error: at most {MAX_FILTERS} filters per search, got 33"


@pytest.mark.parametrize("k", [-1, 0, 1001, 10**9])
def test_sql_search_with_k_out_of_range_says_so(small_index, k):
    with connect(small_index, autocommit=True) as conn:
        for statement in (
            "SELECT * FROM idxr.search(%s::vector, k => %s)",
            "SELECT * FROM idxr.search_entities(%s::vector, 'item.*', k => %s)",
        ):
            with pytest.raises(psycopg.errors.InvalidParameterValue) as excinfo:
                conn.execute(statement, [QUERY, k])
            assert str(excinfo.value).splitlines()[0] == (
                f"idxr: k must be between 1 and 1000, got {k}"
            )
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="k must be between"):
            conn.execute("SELECT * FROM idxr.similar_to('item', '1', 'item.name', %s)", [k])


def test_a_zero_query_vector_is_refused(small_index):
    with connect(small_index, autocommit=True) as conn:
        for statement in (
            "SELECT * FROM idxr.search(%s::vector)",
            "SELECT * FROM idxr.search_entities(%s::vector, 'item.*')",
        ):
            with pytest.raises(psycopg.errors.InvalidParameterValue) as excinfo:
                conn.execute(statement, [ZERO])
            assert "idxr: the query vector is all zeros" in str(excinfo.value)
    with pytest.raises(SearchError, match="the query vector is all zeros"):
        search_vector([0.0] * DIMS, database_url=small_index)
