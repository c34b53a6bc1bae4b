"""Pipeline.index on real PostgreSQL with the real model: load → validate → flatten → diff →
embed → write, leases, finalize, failures isolated per entity, and the registry behind it."""

from __future__ import annotations

import numpy as np
import psycopg
import pytest

from idxr_pg.config import EmbeddingSettings
from idxr_pg.db import leases as db_leases
from idxr_pg.db import source
from idxr_pg.db.connection import connect
from idxr_pg.embedding import EmbeddingCache, EmbeddingService, load_embedder
from idxr_pg.indexing.pipeline import BatchResult, Pipeline
from idxr_pg.indexing.registry import RegistryError, import_model, register, resolve_kinds
from tests.integration.worker_support import (
    ALL_ARTICLES,
    ARTICLES_DDL,
    Article,
    actual_index,
    article_entity,
    execute,
    expected_index,
    fetch_index,
    item_entity,
    make_config,
)

pytestmark = pytest.mark.model

LEASE_SECONDS = 30


def index(pipeline: Pipeline, conn: psycopg.Connection, ids: list[str], *, owner: str, **kwargs):
    """Lease ``ids`` to ``owner`` (what the worker's claim or the backfill does), then index."""
    leased = db_leases.acquire(conn, pipeline.kind.name, ids, owner, LEASE_SECONDS)
    return pipeline.index(conn, leased, **kwargs)


@pytest.fixture(scope="module")
def embedder():
    return load_embedder(EmbeddingSettings())


@pytest.fixture
def setup(isolated_database_url, tmp_path, embedder):
    """Articles table with three rows, the kind registered, a pipeline and a connection."""
    url = isolated_database_url
    execute(url, ARTICLES_DDL)
    execute(
        url,
        "INSERT INTO articles (id, title, body, status, views) VALUES "
        "(1, 'Solar panels on the roof', 'How we halved the power bill.', 'published', 10),"
        "(2, 'Garden notes', 'Tomatoes need sun and patience.', 'draft', 0),"
        "(3, 'Bicycle repair', NULL, 'published', 3);"
        "INSERT INTO tags (article_id, name, weight) VALUES (1, 'energy', 2), (1, 'home', NULL)",
    )
    config = make_config(tmp_path, [article_entity()])
    conn = connect(url, autocommit=True)
    kinds = resolve_kinds(conn, config)
    register(conn, kinds.values(), embedder)
    cache = EmbeddingCache(url)
    service = EmbeddingService(embedder, config.embedding, cache)
    pipeline = Pipeline(kinds["article"], service)
    yield url, conn, pipeline
    cache.close()
    conn.close()


def test_new_entities_are_flattened_embedded_and_written(setup):
    url, conn, pipeline = setup
    result = index(pipeline, conn, ["1", "2", "3"], owner="test")

    assert (result.entities, result.indexed, result.failed, result.skipped) == (3, 3, 0, 0)
    assert sorted(result.done_ids) == ["1", "2", "3"]
    assert actual_index(url, "article") == expected_index(url, "article", Article, ALL_ARTICLES)
    rows = fetch_index(url, "article")
    title = rows[("1", "article.title")]
    assert title["value"] == "Solar panels on the roof"
    vector = np.asarray(title["embedding"].to_numpy())
    assert vector.shape == (384,) and abs(float(np.linalg.norm(vector)) - 1.0) < 1e-3
    expected_vector = pipeline.service.embedder.embed(["article.title: Solar panels on the roof"])[
        0
    ]
    assert float(vector @ expected_vector) > 0.99  # the real model's vector for that text
    assert rows[("1", "article.tags.0.name")]["value"] == "energy"
    assert rows[("1", "article.views")]["embedding"] is None  # integers are not embedded
    assert result.records_written == len(rows)
    embedded_texts = {
        f"{path}: {r['value']}" for (_, path), r in rows.items() if r["embedding"] is not None
    }
    assert result.texts_embedded == len(embedded_texts)  # identical texts are embedded once
    with connect(url, autocommit=True) as check:
        assert check.execute("SELECT count(*) FROM idxr.leases").fetchone()[0] == 0
        stamps = check.execute(
            "SELECT last_refresh_at IS NOT NULL, last_embedded_at IS NOT NULL,"
            " schema_fingerprint IS NOT NULL, model_name FROM idxr.entity_kinds"
        ).fetchall()
    assert stamps == [(True, True, True, "all-MiniLM-L6-v2")]


def test_unchanged_entity_costs_no_embedding_and_no_write(setup):
    url, conn, pipeline = setup
    index(pipeline, conn, ["1", "2", "3"], owner="test")
    before = fetch_index(url, "article")
    calls = pipeline.service.stats.model_calls

    result = index(pipeline, conn, ["1", "2", "3"], owner="test")

    assert (result.unchanged, result.indexed, result.texts_embedded, result.cache_hits) == (
        3,
        0,
        0,
        0,
    )
    assert result.records_written == result.records_deleted == 0
    assert pipeline.service.stats.model_calls == calls
    after = fetch_index(url, "article")
    assert {k: (v["xmin"], v["updated_at"]) for k, v in after.items()} == {
        k: (v["xmin"], v["updated_at"]) for k, v in before.items()
    }


def test_one_changed_field_rewrites_and_embeds_only_that_path(setup):
    url, conn, pipeline = setup
    index(pipeline, conn, ["1", "2"], owner="test")
    before = fetch_index(url, "article")
    execute(url, "UPDATE articles SET body = 'Now with a battery too.' WHERE id = 1")

    result = index(pipeline, conn, ["1", "2"], owner="test")

    assert (result.indexed, result.unchanged, result.texts_embedded) == (1, 1, 1)
    assert result.records_written == 1
    after = fetch_index(url, "article")
    changed = {k for k in after if after[k]["xmin"] != before[k]["xmin"]}
    assert changed == {("1", "article.body")}
    body_before, body_after = before[("1", "article.body")], after[("1", "article.body")]
    assert body_after["content_hash"] != body_before["content_hash"]
    assert body_after["updated_at"] > body_before["updated_at"]
    assert not np.allclose(body_after["embedding"].to_numpy(), body_before["embedding"].to_numpy())
    assert all(after[k]["updated_at"] == before[k]["updated_at"] for k in after if k not in changed)


def test_removed_fields_and_deleted_entities_lose_their_rows(setup):
    url, conn, pipeline = setup
    index(pipeline, conn, ["1", "2", "3"], owner="test")
    execute(
        url, "DELETE FROM tags WHERE name = 'home'; UPDATE articles SET body = NULL WHERE id = 2"
    )
    execute(url, "DELETE FROM articles WHERE id = 3")

    result = index(pipeline, conn, ["1", "2", "3"], owner="test")

    assert (result.indexed, result.deleted) == (2, 1)
    keys = set(fetch_index(url, "article"))
    assert not any(entity == "3" for entity, _ in keys)
    assert ("2", "article.body") not in keys
    assert ("1", "article.tags.1.name") not in keys and ("1", "article.tags.0.name") in keys
    assert actual_index(url, "article") == expected_index(url, "article", Article, ALL_ARTICLES)


def test_force_rewrites_every_record_from_the_cache(setup):
    url, conn, pipeline = setup
    index(pipeline, conn, ["1"], owner="test")
    before = fetch_index(url, "article")

    result = index(pipeline, conn, ["1"], owner="test", force=True)

    after = fetch_index(url, "article")
    assert result.records_written == len(before)
    assert result.texts_embedded == 0 and result.cache_hits > 0  # same texts: cached vectors
    assert all(after[k]["xmin"] != before[k]["xmin"] for k in before)


def test_entities_leased_by_another_owner_are_skipped_untouched(setup):
    url, conn, pipeline = setup
    assert db_leases.acquire(conn, "article", ["2"], "someone-else", 60).held == {"2"}

    result = index(pipeline, conn, ["1", "2"], owner="test")

    assert result.skipped_ids == ["2"] and result.skipped == 1 and result.done_ids == ["1"]
    assert {entity for entity, _ in fetch_index(url, "article")} == {"1"}
    with connect(url, autocommit=True) as check:
        leases = check.execute("SELECT entity_id, worker_id FROM idxr.leases").fetchall()
    assert leases == [("2", "someone-else")]


def test_an_expired_lease_is_taken_over(setup):
    url, conn, pipeline = setup
    execute(
        url,
        "INSERT INTO idxr.leases VALUES ('article', '2', 'crashed', now() - interval '1 second')",
    )
    result = index(pipeline, conn, ["2"], owner="test")
    assert result.done_ids == ["2"] and result.skipped == 0


class StealingEmbedder:
    """The real model, but while it embeds, another owner takes the batch's expired lease."""

    def __init__(self, inner, url: str) -> None:
        self.inner, self.url = inner, url
        self.name, self.version = inner.name, inner.version
        self.dimensions, self.max_tokens = inner.dimensions, inner.max_tokens

    def count_tokens(self, texts):
        return self.inner.count_tokens(texts)

    def truncate(self, text, max_tokens, strategy):
        return self.inner.truncate(text, max_tokens, strategy)

    def embed(self, texts):
        with connect(self.url, autocommit=True) as other:
            other.execute("UPDATE idxr.leases SET leased_until = now() - interval '1 second'")
            assert db_leases.acquire(other, "article", ["1"], "newcomer", 60).held == {"1"}
        return self.inner.embed(texts)


def test_an_entity_whose_lease_is_lost_while_embedding_is_not_written(setup, embedder):
    url, conn, pipeline = setup
    stealing = Pipeline(
        pipeline.kind,
        EmbeddingService(StealingEmbedder(embedder, url), pipeline.service.settings),
    )
    finalized: list[list[str]] = []

    result = index(
        stealing,
        conn,
        ["1"],
        owner="test",
        finalize=lambda c, r: finalized.append(list(r.done_ids)),
    )

    assert result.skipped_ids == ["1"] and result.done_ids == [] and finalized == [[]]
    assert fetch_index(url, "article") == {}  # the newcomer owns it now; nothing stale written
    with connect(url, autocommit=True) as check:
        leases = check.execute("SELECT entity_id, worker_id FROM idxr.leases").fetchall()
    assert leases == [("1", "newcomer")]


def test_finalize_runs_inside_the_write_transaction(setup):
    url, conn, pipeline = setup
    seen: list[BatchResult] = []

    def finalize(c: psycopg.Connection, result: BatchResult) -> None:
        seen.append(result)
        # Inside the transaction that wrote the rows: they are visible here...
        assert c.execute("SELECT count(*) FROM idxr.search_index").fetchone()[0] > 0
        raise psycopg.errors.RaiseException("finalize refused")

    with pytest.raises(psycopg.errors.RaiseException):
        index(pipeline, conn, ["1"], owner="test", finalize=finalize)
    # ...and gone with it when finalize fails; the lease was released anyway.
    assert fetch_index(url, "article") == {}
    assert seen and seen[-1].done_ids == ["1"]
    with connect(url, autocommit=True) as check:
        assert check.execute("SELECT count(*) FROM idxr.leases").fetchone()[0] == 0


def test_validation_failure_is_isolated_and_keeps_what_was_indexed(setup):
    url, conn, pipeline = setup
    index(pipeline, conn, ["1", "2"], owner="test")
    before = fetch_index(url, "article")
    execute(url, "UPDATE articles SET title = 'SHOUTING TITLE' WHERE id = 1")
    execute(url, "UPDATE articles SET body = 'Peppers too.' WHERE id = 2")

    result = index(pipeline, conn, ["1", "2"], owner="test")

    assert result.failed == 1 and result.indexed == 1
    (failure,) = result.failures
    assert (failure.entity_id, failure.stage) == ("1", "validate")
    assert "all capitals" in str(failure.exception)
    assert failure.document["title"] == "SHOUTING TITLE"
    after = fetch_index(url, "article")
    assert {k: v["xmin"] for k, v in after.items() if k[0] == "1"} == {
        k: v["xmin"] for k, v in before.items() if k[0] == "1"
    }
    assert after[("2", "article.body")]["value"] == "Peppers too."


def test_write_failure_of_one_entity_does_not_block_the_batch(setup):
    url, conn, pipeline = setup
    execute(url, "UPDATE articles SET title = 'Broken <NUL> title' WHERE id = 2")

    result = index(pipeline, conn, ["1", "2", "3"], owner="test")

    assert sorted(result.done_ids) == ["1", "3"]
    (failure,) = result.failures
    assert (failure.entity_id, failure.stage) == ("2", "write")
    assert {entity for entity, _ in fetch_index(url, "article")} == {"1", "3"}


def test_loader_error_of_one_key_fails_that_key_only(isolated_database_url, tmp_path, embedder):
    url = isolated_database_url
    execute(url, ARTICLES_DDL)
    execute(
        url,
        "INSERT INTO articles (id, title, status) VALUES (1, 'One', 'x'), (13, 'Unlucky', 'x')",
    )
    document = (
        "SELECT a.id, jsonb_build_object('id', a.id, 'title', a.title, 'status', a.status,"
        " 'views', 100 / (a.id - 13)) FROM public.articles a WHERE a.id = ANY(%(keys)s::int[])"
    )
    config = make_config(tmp_path, [article_entity(document=document, watch=[])])
    with connect(url, autocommit=True) as conn:
        kinds = resolve_kinds(conn, config)
        pipeline = Pipeline(kinds["article"], EmbeddingService(embedder, config.embedding))
        result = index(pipeline, conn, ["1", "13"], owner="test")
    assert result.done_ids == ["1"]
    (failure,) = result.failures
    assert (failure.entity_id, failure.stage) == ("13", "load")
    assert isinstance(failure.exception, psycopg.errors.DivisionByZero)


def test_pipeline_refuses_a_connection_inside_a_transaction(setup):
    _, conn, pipeline = setup
    with conn.transaction(), pytest.raises(RuntimeError, match="outside a transaction"):
        index(pipeline, conn, ["1"], owner="test")


# --------------------------------------------------------------------------- registry


def test_default_loader_reads_the_row_and_only_the_listed_columns(isolated_database_url, tmp_path):
    url = isolated_database_url
    execute(url, "CREATE TABLE items (id uuid PRIMARY KEY, title text, body text, n int)")
    execute(
        url,
        "INSERT INTO items VALUES ('00000000-0000-0000-0000-000000000001', 'A', 'secret', 1)",
    )
    config = make_config(tmp_path, [item_entity(table="items", columns=["id", "title", "n"])])
    with connect(url, autocommit=True) as conn:
        kind = resolve_kinds(conn, config)["item"]
        docs = source.load_documents(
            conn,
            kind,
            ["00000000-0000-0000-0000-000000000001", "00000000-0000-0000-0000-000000000002"],
        )
    assert kind.key_type == "uuid" and kind.source_table == "public.items"
    assert docs == {
        "00000000-0000-0000-0000-000000000001": {
            "id": "00000000-0000-0000-0000-000000000001",
            "title": "A",
            "n": 1,
        }
    }


@pytest.mark.parametrize(
    ("dotted", "message"),
    [
        (
            "no_such_module_xyz:Model",
            "entity kind 'thing': cannot import module 'no_such_module_xyz'",
        ),
        ("tests.integration.worker_support:Nope", "has no attribute 'Nope'"),
        ("tests.integration.worker_support:ROOT", "is not a Pydantic model class"),
    ],
)
def test_model_import_errors_name_the_kind(dotted, message):
    with pytest.raises(RegistryError, match=message):
        import_model("thing", dotted)


def test_missing_table_or_key_is_reported_with_the_kind(isolated_database_url, tmp_path):
    execute(isolated_database_url, "CREATE TABLE items (id int PRIMARY KEY, title text, n int)")
    with connect(isolated_database_url, autocommit=True) as conn:
        config = make_config(tmp_path, [item_entity(table="public.nothing")])
        with pytest.raises(RegistryError, match="entity kind 'item': table 'public.nothing'"):
            resolve_kinds(conn, config)
        config = make_config(tmp_path, [item_entity(key="item_id")])
        with pytest.raises(RegistryError, match="has no column 'item_id'"):
            resolve_kinds(conn, config)


def test_register_refuses_a_model_of_another_vector_size(isolated_database_url, tmp_path):
    execute(isolated_database_url, "CREATE TABLE items (id int PRIMARY KEY, title text, n int)")

    class Small:
        name, version, dimensions, max_tokens = "small", "1", 8, 128

    class Default:
        name, version, dimensions, max_tokens = "all-MiniLM-L6-v2", "1", 384, 256

    with connect(isolated_database_url, autocommit=True) as conn:
        kinds = resolve_kinds(conn, make_config(tmp_path, [item_entity()]))
        register(conn, kinds.values(), Default())
        conn.execute(
            "INSERT INTO idxr.search_index (entity_kind, entity_id, path, value, value_type,"
            " content_hash) VALUES ('item', '1', 'item.title', 't', 'string', 'h')"
        )
        with pytest.raises(RegistryError, match=r"8-dimensional .* active index version 1"):
            register(conn, kinds.values(), Small())
