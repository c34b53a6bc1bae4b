"""Hardening of search (issue 12): bounded structured filters, clear errors for bad k and a zero
query vector. Over real PostgreSQL, with a small synthetic index (no model)."""

from __future__ import annotations

import json
import time

import psycopg
import pytest

from idxr_pg.db.connection import connect
from idxr_pg.search import MAX_FILTERS, SearchError, search_vector
from tests.integration import test_backfill as backfill_tests

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


# --------------------------------------------------------------------------- document SQL


@pytest.fixture
def docs_url(isolated_database_url: str) -> str:
    backfill_tests.make_docs(isolated_database_url, 12)
    return isolated_database_url


def test_document_sql_with_a_literal_percent_is_indexed(docs_url, tmp_path):
    document = (
        "SELECT d.id, to_jsonb(d) || jsonb_build_object('title', d.title || ' (100%)')"
        " FROM public.docs AS d WHERE d.id = ANY(%(keys)s::integer[])"
        " AND d.title LIKE '%document%' AND d.title NOT LIKE '%%%% never'"
    )
    config = backfill_tests.write_config(tmp_path / "idxr.yaml", document=document)
    job = backfill_tests.backfill_json(docs_url, config)
    assert job["state"] == "succeeded" and job["failed"] == 0 and job["done"] == 12
    titles = backfill_tests.sql(
        docs_url, "SELECT value FROM idxr.search_index WHERE path = 'doc.title' ORDER BY value"
    )
    assert len(titles) == 12 and all(t.endswith(" (100%)") for (t,) in titles)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (
            "SELECT d.id, to_jsonb(d) FROM public.docs AS d WHERE d.nope = ANY(%(keys)s::int[])",
            "column d.nope does not exist",
        ),
        ("SELECT d.id, to_jsonb(d) FROM public.nothing AS d", 'relation "public.nothing"'),
        ("SELECT d.id FROM public.docs AS d WHERE d.id = ANY(%(keys)s::int[])", "column"),
        (
            "SELECT d.id, nextval('public.docs_probe') FROM public.docs AS d"
            " WHERE d.id = ANY(%(keys)s::int[])",
            "cannot cast type bigint to jsonb",
        ),
    ],
)
def test_invalid_document_sql_is_refused_before_any_entity(docs_url, tmp_path, document, message):
    backfill_tests.sql(docs_url, "CREATE SEQUENCE public.docs_probe")
    config = backfill_tests.write_config(tmp_path / "idxr.yaml", document=document)
    result = backfill_tests.cli(docs_url, config, "backfill", backfill_tests.KIND, exit_code=1)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: entity kind 'doc': the document SQL is invalid: ")
    assert message in lines[0]
    assert backfill_tests.sql(docs_url, "SELECT count(*) FROM idxr.jobs") == [(0,)]
    assert backfill_tests.sql(docs_url, "SELECT last_value, is_called FROM public.docs_probe") == [
        (1, False)
    ]


def test_document_sql_is_checked_without_running_it(docs_url, tmp_path):
    """Validation plans the query (read-only, rolled back): volatile calls in it do not run."""
    backfill_tests.sql(docs_url, "CREATE SEQUENCE public.docs_probe")
    document = (
        "SELECT d.id, to_jsonb(d) || jsonb_build_object('n', nextval('public.docs_probe'))"
        " FROM public.docs AS d WHERE d.id = ANY(%(keys)s::integer[])"
    )
    config = backfill_tests.write_config(tmp_path / "idxr.yaml", document=document)
    from idxr_pg.config import load_config
    from idxr_pg.indexing.registry import resolve_kinds

    with connect(docs_url, autocommit=True) as conn:
        resolve_kinds(conn, load_config(config))
    assert backfill_tests.sql(docs_url, "SELECT is_called FROM public.docs_probe") == [(False,)]


def test_a_backfill_that_failed_every_entity_exits_non_zero(docs_url, tmp_path):
    backfill_tests.sql(docs_url, "UPDATE public.docs SET title = NULL")  # fails validation
    config = backfill_tests.write_config(tmp_path / "idxr.yaml")
    result = backfill_tests.cli(docs_url, config, "backfill", backfill_tests.KIND, exit_code=1)
    assert "every entity failed (12 of 12)" in result.stderr
    result = backfill_tests.cli(
        docs_url, config, "backfill", backfill_tests.KIND, "--json", exit_code=1
    )
    assert json.loads(result.stdout)["failed"] == 12
    # One failure among successes stays a success with a warning (test_backfill keeps that).
