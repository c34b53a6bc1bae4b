"""The HNSW index's storage (vector or halfvec) and build parameters (issue 14).

Deterministic clustered vectors: the model is beside the point here (what is under test is
which index the search functions walk, and what they return); bench/halfvec.py measures
recall on the real model's vectors.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import psycopg
import pytest
from click.testing import CliRunner

from idxr_pg.cli import main
from idxr_pg.config import ConfigError, load_config
from idxr_pg.db import hnsw, migrations
from idxr_pg.db.connection import connect
from idxr_pg.errors import IdxrError

DIMS = 384
INDEX = "search_index_embedding_hnsw_384"


def cli(url: str, *args: str):
    return CliRunner(env={"COLUMNS": "200"}).invoke(main, ["--database-url", url, *args])


def clustered(count: int, seed: int = 5) -> np.ndarray:
    """Unit vectors around 40 random centres, so that near neighbours exist."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, DIMS))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    vectors = centres[rng.integers(0, 40, count)] + rng.standard_normal((count, DIMS)) * 0.04
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32)


def fill(conn: psycopg.Connection, vectors: np.ndarray) -> None:
    with conn.cursor().copy(
        "COPY idxr.search_index (entity_kind, entity_id, path, value, value_type, content_hash,"
        " embedding) FROM STDIN"
    ) as copy:
        for i, vector in enumerate(vectors):
            copy.write_row(("bulk", str(i), f"bulk.f{i}", f"row {i}", "string", str(i), vector))
    conn.execute("INSERT INTO idxr.entity_kinds (name) VALUES ('bulk') ON CONFLICT DO NOTHING")
    conn.execute("ANALYZE idxr.search_index")


def plans_of_search(conn: psycopg.Connection, query: np.ndarray) -> tuple[list[str], list[str]]:
    """The ids idxr.search returns and the plans of the statements it ran (auto_explain logs
    nested statements to the client at LOG level)."""
    notes: list[str] = []

    def keep(diag: psycopg.errors.Diagnostic) -> None:
        notes.append(diag.message_primary or "")

    conn.add_notice_handler(keep)
    conn.execute("LOAD 'auto_explain'")
    conn.execute("SET auto_explain.log_min_duration = 0")
    conn.execute("SET auto_explain.log_nested_statements = on")
    conn.execute("SET client_min_messages = log")
    try:
        ids = [r[0] for r in conn.execute("SELECT entity_id FROM idxr.search(%s)", [query])]
    finally:
        conn.execute("SET client_min_messages = notice")
        conn.execute("SET auto_explain.log_min_duration = -1")
        conn.remove_notice_handler(keep)
    return ids, [n for n in notes if "ORDER BY (s.embedding::" in n]


def exact_top(conn: psycopg.Connection, query: np.ndarray, k: int = 10) -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            "SELECT entity_id FROM idxr.search_index ORDER BY (embedding <=> %s) + 0 LIMIT %s",
            [query, k],
        )
    ]


def test_halfvec_index_is_walked_and_matches_exact_search(isolated_database_url):
    url = isolated_database_url
    result = cli(url, "migrate", "--index-storage", "halfvec", "--hnsw-ef-construction", "32")
    assert result.exit_code == 0, result.output
    vectors = clustered(4000)
    with connect(url, autocommit=True) as conn:
        fill(conn, vectors)
        [state] = hnsw.index_state(conn, DIMS)
        assert (state.name, state.storage, state.m, state.ef_construction, state.valid) == (
            INDEX,
            "halfvec",
            16,
            32,
            True,
        )
        assert state.bytes > 0
        definition = conn.execute("SELECT pg_get_indexdef(%s::regclass)", [f"idxr.{INDEX}"])
        assert "(embedding)::halfvec(384)) halfvec_cosine_ops" in definition.fetchone()[0]
        assert (
            conn.execute(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
                " WHERE attrelid = 'idxr.search_index'::regclass"
                " AND attname = 'embedding'"
            ).fetchone()[0]
            == "vector"
        )

        # The plan the search function runs walks the halfvec index (its ORDER BY matches).
        ids, plans = plans_of_search(conn, vectors[7])
        assert plans, "the search ran no HNSW statement"
        assert f"Index Scan using {INDEX}" in plans[-1]
        assert "::halfvec(384) <=>" in plans[-1]
        assert ids[0] == "7"

        # Recall against the exact float32 search, and exact distances returned.
        rng = np.random.default_rng(9)
        recalls = []
        for pick in rng.choice(len(vectors), 25, replace=False):
            query = vectors[pick] + rng.standard_normal(DIMS).astype(np.float32) * 0.02
            hits = conn.execute(
                "SELECT entity_id, distance FROM idxr.search(%s)", [query]
            ).fetchall()
            assert len(hits) == 10
            assert [d for _, d in hits] == sorted(d for _, d in hits)
            for entity_id, distance in hits:
                stored = conn.execute(
                    "SELECT (embedding <=> %s)::double precision FROM idxr.search_index"
                    " WHERE entity_id = %s",
                    [query, entity_id],
                ).fetchone()[0]
                assert distance == pytest.approx(stored, abs=1e-9)  # float32, not float16
            recalls.append(len({i for i, _ in hits} & set(exact_top(conn, query))) / 10)
        assert np.mean(recalls) >= 0.95, recalls

        # Entity search and search by example take the same walk.
        entities = conn.execute("SELECT entity_id FROM idxr.search_entities(%s)", [vectors[3]])
        assert [r[0] for r in entities][0] == "3"
        similar = conn.execute("SELECT count(*) FROM idxr.similar_to('bulk', '3', 'bulk.f3')")
        assert similar.fetchone()[0] == 10


def test_switching_storage_keeps_search_answering(isolated_database_url):
    url = isolated_database_url
    vectors = clustered(6000, seed=11)
    with connect(url, autocommit=True) as conn:
        fill(conn, vectors)
        conn.execute(f"REINDEX INDEX idxr.{INDEX}")
        assert hnsw.index_options(conn, DIMS) == hnsw.DEFAULT_OPTIONS
        assert hnsw.index_state(conn, DIMS)[0].options == hnsw.IndexOptions("halfvec", 16, 64)

    stop = threading.Event()
    answers: list[int] = []
    errors: list[BaseException] = []

    def reader() -> None:
        with connect(url, autocommit=True) as conn:
            i = 0
            while not stop.is_set():
                try:
                    rows = conn.execute(
                        "SELECT entity_id FROM idxr.search(%s)", [vectors[i % len(vectors)]]
                    ).fetchall()
                    answers.append(len(rows))
                except psycopg.Error as exc:  # pragma: no cover - the failure under test
                    errors.append(exc)
                i += 1

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        time.sleep(0.2)
        before = len(answers)
        options, rebuilt = migrations.set_index_options(url, DIMS, storage="vector")
        assert rebuilt and options == hnsw.IndexOptions("vector", 16, 64)
        during_first = len(answers) - before
        # And back, with other build parameters.
        options, rebuilt = migrations.set_index_options(
            url, DIMS, storage="halfvec", m=8, ef_construction=32
        )
        assert rebuilt and options == hnsw.IndexOptions("halfvec", 8, 32)
        time.sleep(0.2)
    finally:
        stop.set()
        thread.join()
    assert errors == []
    assert during_first > 0, "no query ran while the index was switched"
    assert answers and set(answers) == {10}
    with connect(url, autocommit=True) as conn:
        [state] = hnsw.index_state(conn, DIMS)  # the _next index is gone
        assert state.options == hnsw.IndexOptions("halfvec", 8, 32) and state.name == INDEX
        _, plans = plans_of_search(conn, vectors[1])
        assert f"Index Scan using {INDEX}" in plans[-1]
        assert "(s.embedding::halfvec(384)) <=> $1::halfvec(384)" in plans[-1]
    # The same options again: nothing to rebuild.
    assert migrations.set_index_options(url, DIMS, storage="halfvec") == (
        hnsw.IndexOptions("halfvec", 8, 32),
        False,
    )


def test_a_switch_stopped_after_the_old_index_was_dropped_is_finished(isolated_database_url):
    """Between DROP INDEX CONCURRENTLY of the old index and the rename of the new one, the new
    one (``..._next``) serves; the next ensure renames it."""
    url = isolated_database_url
    vectors = clustered(1500, seed=3)
    with connect(url, autocommit=True) as conn:
        fill(conn, vectors)
        hnsw.set_index_options(conn, DIMS, storage="vector")
        ddl = conn.execute(
            "SELECT idxr.embedding_index_ddl(384, idxr.embedding_index_next_name(384), true)"
        ).fetchone()[0]
        conn.execute(ddl)
        conn.execute(f"DROP INDEX CONCURRENTLY idxr.{INDEX}")
        ids, plans = plans_of_search(conn, vectors[42])
        assert ids[0] == "42"
        assert f"Index Scan using {INDEX}_next" in plans[-1]
        assert conn.execute("SELECT idxr.ensure_embedding_index(384)").fetchone()[0] is False
        [state] = hnsw.index_state(conn, DIMS)
        assert (state.name, state.storage) == (INDEX, "vector")


def test_bulk_build_uses_the_recorded_options(isolated_database_url):
    url = isolated_database_url
    with connect(url, autocommit=True) as conn:
        hnsw.set_index_options(conn, DIMS, storage="halfvec", m=12, ef_construction=40)
        hnsw.drop_embedding_index(conn)
        assert not hnsw.embedding_index_exists(conn)
        fill(conn, clustered(500))
        assert hnsw.build_embedding_index(conn, maintenance_work_mem="64MB", parallel_workers=0)
        [state] = hnsw.index_state(conn, DIMS)
        assert state.options == hnsw.IndexOptions("halfvec", 12, 40)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--index-storage", "float8"], "'float8' is not one of 'vector', 'halfvec'"),
        (["--hnsw-m", "1"], "1 is not in the range 2<=x<=100"),
        (["--hnsw-ef-construction", "2000"], "2000 is not in the range 4<=x<=1000"),
        (
            ["--hnsw-m", "40", "--hnsw-ef-construction", "64"],
            "HNSW ef_construction (64) must be at least twice m (40)",
        ),
        (
            ["--index-storage", "vector", "--dimensions", "3000"],
            "an HNSW index over vector holds at most 2000 dimensions, not 3000. Use index "
            "storage halfvec",
        ),
        (["--dimensions", "5000"], "an HNSW index over halfvec holds at most 4000 dimensions"),
    ],
)
def test_bad_options_get_a_clear_error(isolated_database_url, args, message):
    result = cli(isolated_database_url, "migrate", *args)
    assert result.exit_code != 0
    assert message in result.output
    with connect(isolated_database_url, autocommit=True) as conn:
        assert hnsw.index_options(conn, DIMS) == hnsw.DEFAULT_OPTIONS  # nothing recorded
        assert hnsw.index_state(conn, DIMS)[0].options == hnsw.DEFAULT_OPTIONS


def test_bad_options_in_sql_and_python(isolated_database_url):
    with connect(isolated_database_url, autocommit=True) as conn:
        with pytest.raises(IdxrError, match="index storage must be vector or halfvec, got 'bit'"):
            hnsw.set_index_options(conn, DIMS, storage="bit")
        with pytest.raises(IdxrError, match=r"HNSW m must be between 2 and 100, got 0"):
            hnsw.set_index_options(conn, DIMS, m=0)
        with pytest.raises(IdxrError, match="halfvec holds at most 4000 dimensions, not 5000"):
            hnsw.set_index_options(conn, 5000, storage="halfvec")
        with pytest.raises(IdxrError, match="over vector holds at most 2000 dimensions"):
            hnsw.set_index_options(conn, 3000, storage="vector")
        hnsw.set_index_options(conn, 3000, m=24)  # halfvec (the default) goes to 4000
        assert hnsw.index_options(conn, 3000) == hnsw.IndexOptions("halfvec", 24, 64)


def test_config_index_section(tmp_path, isolated_database_url):
    bad = tmp_path / "bad.yaml"
    bad.write_text("index:\n  storage: float16\n")
    with pytest.raises(ConfigError, match=r"index\.storage"):
        load_config(bad)
    bad.write_text("index:\n  m: 32\n  ef_construction: 48\n")
    with pytest.raises(
        ConfigError, match=r"ef_construction \(48\) must be at least twice m \(32\)"
    ):
        load_config(bad)
    good = tmp_path / "idxr.yaml"
    good.write_text("index:\n  storage: vector\n  ef_construction: 32\n")
    assert load_config(good).index.storage == "vector"
    result = CliRunner().invoke(
        main, ["--database-url", isolated_database_url, "--config", str(good), "migrate"]
    )
    assert result.exit_code == 0, result.output
    with connect(isolated_database_url, autocommit=True) as conn:
        assert hnsw.index_state(conn, DIMS)[0].options == hnsw.IndexOptions("vector", 16, 32)
    # A later migrate without the section keeps what the database records.
    assert cli(isolated_database_url, "migrate").exit_code == 0
    with connect(isolated_database_url, autocommit=True) as conn:
        assert hnsw.index_state(conn, DIMS)[0].storage == "vector"


def test_an_upgraded_database_keeps_its_vector_index(empty_database_url):
    """Revision 0010 records the indexes there are as built (vector, 16, 64): the new default
    (halfvec) reaches sizes indexed later, and `migrate` rebuilds nothing unasked."""
    url = empty_database_url
    migrations.upgrade(url, "0009")
    with connect(url, autocommit=True) as conn:
        conn.execute(  # as 020_dimensions.sql built it before revision 0010
            f"CREATE INDEX {INDEX} ON idxr.search_index USING hnsw"
            " ((embedding::vector(384)) vector_cosine_ops) WHERE vector_dims(embedding) = 384"
        )
        fill(conn, clustered(300))
        oid = conn.execute(f"SELECT 'idxr.{INDEX}'::regclass::oid").fetchone()[0]
    result = cli(url, "migrate")
    assert result.exit_code == 0, result.output
    assert "rebuilt" not in result.output
    with connect(url, autocommit=True) as conn:
        assert conn.execute(f"SELECT 'idxr.{INDEX}'::regclass::oid").fetchone()[0] == oid
        [state] = hnsw.index_state(conn, DIMS)
        assert state.options == hnsw.IndexOptions("vector", 16, 64)  # no WITH: the defaults
        assert conn.execute("SELECT idxr.embedding_index_storage(384)").fetchone()[0] == "vector"
        ids, plans = plans_of_search(conn, clustered(300)[12])
        assert ids[0] == "12" and f"Index Scan using {INDEX}" in plans[-1]
        assert hnsw.index_options(conn, 768) == hnsw.DEFAULT_OPTIONS  # a new size: halfvec
