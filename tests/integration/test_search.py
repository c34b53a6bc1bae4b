"""Search: the SQL functions, the Python API and the CLI, over real PostgreSQL and the real model.

The catalogue tests (paraphrase, path filter, entities, similar_to, structured filters, bad
input) share one database holding tests/integration/search_data.py embedded with the real
default model. The selective-filter tests use synthetic vectors at a larger scale, where
the choice between the HNSW walk and the exact search matters.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable

import psycopg
import pytest
from click.testing import CliRunner

import idxr_pg
from idxr_pg.cli import main
from idxr_pg.db import migrations
from idxr_pg.db.connection import connect
from idxr_pg.search import (
    Filter,
    ModelMismatchError,
    SearchError,
    SearchHit,
    search_vector,
    similar_to,
)
from tests.integration import search_data
from tests.integration.search_data import PRODUCTS, SUBSCRIPTIONS

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

CONFIG = search_data.CONFIG
find = search_data.find
entity = search_data.entity


@pytest.fixture(scope="module")
def embedder():
    return search_data.default_embedder()


@pytest.fixture(scope="module")
def catalogue_url(create_database: Callable[..., str], template_database: str, embedder) -> str:
    """A database holding the catalogue, embedded with the real model (read-only for tests)."""
    return search_data.catalogue_database(create_database, template_database, embedder, "search")


def cli(url: str, *args: str):
    return CliRunner(env={"COLUMNS": "200"}).invoke(main, ["--database-url", url, *args])


# --------------------------------------------------------------------------- relevance


@pytest.mark.model
@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("keep copies of our company files safe in case a disk dies", "backup"),
        ("a phone system for the office that runs over the internet", "voip"),
        ("online meetings with people in other places", "video"),
        ("block hackers from getting into our network", "firewall"),
    ],
)
def test_paraphrased_query_ranks_the_closest_entity_first(catalogue_url, query, expected):
    hits = find(catalogue_url, query, kind="product", entities=True, k=3)
    assert entity(hits[0]) in {("product", expected), ("product", f"{expected}-plus")}
    assert hits == sorted(hits, key=lambda h: h.distance)
    # Field level too: the best field belongs to that product.
    assert find(catalogue_url, query, kind="product", k=1)[0].entity_id.startswith(expected)


@pytest.mark.model
def test_path_filter_excludes_other_subtrees(catalogue_url):
    unfiltered = find(catalogue_url, "fibre broadband for an office", k=20)
    assert any(not h.path.startswith("subscription.product.") for h in unfiltered)

    hits = find(catalogue_url, "fibre broadband for an office", path="subscription.product.*", k=20)
    assert len(hits) == 20
    assert all(h.path.startswith("subscription.product.") for h in hits)
    assert hits[0].entity_id == "s1"  # the subscription of the fibre product

    described = find(catalogue_url, "fibre broadband for an office", path="*.description", k=50)
    assert described and all(h.path.endswith(".description") for h in described)
    # Every embedded description is there, and nothing else.
    expected = len(PRODUCTS) + 2 * len(SUBSCRIPTIONS)
    assert len(described) == expected


@pytest.mark.model
def test_kind_filter_keeps_one_kind(catalogue_url):
    hits = find(catalogue_url, "network security", kind="subscription", k=30)
    assert len(hits) == 30 and {h.entity_kind for h in hits} == {"subscription"}


@pytest.mark.model
def test_search_entities_returns_each_entity_once_with_its_best_field(catalogue_url):
    query = "managed firewall against intrusions"
    fields = find(catalogue_url, query, k=1000)
    assert len({entity(h) for h in fields[:10]}) < 10  # fields repeat entities...
    hits = find(catalogue_url, query, entities=True, k=8)
    assert len(hits) == 8 and len({entity(h) for h in hits}) == 8  # ...entities do not
    # Each entity's row is its nearest field, and entities rank by it: the first occurrence
    # of each entity in the full field ranking.
    first_seen: dict[tuple[str, str], SearchHit] = {}
    for hit in fields:
        first_seen.setdefault(entity(hit), hit)
    expected = list(first_seen.values())[:8]
    assert [entity(h) for h in hits] == [entity(h) for h in expected]
    for got, want in zip(hits, expected, strict=True):
        assert got.path == want.path and got.distance == pytest.approx(want.distance, abs=1e-6)


@pytest.mark.model
def test_similar_to_finds_the_near_duplicate(catalogue_url):
    hits = similar_to(
        "product",
        "firewall",
        "product.description",
        k=3,
        path_filter="product.description",
        database_url=catalogue_url,
    )
    assert entity(hits[0]) == ("product", "firewall-plus")
    assert ("product", "firewall") not in {entity(h) for h in hits}  # the example itself
    assert hits[0].distance < 0.15 < hits[1].distance

    # Pure SQL, anywhere in the index: the near-duplicate and the subscription holding the
    # same product (same text under another path) come first; never the example itself.
    with connect(catalogue_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT entity_kind, entity_id FROM idxr.similar_to('product', 'firewall',"
            " 'product.description', 5)"
        ).fetchall()
    assert ("product", "firewall") not in rows
    assert set(rows[:2]) == {("product", "firewall-plus"), ("subscription", "s3")}
    assert len(set(rows)) == len(rows) == 5


# --------------------------------------------------------------------------- structured filters


def subscriptions_where(predicate) -> set[tuple[str, str]]:
    return {("subscription", key) for key, s in SUBSCRIPTIONS.items() if predicate(s)}


@pytest.mark.model
@pytest.mark.parametrize(
    ("where", "predicate"),
    [
        (["subscription.seats>40"], lambda s: s.seats > 40),
        (["subscription.seats<=12"], lambda s: s.seats <= 12),
        (["subscription.start_date>=2024-01-01"], lambda s: s.start_date.year >= 2024),
        (["subscription.product.basic_block.value>40"], lambda s: s.product.basic_block.value > 40),
        (["subscription.status=cancelled"], lambda s: s.status == "cancelled"),
        (["subscription.status!=cancelled"], lambda s: s.status != "cancelled"),
        (
            ["subscription.seats>40", "subscription.start_date<2024-01-01"],
            lambda s: s.seats > 40 and s.start_date.year < 2024,
        ),
        ([Filter("*.seats", ">=", 60, type="integer")], lambda s: s.seats >= 60),
        (
            [{"path": "*.product.category", "value": "security"}],
            lambda s: s.product.category == "security",
        ),
    ],
)
def test_structured_filters_restrict_entities(catalogue_url, where, predicate):
    hits = find(
        catalogue_url, "internet connection", kind="subscription", entities=True, k=100, where=where
    )
    assert {entity(h) for h in hits} == subscriptions_where(predicate)
    assert subscriptions_where(predicate)  # the case is not vacuous


@pytest.mark.model
def test_structured_filter_combines_with_path_filter_and_ranking(catalogue_url):
    hits = find(
        catalogue_url,
        "internet for hotel visitors",
        path="subscription.product.*",
        where=["subscription.start_date<2023-01-01"],
        entities=True,
        k=2,
    )
    assert [h.entity_id for h in hits][0] == "s4"  # the hotel wi-fi, started 2022
    assert all(SUBSCRIPTIONS[h.entity_id].start_date.year < 2023 for h in hits)
    assert all(h.path.startswith("subscription.product.") for h in hits)


def test_structured_filter_in_sql_with_the_typed_value_helpers(catalogue_url):
    with connect(catalogue_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT entity_id FROM idxr.search_index WHERE path ~ 'subscription.seats'"
            " AND idxr.value_as_numeric(value, value_type) > 40 ORDER BY entity_id"
        ).fetchall()
        assert [r[0] for r in rows] == sorted(k for k, s in SUBSCRIPTIONS.items() if s.seats > 40)
        typed = conn.execute(
            "SELECT idxr.value_as_numeric('abc', 'integer'), idxr.value_as_numeric('12', 'string'),"
            " idxr.value_as_numeric('1.5e3', 'float'), idxr.value_as_numeric('-inf', 'float'),"
            " idxr.value_as_timestamptz('2024-02-03', 'date'),"
            " idxr.value_as_timestamptz('2024-02-03T10:00:00+00:00', 'datetime')"
            "   = '2024-02-03 10:00Z'::timestamptz,"
            " idxr.value_as_timestamptz('2024-02-03', 'string'),"
            " idxr.value_as_time('10:30:00+02:00', 'time')::text,"
            " idxr.value_as_boolean('True', 'boolean'), idxr.value_as_boolean('False', 'boolean')"
        ).fetchone()
        assert typed[:4] == (None, None, 1500, float("-inf"))
        assert typed[4] is not None and typed[5] is True and typed[6] is None
        assert typed[7:] == ("10:30:00", True, False)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"text": "   "}, "query text is empty"),
        ({"path": "subscription.product["}, "invalid path filter 'subscription.product['"),
        ({"path": ""}, "path filter is empty"),
        (
            {"kind": "invoice"},
            "unknown entity kind 'invoice' (Known kinds: 'product', 'subscription'.)",
        ),
        ({"k": 0}, "k must be a whole number between 1 and 1000, got 0"),
        ({"k": 1001}, "k must be a whole number between 1 and 1000, got 1001"),
        ({"where": ["seats >"]}, "cannot parse filter 'seats >'"),
        ({"where": ["*.seats:number>3"]}, "unknown value type 'number'"),
        (
            {"where": ["*.seats:integer>many"]},
            'value "many" is not a valid numeric for path *.seats',
        ),
        ({"where": ["*.start_date>2024-13-45"]}, "is not a valid timestamptz"),
        ({"where": ["subscription.[=1"]}, "path subscription.[ is not a valid lquery"),
        ({"where": [{"path": "*.seats", "op": "~", "value": 1}]}, "unknown operator"),
        ({"where": [{"path": "*.seats", "value": 1, "colour": "red"}]}, "unknown keys"),
        ({"where": ["*.status:boolean>true"]}, "booleans compare with = or != only"),
    ],
)
def test_bad_input_gets_a_clear_error(catalogue_url, kwargs, message):
    args = {"text": "internet", **kwargs}
    with pytest.raises(SearchError) as excinfo:
        find(catalogue_url, args.pop("text"), **args)
    assert message in str(excinfo.value)


def test_bad_input_in_sql_gets_a_clear_error(catalogue_url):
    query = "[" + ",".join(["0.1"] * 384) + "]"
    cases = [
        (
            "SELECT * FROM idxr.search(%s::vector, NULL, NULL, 0)",
            [query],
            "k must be between 1 and 1000, got 0",
        ),
        ("SELECT * FROM idxr.search(%s::vector, k => 5000)", [query], "got 5000"),
        (
            "SELECT * FROM idxr.search(%s::vector, NULL, 'invoice')",
            [query],
            "unknown entity kind 'invoice'",
        ),
        (
            "SELECT * FROM idxr.search('[1,2,3]'::vector)",
            [],
            "has 3 dimensions but idxr.search_index holds 384",
        ),
        ("SELECT * FROM idxr.search(NULL::vector)", [], "query vector is NULL"),
        (
            "SELECT * FROM idxr.similar_to('product', 'nope', 'product.name')",
            [],
            "no 'product' entity with id 'nope'",
        ),
        (
            "SELECT * FROM idxr.similar_to('product', 'fiber', 'product.colour')",
            [],
            "has no field at path 'product.colour'",
        ),
        (
            "SELECT * FROM idxr.similar_to('product', 'fiber', 'product.basic_block.value')",
            [],
            "has no embedding",
        ),
        (
            'SELECT * FROM idxr.search_entities(%s::vector, filters => \'{"op": ">"}\')',
            [query],
            'needs a "path"',
        ),
    ]
    with connect(catalogue_url, autocommit=True) as conn:
        for statement, params, message in cases:
            with pytest.raises(psycopg.Error) as excinfo:
                conn.execute(statement, params)
            assert message in str(excinfo.value), statement


def test_similar_to_bad_input_from_python(catalogue_url):
    with pytest.raises(SearchError, match="no 'product' entity with id 'nope'"):
        similar_to("product", "nope", "product.name", database_url=catalogue_url)
    with pytest.raises(SearchError, match="invalid path 'product..name'"):
        similar_to("product", "fiber", "product..name", database_url=catalogue_url)


@pytest.mark.model
def test_cli_prints_one_line_errors(catalogue_url):
    result = cli(catalogue_url, "search", "internet", "--path", "a.b[")
    assert result.exit_code == 1
    assert result.output.strip().startswith("error: invalid path filter 'a.b['")
    assert len(result.output.strip().splitlines()) == 1
    result = cli(catalogue_url, "search", "internet", "-k", "0")
    assert result.exit_code == 1 and "k must be a whole number" in result.output
    result = cli(catalogue_url, "search", "", "--kind", "product")
    assert result.exit_code == 1 and "query text is empty" in result.output
    result = cli(catalogue_url, "similar", "product", "nope", "product.name")
    assert result.exit_code == 1 and result.output.startswith("error: no 'product' entity")


# --------------------------------------------------------------------------- model checks


@pytest.mark.model
def test_refuses_an_index_built_by_another_model(catalogue_url, embedder):
    with connect(catalogue_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO idxr.embedding_models (name, version, dimensions, max_tokens)"
            " VALUES ('paraphrase-multilingual', 'abc', 384, 128)"
        )
        conn.execute(
            "UPDATE idxr.entity_kinds SET model_name = 'paraphrase-multilingual'"
            " WHERE name = 'product'"
        )
        try:
            with pytest.raises(ModelMismatchError) as excinfo:
                find(catalogue_url, "internet")
            message = str(excinfo.value)
            assert (
                "entity kind 'product' was indexed with embedding model 'paraphrase-multilingual'"
                in message
            )
            assert "'all-MiniLM-L6-v2'" in message
            # Searching only the kind the configured model built is fine.
            assert find(catalogue_url, "internet", kind="subscription", k=1)
        finally:
            conn.execute(
                "UPDATE idxr.entity_kinds SET model_name = %s WHERE name = 'product'",
                [embedder.name],
            )
            conn.execute("DELETE FROM idxr.embedding_models WHERE name = 'paraphrase-multilingual'")


@pytest.mark.model
def test_refuses_same_model_name_with_other_weights(isolated_database_url, embedder):
    with connect(isolated_database_url, autocommit=True) as conn:
        search_data.register_model(conn, embedder, ["product"])
        conn.execute("UPDATE idxr.embedding_models SET version = 'deadbeef00000000'")
    with pytest.raises(ModelMismatchError, match="version deadbeef00000000"):
        find(isolated_database_url, "internet")


@pytest.mark.model
def test_refuses_an_index_of_another_dimension(isolated_database_url):
    migrations.set_embedding_dimensions(isolated_database_url, 768)
    with pytest.raises(ModelMismatchError) as excinfo:
        find(isolated_database_url, "internet")
    assert "holds 768-dimensional embeddings" in str(excinfo.value)
    assert "384-dimensional" in str(excinfo.value)


# --------------------------------------------------------------------------- API / CLI shape


@pytest.mark.model
def test_package_level_search_and_cli(catalogue_url):
    hits = idxr_pg.search("video calls", k=2, database_url=catalogue_url, config=CONFIG)
    assert [type(h) for h in hits] == [SearchHit, SearchHit]
    assert hits[0].similarity == pytest.approx(1 - hits[0].distance)

    result = cli(catalogue_url, "search", "video calls", "-k", "3", "--entities", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert len(data) == 3 and data[0]["entity_id"] in {"video", "s6"}
    assert set(data[0]) == {
        "entity_kind",
        "entity_id",
        "path",
        "value",
        "distance",
        "similarity",
        "stale",
        "score",
        "chunk",
        "chunk_text",
    }

    result = cli(catalogue_url, "search", "video calls", "--kind", "product", "-k", "2")
    assert result.exit_code == 0, result.output
    assert "product.description" in result.output and "video" in result.output

    result = cli(
        catalogue_url, "search", "internet", "--kind", "subscription", "--path",
        "subscription.product.*", "--entities", "-k", "100", "--where", "subscription.seats>40",
        "--where", "*.start_date<2024-01-01", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert {r["entity_id"] for r in rows} == {
        key for key, s in SUBSCRIPTIONS.items() if s.seats > 40 and s.start_date.year < 2024
    }
    assert all(r["path"].startswith("subscription.product.") for r in rows)

    result = cli(catalogue_url, "similar", "product", "firewall", "product.description", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)[0]["entity_id"] in {"firewall-plus", "s3"}


def test_import_idxr_pg_stays_cheap():
    code = (
        "import sys, idxr_pg; assert 'torch' not in sys.modules and 'idxr_pg.search' not in sys.modules;"
        "import idxr_pg.search; assert callable(idxr_pg.search) and 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- selective filters


def fill_synthetic(conn: psycopg.Connection, groups: dict[str, tuple[int, str]]) -> None:
    """Rows under ``bulk.<group>.<n>`` with vectors around a direction: 'random' (uniform),
    'plus' (near [1, 1, ...]) or 'minus' (near [-1, -1, ...]). The HNSW index is rebuilt after
    the load (as `idxr.ensure_embedding_index` creates it): much faster than row by row."""
    conn.execute("DROP INDEX idxr.search_index_embedding_hnsw_384")
    for group, (count, direction) in groups.items():
        base = {"random": "0", "plus": "1", "minus": "-1"}[direction]
        conn.execute(
            f"""
            INSERT INTO idxr.search_index
                (entity_kind, entity_id, path, value, value_type, content_hash, embedding)
            SELECT 'bulk', %(group)s || '-' || (n / 4), text2ltree('bulk.' || %(group)s || '.' || n),
                   'row ' || n, 'string', md5(%(group)s || n),
                   (SELECT array_agg({base} + random() - 0.5) FROM generate_series(1, 384)
                     WHERE n IS NOT NULL)::vector
              FROM generate_series(1, %(count)s) n
            """,
            {"group": group, "count": count},
        )
    conn.execute("SELECT idxr.ensure_embedding_index(384)")
    conn.execute("INSERT INTO idxr.entity_kinds (name) VALUES ('bulk') ON CONFLICT DO NOTHING")
    conn.execute("ANALYZE idxr.search_index")


def exact(conn: psycopg.Connection, query, lquery: str, k: int) -> list[tuple]:
    return conn.execute(
        "SELECT entity_id, path::text FROM idxr.search_index WHERE path ~ %s::lquery"
        " AND embedding IS NOT NULL ORDER BY (embedding <=> %s) + 0 LIMIT %s",
        [lquery, query, k],
    ).fetchall()


def debug_notices(conn: psycopg.Connection) -> list[str]:
    """Collect the idxr DEBUG messages of the search functions (which path each query took)."""
    notices: list[str] = []
    conn.execute("SET client_min_messages = debug1")
    conn.add_notice_handler(
        lambda diag: (
            notices.append(diag.message_primary)
            if (diag.message_primary or "").startswith("idxr:")
            else None
        )
    )
    return notices


def test_selective_path_filter_still_returns_k_rows(isolated_database_url):
    with connect(isolated_database_url, autocommit=True) as conn:
        fill_synthetic(conn, {"common": (10000, "random"), "rare": (25, "random")})
        query = conn.execute(
            "SELECT embedding FROM idxr.search_index WHERE path = 'bulk.common.1'"
        ).fetchone()[0]
        # The naive filtered HNSW query comes back short: the filter is really selective.
        conn.execute("SET enable_seqscan = off")  # a table this small would be sorted whole
        naive = conn.execute(
            "SELECT path FROM idxr.search_index WHERE vector_dims(embedding) = 384 AND (path ~ 'bulk.rare.*') IS TRUE"
            " ORDER BY (embedding::halfvec(384)) <=> %s::halfvec(384) LIMIT 10",
            [query],
        ).fetchall()
        assert len(naive) < 10
        conn.execute("RESET enable_seqscan")
        notices = debug_notices(conn)
        rows = conn.execute(
            "SELECT entity_id, path::text FROM idxr.search(%s, 'bulk.rare.*', NULL, 10)", [query]
        ).fetchall()
        assert rows == exact(conn, query, "bulk.rare.*", 10)
        assert notices[-1] == "idxr: exact search"  # chosen from the estimate, no walk first
        assert len(notices) == 2
        conn.execute("RESET client_min_messages")
        entities = conn.execute(
            "SELECT entity_id FROM idxr.search_entities(%s, 'bulk.rare.*', 'bulk', 5)", [query]
        ).fetchall()
        assert len(entities) == 5 == len(set(entities))
        # Fewer matching rows than k: all of them.
        assert (
            len(
                conn.execute(
                    "SELECT * FROM idxr.search(%s, 'bulk.rare.1|2|3', k => 10)", [query]
                ).fetchall()
            )
            == 3
        )
        assert conn.execute("SHOW hnsw.iterative_scan").fetchone()[0] == "off"  # caller unchanged

    hits = search_vector(query, path="bulk.rare.*", k=10, database_url=isolated_database_url)
    assert [(h.entity_id, h.path) for h in hits] == rows


def test_filter_whose_rows_are_far_from_the_query_falls_back_to_exact(isolated_database_url):
    """The filter admits many rows (so the HNSW walk is chosen) but all lie far away from the
    query: with a small scan budget the walk returns fewer than k, and the exact search runs."""
    with connect(isolated_database_url, autocommit=True) as conn:
        fill_synthetic(conn, {"near": (6000, "plus"), "far": (6000, "minus")})
        query = conn.execute(
            "SELECT embedding FROM idxr.search_index WHERE path = 'bulk.near.1'"
        ).fetchone()[0]
        conn.execute("SET hnsw.max_scan_tuples = 200")
        conn.execute("SET hnsw.iterative_scan = relaxed_order")
        conn.execute("SET hnsw.ef_search = 100")
        short = conn.execute(
            "SELECT path FROM idxr.search_index WHERE vector_dims(embedding) = 384 AND (path ~ 'bulk.far.*') IS TRUE"
            " ORDER BY (embedding::halfvec(384)) <=> %s::halfvec(384) LIMIT 10",
            [query],
        ).fetchall()
        assert len(short) < 10  # the HNSW walk alone comes back short
        conn.execute("RESET hnsw.iterative_scan")
        conn.execute("RESET hnsw.ef_search")
        notices = debug_notices(conn)
        rows = conn.execute(
            "SELECT entity_id, path::text FROM idxr.search(%s, 'bulk.far.*', NULL, 10)", [query]
        ).fetchall()
        assert rows == exact(conn, query, "bulk.far.*", 10)
        # The path taken: estimate above the threshold, HNSW walk short, then exact search.
        assert [n.split(" ")[1:4] for n in notices] == [
            ["the", "filter", "admits"],
            ["the", "HNSW", "walk"],
            ["exact", "search"],
        ]
        assert int(notices[1].split()[5]) < 10
        entities = conn.execute(
            "SELECT entity_id FROM idxr.search_entities(%s, 'bulk.far.*', NULL, 10)", [query]
        ).fetchall()
        assert len(entities) == 10 == len(set(entities))


def test_functions_work_on_a_fresh_connection_without_pgvector_loaded(catalogue_url):
    """The hnsw.* settings on the functions must resolve in a brand-new backend."""
    query = "[" + ",".join(["0.05"] * 384) + "]"
    with psycopg.connect(catalogue_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT entity_kind, entity_id FROM idxr.search(%s::text::vector, 'product.*', 'product', 3)",
            [query],
        ).fetchall()
        assert len(rows) == 3
        assert conn.execute("SHOW hnsw.ef_search").fetchone()[0] == "40"  # not leaked
        # A caller whose search_path lacks the extensions' schema can still search.
        conn.execute("SET search_path = pg_catalog")
        rows = conn.execute(
            "SELECT entity_id FROM idxr.search(%s::text::public.vector, 'product.*',"
            ' \'product\', 3, \'[{"path": "*.value", "op": ">", "value": 40}]\')',
            [query],
        ).fetchall()
        assert len(rows) == 3 and all(PRODUCTS[r[0]].basic_block.value > 40 for r in rows)
        assert (
            conn.execute(
                "SELECT count(*) FROM idxr.similar_to('product', 'fiber', 'product.name', 2)"
            ).fetchone()[0]
            == 2
        )
