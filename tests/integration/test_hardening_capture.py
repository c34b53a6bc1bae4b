"""Capture hardening (issue 12): watch keys are checked without being run, DDL errors are one
line, the capture functions serve only their own tables, sources are tables."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from pydantic import BaseModel

from idxr_pg.capture import triggers as capture
from idxr_pg.capture.triggers import CaptureError
from idxr_pg.config import ConfigError, EntityConfig, WatchedTable, parse_config
from idxr_pg.indexing.registry import RegistryError, resolve_kind

APP_SCHEMA = """
CREATE SCHEMA app;
CREATE TABLE app.parents (id integer PRIMARY KEY, name text);
CREATE TABLE app.children (id serial PRIMARY KEY, item_id integer, label text);
"""

CRAFTED = (
    "item_id)::text FROM app.children UNION ALL "
    "SELECT pg_catalog.nextval('app.children_id_seq')::text --"
)


def parent(*watch: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "name": "parent",
        "model": "tests.models:Parent",
        "table": "app.parents",
        "key": "id",
        "watch": list(watch),
        **extra,
    }


def entities(*specs: dict[str, Any]) -> list[EntityConfig]:
    return parse_config({"entities": list(specs)}, "test").entities


def unchecked(spec: dict[str, Any]) -> list[EntityConfig]:
    """The entity without config-load validation (as if the lexical check were bypassed)."""
    watch = [WatchedTable.model_construct(**{"columns": None, **w}) for w in spec["watch"]]
    return [EntityConfig.model_construct(**{**spec, "watch": watch})]


@pytest.fixture
def conn(isolated_database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(isolated_database_url, autocommit=True) as connection:
        connection.execute(APP_SCHEMA)
        yield connection


def sequence_state(conn: psycopg.Connection) -> tuple[int, bool]:
    return conn.execute("SELECT last_value, is_called FROM app.children_id_seq").fetchone()


def nothing_installed(conn: psycopg.Connection) -> bool:
    triggers = conn.execute("SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal").fetchone()
    return capture.installed_captures(conn) == [] and triggers[0] == 0


# ---------------------------------------------------------------------------------------------
# Item 9: a crafted watch key is never executed


def test_crafted_key_is_refused_at_config_load():
    with pytest.raises(ConfigError) as raised:
        entities(parent({"table": "app.children", "key": CRAFTED}))
    assert "entity 'parent', watch[0] (app.children): key" in str(raised.value)


def test_crafted_key_past_the_config_is_refused_at_install_without_running(conn):
    before = sequence_state(conn)
    with pytest.raises(CaptureError) as raised:
        capture.install_triggers(conn, unchecked(parent({"table": "app.children", "key": CRAFTED})))
    assert str(raised.value).startswith("entity 'parent', watch[0], table app.children: key")
    assert "not one SQL expression" in str(raised.value)
    assert sequence_state(conn) == before
    assert nothing_installed(conn)


@pytest.mark.parametrize(
    ("key", "called"),
    [
        ("pg_catalog.nextval('app.children_id_seq')::text || item_id", "pg_catalog.nextval"),
        ("(item_id + pg_catalog.nextval('app.children_id_seq'))", "pg_catalog.nextval"),
        ("CASE WHEN pg_catalog.pg_sleep(5) IS NULL THEN item_id END", "pg_catalog.pg_sleep"),
        ("(SELECT pg_catalog.count(pg_catalog.pg_sleep(5))) + item_id", "pg_catalog.pg_sleep"),
        (
            "pg_catalog.length(pg_catalog.table_to_xml('app.parents', true, false, '')::text)",
            "pg_catalog.table_to_xml",
        ),
    ],
)
def test_keys_calling_volatile_or_sql_running_functions_are_refused_unrun(conn, key, called):
    before = sequence_state(conn)
    started = time.monotonic()
    with pytest.raises(CaptureError) as raised:
        capture.install_triggers(conn, entities(parent({"table": "app.children", "key": key})))
    assert time.monotonic() - started < 2.0  # pg_sleep(5) did not run
    message = str(raised.value)
    assert message.startswith("entity 'parent', watch[0], table app.children: key expression")
    assert f"calls {called}" in message
    assert "\n" not in message
    assert sequence_state(conn) == before
    assert nothing_installed(conn)


def test_a_plain_expression_key_still_installs_and_captures(conn):
    key = "(item_id + 0)"
    capture.install_triggers(conn, entities(parent({"table": "app.children", "key": key})))
    conn.execute("INSERT INTO app.children (item_id) VALUES (7)")
    queued = conn.execute("SELECT entity_kind, entity_id FROM idxr.queue").fetchall()
    assert queued == [("parent", "7")]


def test_ddl_errors_are_one_line_naming_entity_and_table(conn):
    conn.execute(
        """CREATE FUNCTION public.no_triggers() RETURNS event_trigger LANGUAGE plpgsql AS
           $$ BEGIN RAISE EXCEPTION 'triggers are frozen here'; END $$;
           CREATE EVENT TRIGGER no_triggers ON ddl_command_start
               WHEN TAG IN ('CREATE TRIGGER') EXECUTE FUNCTION public.no_triggers()"""
    )
    try:
        with pytest.raises(CaptureError) as raised:
            capture.install_triggers(conn, entities(parent()))
    finally:
        conn.execute("DROP EVENT TRIGGER no_triggers")
    message = str(raised.value)
    assert message.startswith("entity 'parent', table app.parents: installing the capture")
    assert message.endswith("failed: triggers are frozen here")
    assert "\n" not in message
    assert nothing_installed(conn)


# ---------------------------------------------------------------------------------------------
# Item 7: a capture function serves only the tables it was installed for


@pytest.fixture
def search_role(conn: psycopg.Connection, isolated_database_url: str) -> Iterator[str]:
    """URL of a fresh role that may EXECUTE the capture function (as the old README's reader
    grant allowed) but has no other rights on idxr; dropped afterwards."""
    role = f"idxr_search_{uuid.uuid4().hex[:10]}"
    capture.install_triggers(conn, entities(parent()))
    function = capture.function_name("parent", "app", "parents")
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA idxr TO {}").format(sql.Identifier(role)))
    conn.execute(
        sql.SQL("GRANT EXECUTE ON FUNCTION idxr.{}() TO {}").format(
            sql.Identifier(function), sql.Identifier(role)
        )
    )
    conn.execute(
        """INSERT INTO idxr.search_index (entity_kind, entity_id, path, value, value_type,
                                          content_hash)
           VALUES ('parent', '1', 'parent.name', 'x', 'string', 'h')"""
    )
    params = psycopg.conninfo.conninfo_to_dict(isolated_database_url)
    params["user"] = role
    try:
        yield psycopg.conninfo.make_conninfo(**params)
    finally:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@pytest.mark.parametrize(
    ("event", "statement"),
    [
        ("INSERT", "INSERT INTO pg_temp.parents VALUES (99, 'forged')"),
        ("TRUNCATE", "TRUNCATE pg_temp.parents"),
    ],
)
def test_capture_function_attached_to_another_table_raises_and_queues_nothing(
    plpgsql_capture, conn, search_role, event, statement
):
    """The plpgsql functions' table guard (the C function's defence is EXECUTE for its owner
    only and its schema check: test_privileges)."""
    function = capture.function_name("parent", "app", "parents")
    transition = "REFERENCING NEW TABLE AS idxr_new" if event == "INSERT" else ""
    with psycopg.connect(search_role, autocommit=True) as attacker:
        attacker.execute("CREATE TEMP TABLE parents (id integer, name text)")
        attacker.execute(
            sql.SQL(
                "CREATE TRIGGER forge AFTER {event} ON pg_temp.parents {transition}"
                " FOR EACH STATEMENT EXECUTE FUNCTION idxr.{function}()"
            ).format(
                event=sql.SQL(event),
                transition=sql.SQL(transition),
                function=sql.Identifier(function),
            )
        )
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as raised:
            attacker.execute(statement)
    message = raised.value.diag.message_primary
    assert f"idxr.{function} captures app.parents only" in message
    assert "pg_temp" in message and "parents" in message
    assert conn.execute("SELECT count(*) FROM idxr.queue").fetchone()[0] == 0


def test_capture_still_runs_on_its_own_tables_and_partitions(conn):
    conn.execute(
        """CREATE TABLE app.events (id integer, region text, PRIMARY KEY (id, region))
               PARTITION BY LIST (region);
           CREATE TABLE app.events_eu PARTITION OF app.events FOR VALUES IN ('eu')"""
    )
    spec = {"name": "event", "model": "tests.models:Event", "table": "app.events", "key": "id"}
    capture.install_triggers(conn, entities(parent(), spec))
    conn.execute("INSERT INTO app.parents VALUES (1, 'a')")
    conn.execute("INSERT INTO app.events VALUES (2, 'eu')")
    conn.execute("INSERT INTO app.events_eu VALUES (3, 'eu')")
    conn.execute("TRUNCATE app.events_eu")
    queued = conn.execute(
        "SELECT entity_kind, entity_id, operation FROM idxr.queue ORDER BY id"
    ).fetchall()
    assert queued == [("parent", "1", "INSERT"), ("event", "2", "INSERT"), ("event", "3", "INSERT")]


# ---------------------------------------------------------------------------------------------
# Item 8: a watch key calls nothing an application role could redefine, unless trusted


APP_OBJECTS = """
CREATE FUNCTION app.parent_of(i integer) RETURNS integer LANGUAGE sql IMMUTABLE
    AS $$ SELECT i $$;
CREATE FUNCTION app.plus(a integer, b integer) RETURNS integer LANGUAGE sql IMMUTABLE
    AS $$ SELECT a + b $$;
CREATE OPERATOR app.### (LEFTARG = integer, RIGHTARG = integer, FUNCTION = app.plus);
CREATE DOMAIN app.positive AS integer CHECK (app.parent_of(VALUE) > 0);
CREATE VIEW app.parents_view AS SELECT id, app.parent_of(id) AS pid FROM app.parents;
CREATE TABLE app.secured (id integer, parent_id integer);
ALTER TABLE app.secured ENABLE ROW LEVEL SECURITY;
"""


@pytest.mark.parametrize(
    ("key", "named"),
    [
        ("app.parent_of(item_id)", "calls app.parent_of, outside pg_catalog"),
        ("(item_id OPERATOR(app.###) 0)", "calls app.plus, outside pg_catalog"),
        ("item_id::app.positive", "domain app.positive"),
        ("(SELECT v.id FROM app.parents_view AS v WHERE v.id = item_id)", "app.parents_view"),
        ("(SELECT s.parent_id FROM app.secured AS s WHERE s.id = item_id)", "app.secured"),
    ],
)
def test_keys_reaching_outside_pg_catalog_are_refused_unless_trusted(conn, key, named):
    conn.execute(APP_OBJECTS)
    watch = {"table": "app.children", "key": key}
    with pytest.raises(CaptureError) as raised:
        capture.install_triggers(conn, entities(parent(watch)))
    message = str(raised.value)
    assert message.startswith("entity 'parent', watch[0], table app.children: key expression")
    assert named in message and "trusted_key" in message and "\n" not in message
    assert nothing_installed(conn)

    capture.install_triggers(conn, entities(parent({**watch, "trusted_key": True})))
    assert len(capture.installed_captures(conn)) == 2


def test_keys_reading_plain_tables_through_pg_catalog_install(conn):
    key = "(SELECT p.id FROM app.parents AS p WHERE p.id = pg_catalog.abs(item_id))"
    capture.install_triggers(conn, entities(parent({"table": "app.children", "key": key})))
    conn.execute("INSERT INTO app.parents VALUES (5, 'p')")
    conn.execute("DELETE FROM idxr.queue")
    conn.execute("INSERT INTO app.children (item_id) VALUES (5), (-5), (6)")
    queued = conn.execute("SELECT entity_id FROM idxr.queue ORDER BY 1").fetchall()
    assert queued == [("5",)]


# ---------------------------------------------------------------------------------------------
# Item 8: sources are tables unless trusted_source


class ParentModel(BaseModel):
    id: int
    name: str | None = None


SOURCE_KINDS = """
CREATE VIEW app.parents_v AS SELECT * FROM app.parents;
CREATE MATERIALIZED VIEW app.parents_m AS SELECT * FROM app.parents;
CREATE TABLE app.parents_p (id integer PRIMARY KEY, name text) PARTITION BY RANGE (id);
"""


def source_entity(table: str, **extra: Any) -> EntityConfig:
    spec = {
        "name": "parent",
        "model": "tests.integration.test_hardening_capture:ParentModel",
        "table": table,
        "key": "id",
        **extra,
    }
    return entities(spec)[0]


@pytest.mark.parametrize(
    ("table", "described"),
    [("app.parents_v", "a view"), ("app.parents_m", "a materialized view")],
)
def test_sources_that_are_not_tables_are_refused_unless_trusted(conn, table, described):
    conn.execute(SOURCE_KINDS)
    with pytest.raises(RegistryError) as raised:
        resolve_kind(conn, source_entity(table))
    message = str(raised.value)
    assert message.startswith(f"entity kind 'parent': table {table!r} is {described}")
    assert "trusted_source" in message and "\n" not in message

    kind = resolve_kind(conn, source_entity(table, trusted_source=True))
    assert kind.source_table == table


@pytest.mark.parametrize("table", ["app.parents", "app.parents_p"])
def test_plain_and_partitioned_tables_are_sources(conn, table):
    conn.execute(SOURCE_KINDS)
    assert resolve_kind(conn, source_entity(table)).source_table == table
