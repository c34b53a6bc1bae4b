"""Lexical, hybrid search and the stale flag (issues 16 and 18), with the real model.

The catalogue tests share one database holding tests/integration/search_data.py embedded with
the real default model (as test_search.py). The language, index and stale tests use their own
databases: they change the kind's configuration or run a worker.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable

import psycopg
import pytest
from click.testing import CliRunner

from idxr_pg.cli import main
from idxr_pg.db.connection import connect
from idxr_pg.schema import HEAD_REVISION
from idxr_pg.search import SearchError, search
from tests.integration import search_data
from tests.integration.worker_runner import worker_thread
from tests.integration.worker_support import (
    ARTICLES_DDL,
    article_entity,
    execute,
    install_triggers,
    make_config,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

pytestmark = pytest.mark.model

CONFIG = search_data.CONFIG
find = search_data.find
entity = search_data.entity


@pytest.fixture(scope="module")
def embedder():
    return search_data.default_embedder()


@pytest.fixture(scope="module")
def catalogue_url(create_database: Callable[..., str], template_database: str, embedder) -> str:
    """The search catalogue, embedded with the real model (read-only for the tests)."""
    return search_data.catalogue_database(create_database, template_database, embedder, "hybrid")


def cli(url: str, *args: str):
    return CliRunner(env={"COLUMNS": "200"}).invoke(main, ["--database-url", url, *args])


def query_vector(conn: psycopg.Connection, embedder, text: str):
    import numpy as np

    return np.asarray(embedder.embed([text])[0], dtype=np.float32)


# --------------------------------------------------------------------------- lexical


def test_lexical_search_finds_a_rare_name_that_vectors_miss(catalogue_url):
    """A proper name the model has no meaning for: full-text finds its field first."""
    lexical = find(catalogue_url, "Zeezicht", lexical=True, k=3)
    assert [(h.entity_id, h.path) for h in lexical][:1] == [("s4", "subscription.customer")]
    assert lexical[0].score is not None and lexical[0].score > 0
    assert lexical[0].distance is None  # no vector was compared
    hybrid = find(catalogue_url, "Zeezicht", hybrid=True, entities=True, k=3)
    assert entity(hybrid[0]) == ("subscription", "s4")


def test_lexical_search_matches_words_not_meaning(catalogue_url):
    assert find(catalogue_url, "quantum chromodynamics", lexical=True) == []
    entities = find(catalogue_url, "firewall", lexical=True, entities=True, kind="product", k=10)
    assert {h.entity_id for h in entities} == {"firewall", "firewall-plus"}
    assert len(entities) == 2  # one row per entity


def test_text_search_language_is_per_kind_and_indexed(
    create_database: Callable[..., str], template_database: str, embedder
):
    """'english' stems (intrusion ~ intrusions), 'simple' does not; the kind's partial GIN
    index is rebuilt for the new configuration and answers the query."""
    url = create_database(f"hybridlang{uuid.uuid4().hex[:6]}", template=template_database)
    with connect(url, autocommit=True) as conn:
        search_data.index_catalogue(conn, embedder)

        def matches() -> set[str]:
            rows = conn.execute(
                "SELECT entity_id FROM idxr.text_search_entities('intrusion', NULL, 'product')"
            ).fetchall()
            return {r[0] for r in rows}

        assert conn.execute(
            "SELECT idxr.set_text_search_config('product', 'simple')::text"
        ).fetchone() == ("simple",)
        assert matches() == {"firewall-plus"}  # "intrusion attempts"
        conn.execute("SELECT idxr.set_text_search_config('product', 'english')")
        assert matches() == {"firewall", "firewall-plus"}  # and "intrusions"
        index, definition = conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'idxr'"
            " AND indexname = idxr.text_search_index_name('product')"
        ).fetchone()
        assert "to_tsvector('english'::regconfig, value)" in definition
        assert "entity_kind = 'product'::text" in definition
        assert conn.execute(
            "SELECT text_search_config::text FROM idxr.entity_kinds WHERE name = 'product'"
        ).fetchone() == ("english",)
        with conn.transaction():
            conn.execute("SET LOCAL enable_seqscan = off")
            plan = "\n".join(
                r[0]
                for r in conn.execute(
                    # the shape of idxr.lexical_search's queries
                    "EXPLAIN SELECT 1 FROM idxr.search_index s"
                    " WHERE (s.entity_kind = 'product') IS TRUE"
                    " AND s.value_type = 'string'"
                    " AND to_tsvector('english'::regconfig, s.value) @@ 'intrus'::tsquery"
                )
            )
        assert index in plan
        with pytest.raises(psycopg.errors.UndefinedObject):
            conn.execute("SELECT idxr.set_text_search_config('product', 'klingon')")
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="unknown entity kind"):
            conn.execute("SELECT idxr.set_text_search_config('nosuchkind', 'english')")


def test_common_words_weighed_from_planner_statistics_rank_as_counted(
    create_database: Callable[..., str], template_database: str
):
    """Lexical search takes a common word's document frequency from the planner statistics of
    the kind's full-text index once it has them (idxr.text_term_stats, readable by
    idxr_reader) instead of counting it: the rankings are the same as when counted."""
    url = create_database(f"hybridstats{uuid.uuid4().hex[:6]}", template=template_database)
    queries = ["routine inspection corrosion", "routine inspection of the line", "line 7 pump"]

    def rankings(conn: psycopg.Connection) -> list[list[tuple]]:
        return [
            conn.execute(
                "SELECT entity_id, path::text, score, exact"
                " FROM idxr.text_search(%s, NULL, 'note', 20)",
                [q],
            ).fetchall()
            for q in queries
        ]

    with connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO idxr.entity_kinds (name) VALUES ('note')")
        conn.execute(
            "INSERT INTO idxr.search_index (entity_kind, entity_id, path, value, value_type,"
            " content_hash)"
            " SELECT 'note', g::text, 'note.text', 'Routine inspection of line ' || g"
            "        || CASE WHEN g % 50 = 0 THEN ', pump replaced' ELSE '' END"
            "        || CASE WHEN g = 123 THEN ' and corrosion found' ELSE '' END,"
            "        'string', md5(g::text)"
            "   FROM generate_series(1, 400) g"
        )
        conn.execute("SELECT idxr.set_text_search_config('note', 'english')")
        assert conn.execute("SELECT count(*) FROM idxr.text_term_stats('note')").fetchone() == (
            0,
        )  # never analyzed (this server runs without autovacuum): every word is counted
        counted = rankings(conn)
        conn.execute("ANALYZE idxr.search_index")
        with conn.transaction():
            conn.execute("SET LOCAL ROLE idxr_reader")
            common = dict(
                conn.execute(
                    "SELECT l, f * st.index_rows FROM idxr.text_term_stats('note') st,"
                    " unnest(st.lexemes, st.freqs[1:cardinality(st.lexemes)]) AS u(l, f)"
                ).fetchall()
            )
            from_statistics = rankings(conn)
    # common_cap is 100 here: a word in 200 rows or more is taken from the statistics
    assert common["inspect"] == pytest.approx(400) and common["routin"] == pytest.approx(400)
    assert common.get("corros", 0) < 200 and common.get("pump", 0) < 200  # counted
    assert from_statistics == counted
    assert counted[0][0][0] == "123"  # the rare word decides
    assert len(counted[1]) == 20  # only common words: the rarest one's rows


# --------------------------------------------------------------------------- hybrid


def test_hybrid_keeps_the_vector_answer_for_a_paraphrase(catalogue_url):
    query = "keep copies of our company files safe in case a disk dies"
    hits = find(catalogue_url, query, hybrid=True, entities=True, kind="product", k=3)
    assert entity(hits[0]) == ("product", "backup")
    assert hits[0].distance is not None and hits[0].score is not None
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_hybrid_with_path_filter_and_structured_filters(catalogue_url):
    hits = find(catalogue_url, "phone calls", hybrid=True, path="*.description", k=20)
    assert hits and all(h.path.endswith(".description") for h in hits)
    cancelled = find(
        catalogue_url,
        "phone calls",
        hybrid=True,
        entities=True,
        kind="subscription",
        where=["subscription.status=cancelled"],
        k=10,
    )
    assert {h.entity_id for h in cancelled} == {"s5", "s7"}
    assert entity(cancelled[0]) == ("subscription", "s5")  # telephone lines, VoIP
    both = find(
        catalogue_url,
        "servers",
        hybrid=True,
        path="subscription.product.*",
        where=["subscription.seats<10"],
        k=20,
    )
    assert both and {h.entity_id for h in both} <= {"s2", "s8"}  # 3 and 8 seats
    assert all(h.path.startswith("subscription.product.") for h in both)


def test_exact_match_boost_for_identifier_like_fields(catalogue_url, embedder):
    """'bandwidth' is the whole value of a basic block name: boosted above longer texts."""
    with connect(catalogue_url, autocommit=True) as conn:
        vector = query_vector(conn, embedder, "bandwidth")
        rows = conn.execute(
            "SELECT value, score FROM idxr.hybrid_search('bandwidth', %s, NULL, 'product', 5)",
            [vector],
        ).fetchall()
        unboosted = conn.execute(
            "SELECT value, score FROM idxr.hybrid_search('bandwidth', %s, NULL, 'product', 5,"
            " NULL, '{\"exact\": 0}')",
            [vector],
        ).fetchall()
    assert rows[0][0] == "bandwidth"
    boosted_score = dict(rows)["bandwidth"]
    assert boosted_score == pytest.approx(dict(unboosted)["bandwidth"] + 1 / 61)


def test_exact_boost_for_a_part_number_or_a_name_inside_a_long_text(
    create_database: Callable[..., str], template_database: str, embedder
):
    """A code with a digit, or every word of the query, inside a longer text: flagged exact and
    boosted, so it beats texts the vectors find closer."""
    from idxr_pg.records.record import FieldRecord, ValueType

    url = create_database(f"hybridexact{uuid.uuid4().hex[:6]}", template=template_database)
    bodies = {
        "1": "The pump seal was replaced. Part KV-3817-B was ordered. Ingrid Vasquez signed it.",
        "2": "The hydraulic pump seal was leaking and part KV-3818-B was checked by Ingrid Moretti.",
        "3": "Pump seals wear out; replacement parts for pumps are kept in the central store.",
    }
    with connect(url, autocommit=True) as conn:
        search_data.register_model(conn, embedder, ["report"])
        for key, body in bodies.items():
            record = FieldRecord.create("report.body", body, ValueType.STRING, embeddable=True)
            conn.execute(
                "INSERT INTO idxr.search_index (entity_kind, entity_id, path, value, value_type,"
                " content_hash, embedding) VALUES ('report', %s, %s, %s, 'string', %s, %s)",
                [key, record.path, body, record.content_hash, embedder.embed([body])[0]],
            )
        for query, expected in (
            ("where was KV-3817-B replaced", "1"),
            ("Ingrid Vasquez", "1"),
            ("central store", "3"),  # every word of the query
        ):
            rows = conn.execute(
                "SELECT entity_id, exact FROM idxr.hybrid_search_entities(%s, %s, k => 3)",
                [query, embedder.embed([query])[0]],
            ).fetchall()
            assert rows[0] == (expected, True), (query, rows)
            assert [exact for _, exact in rows[1:]] == [False, False], (query, rows)


def test_hybrid_weights_change_the_fusion(catalogue_url, embedder):
    """Weight 0 for one list leaves the other list's order (RRF of one list is its order)."""
    with connect(catalogue_url, autocommit=True) as conn:
        vector = query_vector(conn, embedder, "internet for guests")
        vector_only = conn.execute(
            "SELECT entity_id FROM idxr.hybrid_search_entities('internet for guests', %s,"
            ' NULL, NULL, 5, NULL, \'{"lexical": 0, "exact": 0}\')',
            [vector],
        ).fetchall()
        plain = conn.execute(
            "SELECT entity_id FROM idxr.search_entities(%s, NULL, NULL, 5)", [vector]
        ).fetchall()
        lexical_only = conn.execute(
            "SELECT entity_id FROM idxr.hybrid_search_entities('internet for guests', %s,"
            ' NULL, NULL, 5, NULL, \'{"vector": 0, "exact": 0}\')',
            [vector],
        ).fetchall()
        text_only = conn.execute(
            "SELECT entity_id FROM idxr.text_search_entities('internet for guests', NULL, NULL, 5)"
        ).fetchall()
    assert vector_only == plain
    assert lexical_only == text_only


def test_cli_hybrid_and_lexical(catalogue_url):
    result = cli(catalogue_url, "search", "Zeezicht", "--hybrid", "--entities", "-k", "2", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data[0]["entity_id"] == "s4" and data[0]["score"] > 0 and data[0]["stale"] is False
    result = cli(catalogue_url, "search", "Zeezicht", "--lexical", "-k", "1")
    assert result.exit_code == 0, result.output
    assert "subscription/s4" in result.output and "score" in result.output
    result = cli(catalogue_url, "search", "x", "--hybrid", "--weights", "vector=one")
    assert result.exit_code == 1
    assert result.output.startswith("error: cannot parse weights 'vector=one'")
    result = cli(catalogue_url, "search", "x", "--weights", "vector=1")
    assert result.exit_code == 1 and "--weights applies to --hybrid" in result.output
    result = cli(catalogue_url, "search", "x", "--hybrid", "--weights", "vector=0,lexical=0")
    assert result.exit_code == 1
    assert "are both 0" in result.output and len(result.output.strip().splitlines()) == 1


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ("hybrid_search('', %(v)s)", "the query text is empty"),
        ("hybrid_search(NULL, %(v)s)", "the query text is empty"),
        ("hybrid_search('fibre', NULL)", "the query vector is NULL"),
        ("hybrid_search('fibre', '[1,2,3]')", "the query vector has 3 dimensions"),
        ("hybrid_search('fibre', %(v)s, k => 0)", "k must be between 1 and 1000, got 0"),
        ("hybrid_search_entities('fibre', %(v)s, k => 1001)", "k must be between 1 and 1000"),
        ("hybrid_search('fibre', %(v)s, weights => '[1]')", "weights must be a JSON object"),
        ("hybrid_search('fibre', %(v)s, weights => '{\"vectr\": 1}')", "unknown weight 'vectr'"),
        ("hybrid_search('fibre', %(v)s, weights => '{\"lexical\": -1}')", "between 0 and 1000"),
        ("hybrid_search('fibre', %(v)s, weights => '{\"rrf_k\": \"x\"}')", "weight rrf_k must"),
        (
            "hybrid_search('fibre', %(v)s, weights => '{\"vector\": 0, \"lexical\": 0}')",
            "are both 0",
        ),
        ("hybrid_search('fibre', %(v)s, weights => '{\"rrf_k\": 0.5}')", "at least 1"),
        ("hybrid_search('fibre', %(v)s, entity_kind => 'nosuch')", "unknown entity kind"),
        (
            'hybrid_search(\'fibre\', %(v)s, filters => \'[{"path": "*.x", "op": "~"}]\')',
            "unknown operator",
        ),
        ("text_search('   ')", "the query text is empty"),
        ("text_search_entities('fibre', k => -1)", "k must be between 1 and 1000"),
        ("text_search('fibre', entity_kind => 'nosuch')", "unknown entity kind"),
    ],
)
def test_sql_errors_for_bad_input(catalogue_url, embedder, call, message):
    with connect(catalogue_url, autocommit=True) as conn:
        vector = query_vector(conn, embedder, "fibre")
        with pytest.raises(psycopg.errors.InvalidParameterValue) as info:
            conn.execute(f"SELECT * FROM idxr.{call}", {"v": vector})
    assert message in info.value.diag.message_primary
    assert info.value.diag.message_primary.startswith("idxr: ")


def test_python_api_errors(catalogue_url):
    with pytest.raises(SearchError, match="unknown hybrid weight 'vectr'"):
        find(catalogue_url, "fibre", hybrid=True, weights={"vectr": 1})
    with pytest.raises(SearchError, match="hybrid or lexical search, not both"):
        find(catalogue_url, "fibre", hybrid=True, lexical=True)
    with pytest.raises(SearchError, match="weights apply to hybrid search only"):
        find(catalogue_url, "fibre", weights={"vector": 1})
    with pytest.raises(SearchError, match="weight lexical must be a number between 0 and 1000"):
        find(catalogue_url, "fibre", hybrid=True, weights={"lexical": 5000})
    with pytest.raises(SearchError, match="query text is empty"):
        find(catalogue_url, " ", lexical=True)


# --------------------------------------------------------------------------- stale


def test_stale_while_a_change_is_queued_and_not_after_the_worker_drains(
    isolated_database_url, tmp_path
):
    """A queued change marks the entity's results stale in every search function, the Python
    API and the CLI; the worker's pass clears it. The worker's registration builds the kind's
    full-text index in the configured language."""
    url = isolated_database_url
    execute(url, ARTICLES_DDL)
    config = make_config(
        tmp_path,
        [article_entity(text_search="english")],
        worker={"poll_interval": 0.2, "batch_size": 16},
    )
    install_triggers(url, config)
    execute(
        url,
        "INSERT INTO articles (id, title, body, status) VALUES"
        " (1, 'Heat pumps explained', 'They move heat instead of making it.', 'published'),"
        " (2, 'Rain water barrels', 'Collect the roof run-off for the garden.', 'published')",
    )
    with worker_thread(url, config) as runner:
        runner.settle(url)
    with connect(url, autocommit=True) as conn:
        assert conn.execute(
            "SELECT text_search_config::text FROM idxr.entity_kinds WHERE name = 'article'"
        ).fetchone() == ("english",)
        assert conn.execute(
            "SELECT count(*) FROM pg_indexes WHERE schemaname = 'idxr'"
            " AND indexname = idxr.text_search_index_name('article')"
        ).fetchone() == (1,)

    def stale_flags(**kwargs) -> dict[str, bool]:
        hits = search(
            "heat pumps", kind="article", entities=True, database_url=url, config=config, **kwargs
        )
        return {h.entity_id: h.stale for h in hits}

    assert stale_flags() == {"1": False, "2": False}
    execute(url, "UPDATE articles SET body = 'Pumps that move heat.' WHERE id = 1")
    assert stale_flags() == {"1": True, "2": False}
    assert stale_flags(hybrid=True) == {"1": True, "2": False}
    assert stale_flags(lexical=True) == {"1": True}  # only article 1 has the words
    with connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT entity_id, stale FROM idxr.similar_to('article', '2', 'article.title')"
        ).fetchall()
        assert rows == [("1", True)]
        rows = conn.execute(
            "SELECT DISTINCT entity_id, stale FROM idxr.search("
            " (SELECT embedding FROM idxr.search_index WHERE entity_id = '2'"
            "     AND path = 'article.title'), NULL, 'article', 100)"
        ).fetchall()
        assert set(rows) == {("1", True), ("2", False)}
    result = cli(
        url,
        "--config",
        str(tmp_path / "idxr.yaml"),
        "search",
        "heat pumps",
        "--kind",
        "article",
        "--entities",
    )
    assert result.exit_code == 0, result.output
    line = next(row for row in result.output.splitlines() if "article/1" in row)
    assert line.rstrip().endswith("updating")
    # A bulk statement queues its keys in one idxr.queue_batches row: stale as well.
    execute(url, "UPDATE articles SET views = views + 1 WHERE id IN (1, 2)")
    with psycopg.connect(url, autocommit=True) as conn:
        for i in range(3, 13):  # more keys than the bulk threshold, so a queue_batches row
            conn.execute(
                "INSERT INTO articles (id, title) VALUES (%s, %s)", [i, f"Filler article {i}"]
            )
        conn.execute("UPDATE articles SET views = 7 WHERE id >= 2")
        batched = conn.execute(
            "SELECT count(*) FROM idxr.queue_batches WHERE '2' = ANY (entity_ids)"
        ).fetchone()[0]
    assert batched >= 1
    assert stale_flags()["2"] is True
    with worker_thread(url, config) as runner:
        runner.settle(url)
    assert set(stale_flags().values()) == {False}
    assert set(stale_flags(hybrid=True).values()) == {False}


# --------------------------------------------------------------------------- migration


def test_upgrade_from_0003_replaces_the_old_search_hit_and_downgrade_drops_the_new_parts(
    empty_database_url,
):
    """A database whose idxr.search_hit has no `stale` (0003's search functions) upgrades: the
    type and the functions returning it are dropped and re-created; indexed rows stay."""
    from idxr_pg.db import migrations

    url = empty_database_url
    migrations.upgrade(url, "0003")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(  # what 0003's 040_search.sql created
            "CREATE TYPE idxr.search_hit AS (entity_kind text, entity_id text, path ltree,"
            " value text, distance double precision);"
            "CREATE FUNCTION idxr.search(query vector) RETURNS SETOF idxr.search_hit"
            " LANGUAGE sql AS 'SELECT NULL::idxr.search_hit';"
            "INSERT INTO idxr.entity_kinds (name) VALUES ('doc');"
            "INSERT INTO idxr.search_index (entity_kind, entity_id, path, value, value_type,"
            " content_hash) VALUES ('doc', '1', 'doc.code', 'XJ-4471', 'string', 'h')"
        )
    migrations.upgrade(url, "head")
    with psycopg.connect(url, autocommit=True) as conn:
        columns = conn.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = 'idxr.search_hit'::regclass"
            " AND attnum > 0 ORDER BY attnum"
        ).fetchall()
        assert [c for (c,) in columns][-3:] == ["stale", "chunk", "chunk_text"]
        assert conn.execute(
            "SELECT entity_id, path::text, stale FROM idxr.text_search('xj-4471')"
        ).fetchall() == [("1", "doc.code", False)]
        conn.execute("SELECT idxr.set_text_search_config('doc', 'english')")
    migrations.downgrade(url, "0003")
    with psycopg.connect(url, autocommit=True) as conn:
        left = conn.execute(
            "SELECT count(*) FROM pg_class WHERE relnamespace = 'idxr'::regnamespace"
            " AND relname LIKE 'search_index_text_%'"
        ).fetchone()
        column = conn.execute(
            "SELECT count(*) FROM pg_attribute WHERE attrelid = 'idxr.entity_kinds'::regclass"
            " AND attname = 'text_search_config'"
        ).fetchone()
        assert (left, column) == ((0,), (0,))
        assert conn.execute("SELECT count(*) FROM idxr.search_index").fetchone() == (1,)
    migrations.upgrade(url, "head")
    assert migrations.current_revision(url) == HEAD_REVISION
