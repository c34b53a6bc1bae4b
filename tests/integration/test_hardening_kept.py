"""Issue 12, "behaving correctly today, and to keep as tests", over the real PostgreSQL:
config injection refused in one line (nothing run), hostile values through the pipeline,
terminated backends under concurrent writes ending with an exact index, a second backfill of
one kind refused, and no injection through lquery, kind or filters."""

from __future__ import annotations

import json
import random
import threading
import time
import unicodedata
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
import yaml
from click.testing import CliRunner
from pydantic import BaseModel, Field, Json

from idxr_pg.cli import main
from idxr_pg.db.connection import connect
from idxr_pg.embedding import DeterministicEmbedder
from idxr_pg.records.record import ValueType, content_hash
from idxr_pg.search import SearchError, search_vector
from tests.integration import test_backfill as bf
from tests.integration.test_hardening_values import run_pipeline
from tests.integration.worker_runner import worker_thread
from tests.integration.worker_support import (
    ITEMS_DDL,
    Item,
    actual_index,
    execute,
    expected_index,
    fetch_index,
    install_triggers,
    item_entity,
    make_config,
    queue_depth,
    wait_until,
)

# A canary the injected strings try to advance: if any of them ran, last_value moves.
CANARY = "CREATE SEQUENCE public.canary; CREATE TABLE public.victim (id integer PRIMARY KEY)"
INJECT = "x'); SELECT pg_catalog.nextval('public.canary'); DROP TABLE public.victim; --"


def assert_nothing_ran(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass('public.victim')").fetchone()[0] is not None
        called = conn.execute("SELECT is_called FROM public.canary").fetchone()[0]
        assert called is False, "an injected nextval ran"


def run_cli(url: str, config: Path, *args: str) -> Any:
    return CliRunner().invoke(main, ["--database-url", url, "--config", str(config), *args])


# --------------------------------------------------------------------------- config injection


DOCS_ENTITY = {
    "name": "doc",
    "model": "tests.integration.test_backfill:Doc",
    "table": "public.docs",
    "key": "id",
}


@pytest.mark.parametrize(
    ("change", "field", "named"),
    [
        ({"name": INJECT}, "entities[0].name", "must be 1-63 letters"),
        ({"table": "public.docs; " + INJECT}, "entities[0].table", "plain identifiers"),
        ({"table": 'public."docs"--'}, "entities[0].table", "plain identifiers"),
        ({"key": "id); " + INJECT}, "entities[0].key", "must be a column name"),
        (
            {"watch": [{"table": "public.docs; " + INJECT, "key": "id"}]},
            "entities[0].watch[0].table",
            "plain identifiers",
        ),
        (
            {"watch": [{"table": "public.docs", "key": "id)::text; " + INJECT}]},
            "entities[0].watch",
            "watch[0] (public.docs): key",
        ),
        ({"exclude_paths": [INJECT]}, "entities[0].exclude_paths", "invalid lquery pattern"),
        ({"refresh": "every 5s; " + INJECT}, "entities[0].refresh", "every <N>"),
    ],
    ids=["name", "table", "quoted-table", "key", "watch-table", "watch-key", "exclude", "refresh"],
)
def test_config_injection_is_refused_at_load_in_one_line_naming_the_field(
    isolated_database_url: str, tmp_path: Path, change: dict[str, Any], field: str, named: str
) -> None:
    url = isolated_database_url
    execute(url, bf.DDL + CANARY)
    config = tmp_path / "idxr.yaml"
    config.write_text(yaml.safe_dump({"entities": [{**DOCS_ENTITY, **change}]}, sort_keys=False))
    for command in (["triggers", "install"], ["backfill", "doc"], ["worker", "--once"]):
        result = run_cli(url, config, *command)
        assert result.exit_code == 1, (command, result.output)
        assert "Traceback" not in result.output
        errors = [line for line in result.output.splitlines() if line.startswith("  - ")]
        assert len(errors) == 1, result.output
        assert errors[0].startswith(f"  - {field}:") and named in errors[0], result.output
    assert_nothing_ran(url)


@pytest.mark.parametrize(
    ("change", "commands", "named"),
    [
        (
            {"columns": ['title"; ' + INJECT]},
            ["triggers install", "backfill doc"],
            'title"; x',
        ),
        ({"document": bf.SLOW_DOCUMENT + "; " + INJECT}, ["backfill doc"], "document"),
        ({"model": "os:system"}, ["backfill doc"], "os:system"),
    ],
    ids=["columns", "document", "model"],
)
def test_injection_past_the_config_loader_is_refused_in_one_line_without_running(
    isolated_database_url: str,
    tmp_path: Path,
    change: dict[str, Any],
    commands: list[str],
    named: str,
) -> None:
    url = isolated_database_url
    execute(url, bf.DDL + CANARY)
    config = tmp_path / "idxr.yaml"
    entity = {**DOCS_ENTITY, **change}
    data = {"entities": [entity], "embedding": {"model": "deterministic-test"}}
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    for command in commands:
        result = run_cli(url, config, *command.split())
        assert result.exit_code == 1, (command, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.output
        assert "'doc'" in lines[0] and named in lines[0], result.output
    assert_nothing_ran(url)
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM idxr.jobs").fetchone()[0] == 0


# --------------------------------------------------------------------------- hostile values


class Doc(BaseModel):
    id: int
    title: str | None = None
    data: Any = None
    ratio: float | None = None
    amount: Decimal | None = Field(None, allow_inf_nan=True)


class Note(BaseModel):
    id: int
    payload: Json[dict[str, str]]


VALUES_DDL = """
CREATE TABLE public.docs (id integer PRIMARY KEY, title text, data json, ratio float8,
                          amount numeric);
CREATE TABLE public.notes (id integer PRIMARY KEY, payload text NOT NULL);
"""
DOC_ENTITY = {
    "name": "doc",
    "model": f"{__name__}:Doc",
    "table": "public.docs",
    "key": "id",
}
NOTE_ENTITY = {
    "name": "note",
    "model": f"{__name__}:Note",
    "table": "public.notes",
    "key": "id",
}


@pytest.fixture
def values_url(isolated_database_url: str) -> str:
    execute(isolated_database_url, VALUES_DDL)
    execute(isolated_database_url, "INSERT INTO docs (id, title) VALUES (100, 'a good neighbour')")
    return isolated_database_url


def docs_rows(url: str, entity_id: str) -> dict[str, dict[str, Any]]:
    return {p: row for (e, p), row in fetch_index(url, "doc").items() if e == entity_id}


def failure_of(result: Any, entity_id: str) -> Any:
    [failure] = [f for f in result.failures if f.entity_id == entity_id]
    return failure


def test_nul_escape_in_a_json_column_fails_that_entity_alone(values_url, tmp_path):
    """PostgreSQL cannot turn a json \\u0000 into jsonb text: the entity fails at load with the
    reason; its neighbour in the batch is indexed."""
    execute(values_url, "INSERT INTO docs (id, data) VALUES (1, %s)", ['{"a": "x\\u0000y"}'])
    result = run_pipeline(values_url, tmp_path, DOC_ENTITY, ["1", "100"])
    assert result.done_ids == ["100"]
    failure = failure_of(result, "1")
    assert failure.stage == "load"
    assert "\\u0000 cannot be converted to text" in str(failure.exception)
    assert docs_rows(values_url, "1") == {}
    assert docs_rows(values_url, "100")["doc.title"]["value"] == "a good neighbour"


def test_lone_surrogate_in_a_json_column_fails_that_entity_alone(values_url, tmp_path):
    execute(values_url, "INSERT INTO docs (id, data) VALUES (1, %s)", ['{"a": "\\ud800"}'])
    result = run_pipeline(values_url, tmp_path, DOC_ENTITY, ["1", "100"])
    assert result.done_ids == ["100"]
    failure = failure_of(result, "1")
    assert failure.stage == "load"
    assert "surrogate" in str(failure.exception)
    assert docs_rows(values_url, "1") == {}


def test_lone_surrogate_decoded_by_the_model_fails_that_entity_alone(values_url, tmp_path):
    """A text column parsed as JSON by the model: the model's JSON parser refuses it."""
    execute(
        values_url,
        "INSERT INTO notes VALUES (1, %s), (2, %s)",
        ['{"a": "bad \\ud800 text"}', '{"a": "good text"}'],
    )
    result = run_pipeline(values_url, tmp_path, NOTE_ENTITY, ["1", "2"])
    assert result.done_ids == ["2"]
    failure = failure_of(result, "1")
    assert failure.stage == "validate"
    assert "payload" in str(failure.exception) and "Invalid JSON" in str(failure.exception)
    rows = fetch_index(values_url, "note")
    assert {e for e, _ in rows} == {"2"}
    assert rows[("2", "note.payload.a")]["value"] == "good text"


def test_a_200k_item_list_fails_that_entity_alone_quickly_naming_the_path(values_url, tmp_path):
    execute(
        values_url,
        "INSERT INTO docs (id, data) SELECT 1, json_agg(g) FROM generate_series(1, 200000) g",
    )
    started = time.monotonic()
    result = run_pipeline(values_url, tmp_path, DOC_ENTITY, ["1", "100"])
    assert time.monotonic() - started < 15
    assert result.done_ids == ["100"]
    failure = failure_of(result, "1")
    assert failure.stage == "flatten"
    assert str(failure.exception) == (
        "cannot flatten entity kind 'doc' at path 'doc.data.9999': more than max_records=10000 records"
    )
    assert docs_rows(values_url, "1") == {}


def test_colliding_json_keys_are_all_indexed_under_distinct_paths(values_url, tmp_path):
    data = {"a-b": "one", "a_b": "two", "A B": "three", "a b": "four", "a.b": "five"}
    execute(values_url, "INSERT INTO docs (id, data) VALUES (1, %s)", [json.dumps(data)])
    result = run_pipeline(values_url, tmp_path, DOC_ENTITY, ["1", "100"])
    assert result.failed == 0, result.failures
    rows = {
        p: r["value"] for p, r in docs_rows(values_url, "1").items() if p.startswith("doc.data")
    }
    assert sorted(rows.values()) == sorted(data.values())
    assert rows["doc.data.a_b"] == "two"
    expected = expected_index(values_url, "doc", Doc, "SELECT id, to_jsonb(d) FROM docs d")
    assert actual_index(values_url, "doc") == expected


def test_nan_and_infinities_are_indexed_as_their_text_and_not_embedded(values_url, tmp_path):
    execute(
        values_url,
        "INSERT INTO docs (id, ratio, amount) VALUES"
        " (1, 'NaN', 'NaN'), (2, 'Infinity', 'Infinity'), (3, '-Infinity', '-Infinity')",
    )
    result = run_pipeline(values_url, tmp_path, DOC_ENTITY, ["1", "2", "3"])
    assert result.failed == 0, result.failures
    got = {
        (e, p): (r["value"], r["value_type"], r["embedding"] is None)
        for (e, p), r in fetch_index(values_url, "doc").items()
        if p in {"doc.ratio", "doc.amount"}
    }
    assert got == {
        ("1", "doc.ratio"): ("nan", "float", True),
        ("2", "doc.ratio"): ("inf", "float", True),
        ("3", "doc.ratio"): ("-inf", "float", True),
        ("1", "doc.amount"): ("NaN", "decimal", True),
        ("2", "doc.amount"): ("Infinity", "decimal", True),
        ("3", "doc.amount"): ("-Infinity", "decimal", True),
    }


RTL = "שלום עולם \u200fRTL\u200e مرحبا بالعالم"
COMBINING = "e\u0301te\u0301 cafe\u0301"


def test_rtl_and_combining_text_is_stored_embedded_and_found_exactly(values_url, tmp_path):
    data = {"שלום": RTL, "cafe\u0301": COMBINING}
    execute(
        values_url,
        "INSERT INTO docs (id, title, data) VALUES (1, %s, %s), (2, %s, NULL)",
        [RTL, json.dumps(data, ensure_ascii=False), COMBINING],
    )
    result = run_pipeline(values_url, tmp_path, DOC_ENTITY, ["1", "2", "100"])
    assert result.failed == 0, result.failures
    rows = fetch_index(values_url, "doc")
    embedder = DeterministicEmbedder()
    for entity_id, text in (("1", RTL), ("2", COMBINING)):
        row = rows[(entity_id, "doc.title")]
        assert row["value"] == text  # code point for code point: no normalisation
        assert row["content_hash"] == content_hash("doc.title", text, ValueType.STRING)
        vector = embedder.embed([f"doc.title: {text}"])[0]
        assert np.allclose(row["embedding"].to_numpy(), vector, atol=1e-6)
    assert sorted(r["value"] for (e, p), r in rows.items() if p.startswith("doc.data.")) == sorted(
        data.values()
    )
    expected = expected_index(values_url, "doc", Doc, "SELECT id, to_jsonb(d) FROM docs d")
    assert actual_index(values_url, "doc") == expected
    # An equality filter on the exact text finds it; the NFC form of the combining text does not.
    query = [0.1] * embedder.dimensions
    hits = search_vector(
        query,
        kind="doc",
        entities=True,
        where=[{"path": "doc.title", "value": COMBINING}],
        database_url=values_url,
    )
    assert [h.entity_id for h in hits] == ["2"]
    nfc = unicodedata.normalize("NFC", COMBINING)
    assert nfc != COMBINING
    assert (
        search_vector(
            query, kind="doc", where=[{"path": "doc.title", "value": nfc}], database_url=values_url
        )
        == []
    )


# --------------------------------------------------------------------------- terminated backends


KEYS = 60
WORDS = ["alpha", "beta", "gamma", "delta", "river", "stone", "maple", "quiet"]
# A document that takes a moment to load, so terminations land mid-batch too.
SLOW_ITEMS = (
    "SELECT i.id, to_jsonb(i) FROM public.items i, pg_sleep(random() * 0.1)"
    " WHERE i.id = ANY(%(keys)s::integer[])"
)


def reconnecting_writer(url: str, seed: int, stop: threading.Event, counts: dict[str, int]):
    rng = random.Random(seed)
    conn = None
    while not stop.is_set():
        try:
            if conn is None or conn.closed:
                conn = psycopg.connect(url, autocommit=True)
            key = rng.randrange(1, KEYS + 1)
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3)))
            op = rng.random()
            if op < 0.45:
                conn.execute(
                    "INSERT INTO items (id, title, body, n) VALUES (%s, %s, %s, %s)"
                    " ON CONFLICT (id) DO UPDATE SET title = excluded.title, n = excluded.n",
                    [key, text, rng.choice([None, text + " notes"]), rng.randint(0, 9)],
                )
            elif op < 0.75:
                conn.execute("UPDATE items SET body = %s WHERE id = %s", [text, key])
            elif op < 0.85:
                conn.execute("UPDATE items SET n = n + 1 WHERE id %% 5 = %s", [key % 5])
            else:
                conn.execute("DELETE FROM items WHERE id = %s", [key])
            counts["writes"] += 1
        except psycopg.errors.DeadlockDetected:
            pass
        except psycopg.OperationalError:
            counts["writer_reconnects"] += 1  # its own backend was terminated too
            conn = None
        time.sleep(rng.uniform(0, 0.005))
    if conn is not None:
        conn.close()


def terminate(url: str, everyone: bool) -> int:
    """Terminate the worker's backends, or (a server restart, as clients see it) every other
    backend of the database."""
    who = "TRUE" if everyone else "application_name LIKE 'idxr-worker%%'"
    with psycopg.connect(url, autocommit=True) as admin:
        return admin.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
            f" WHERE datname = current_database() AND pid <> pg_backend_pid() AND {who}"
        ).fetchone()[0]


def test_terminated_backends_under_concurrent_writes_end_with_the_exact_index(
    isolated_database_url: str, tmp_path: Path
) -> None:
    url = isolated_database_url
    execute(url, ITEMS_DDL)
    config = make_config(
        tmp_path,
        [item_entity(document=SLOW_ITEMS)],
        model="deterministic-test",
        worker={"batch_size": 6, "poll_interval": 0.2, "lease_seconds": 2},
    )
    install_triggers(url, config)
    stop = threading.Event()
    counts = {"writes": 0, "writer_reconnects": 0}
    writers = [
        threading.Thread(target=reconnecting_writer, args=(url, seed, stop, counts))
        for seed in range(2)
    ]
    terminated = {"worker": 0, "everyone": 0}
    with worker_thread(url, config) as runner:
        try:
            for thread in writers:
                thread.start()
            wait_until(lambda: counts["writes"] > 50, 20, what="the writers to start")
            for everyone in (False, True, False, True, False):
                time.sleep(0.7)
                killed = terminate(url, everyone)
                terminated["everyone" if everyone else "worker"] += killed
        finally:
            stop.set()
            for thread in writers:
                thread.join()
        wait_until(lambda: queue_depth(url) == 0, 60, interval=0.2, what="the queue to drain")
        expected = expected_index(url, "item", Item, "SELECT id, to_jsonb(i) FROM items i")
        assert actual_index(url, "item") == expected
        assert runner.error is None and runner.thread.is_alive()
    assert terminated["worker"] >= 3 and terminated["everyone"] >= 2, terminated
    assert counts["writes"] > 200, counts
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM idxr.dead_letters").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM idxr.leases").fetchone()[0] == 0


# --------------------------------------------------------------------------- two backfills


def test_a_second_backfill_of_one_kind_is_refused_while_the_first_runs(
    isolated_database_url: str, tmp_path: Path
) -> None:
    url = isolated_database_url
    bf.make_docs(url, 600)
    config = bf.write_config(tmp_path / "idxr.yaml", document=bf.SLOW_DOCUMENT)
    first = bf.spawn(url, config, "backfill", bf.KIND)
    try:
        bf.wait_for_progress(url, first, 25)
        second = run_cli(url, config, "backfill", bf.KIND)
        forced = run_cli(url, config, "backfill", bf.KIND, "--force")
        for result in (second, forced):
            assert result.exit_code == 1, result.output
            lines = result.output.strip().splitlines()
            assert len(lines) == 1, result.output
            assert "another backfill of 'doc' is running" in lines[0]
        assert bf.job_row(url)[1] == "running"
        out, err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, err
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*), min(state) FROM idxr.jobs").fetchone() == (
            1,
            "succeeded",
        )
    assert bf.index_set(url) == bf.expected_index(url)


# --------------------------------------------------------------------------- search injection


DIMS = 384
QUERY = "[" + ",".join(["0.1"] * DIMS) + "]"


@pytest.fixture
def small_index(isolated_database_url: str) -> str:
    """10 entities of kind 'item' (an embedded name, an integer rank), a canary and a victim."""
    with connect(isolated_database_url, autocommit=True) as conn:
        conn.execute(CANARY)
        conn.execute("INSERT INTO idxr.entity_kinds (name) VALUES ('item')")
        conn.execute(
            """
            INSERT INTO idxr.search_index
                (entity_kind, entity_id, path, value, value_type, content_hash, embedding)
            SELECT 'item', n::text, 'item.name'::ltree, 'item ' || n, 'string'::idxr.value_type,
                   md5('n' || n), array_fill(n::real / 10, ARRAY[%(dims)s])::vector
              FROM generate_series(1, 10) n
            UNION ALL
            SELECT 'item', n::text, 'item.rank'::ltree, n::text, 'integer'::idxr.value_type,
                   md5('r' || n), NULL
              FROM generate_series(1, 10) n
            """,
            {"dims": DIMS},
        )
    return isolated_database_url


def quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def index_count(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM idxr.search_index").fetchone()[0]


KIND_INJECTIONS = [
    "item'; DROP TABLE public.victim; --",
    "item' OR '1'='1",
    "item'); SELECT pg_catalog.nextval('public.canary'); --",
]
PATH_INJECTIONS = [
    "item.*'; DROP TABLE public.victim; --",
    "item.name') OR TRUE; --",
    "*|pg_catalog.nextval('public.canary')",
]


@pytest.mark.parametrize("kind", KIND_INJECTIONS)
def test_no_injection_through_the_kind(small_index: str, kind: str) -> None:
    with connect(small_index, autocommit=True) as conn:
        for function in ("search", "search_entities"):
            with pytest.raises(psycopg.Error) as raised:
                conn.execute(f"SELECT * FROM idxr.{function}(%s::vector, NULL, %s)", [QUERY, kind])
            message = str(raised.value)
            assert message.startswith(f"idxr: unknown entity kind {quote(kind)}\n"), message
        with pytest.raises(psycopg.Error, match="no '"):
            conn.execute("SELECT * FROM idxr.similar_to(%s, '1', 'item.name')", [kind])
    with pytest.raises(SearchError, match="unknown entity kind"):
        search_vector([0.1] * DIMS, kind=kind, database_url=small_index)
    assert_nothing_ran(small_index)
    assert index_count(small_index) == 20


@pytest.mark.parametrize("path", PATH_INJECTIONS)
def test_no_injection_through_the_lquery_path(small_index: str, path: str) -> None:
    with connect(small_index, autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as raised:
            conn.execute("SELECT * FROM idxr.search(%s::vector, %s)", [QUERY, path])
        assert "lquery" in str(raised.value)
        with pytest.raises(psycopg.Error):
            conn.execute("SELECT * FROM idxr.similar_to('item', '1', 'item.name', 5, %s)", [path])
    with pytest.raises(SearchError, match="invalid path filter"):
        search_vector([0.1] * DIMS, path=path, database_url=small_index)
    assert_nothing_ran(small_index)
    assert index_count(small_index) == 20


@pytest.mark.parametrize(
    "condition",
    [
        {"path": "item.name", "value": "item 1'; DROP TABLE public.victim; --"},
        {"path": "item.name", "value": "x' OR '1'='1"},
        {
            "path": "item.rank",
            "type": "integer",
            "op": ">",
            "value": "0); SELECT pg_catalog.nextval('public.canary'",
        },
        {"path": "item.name", "value": "a", "type": "string); DROP TABLE public.victim; --"},
        {"path": "item.name", "op": "= ANY(ARRAY['x']) OR TRUE --", "value": "x"},
        {"path": "item.*'); DROP TABLE public.victim; --", "value": "x"},
    ],
    ids=["value", "value-or", "numeric-value", "type", "op", "path"],
)
def test_no_injection_through_filters(small_index: str, condition: dict[str, Any]) -> None:
    filters = json.dumps([condition])
    with connect(small_index, autocommit=True) as conn:
        for function in ("search", "search_entities"):
            statement = f"SELECT entity_id FROM idxr.{function}(%s::vector, filters => %s::jsonb)"
            try:
                rows = conn.execute(statement, [QUERY, filters]).fetchall()
            except psycopg.Error as exc:
                assert str(exc).startswith("idxr: filter 1"), exc  # refused, naming the filter
            else:
                assert rows == []  # matched as a literal value: nothing equals it
    assert_nothing_ran(small_index)
    assert index_count(small_index) == 20
    # The same conditions quoted properly still match what they should.
    with connect(small_index, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT entity_id FROM idxr.search_entities(%s::vector, filters => %s::jsonb)",
            [QUERY, json.dumps([{"path": "item.name", "value": "item 3"}])],
        ).fetchall()
    assert rows == [("3",)]
