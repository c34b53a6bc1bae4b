"""Capture triggers: writes on watched tables enqueue exactly the changed entity keys + NOTIFY."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from click.testing import CliRunner

from idxr_pg.capture import triggers as capture
from idxr_pg.capture.triggers import CaptureError
from idxr_pg.cli import main
from idxr_pg.config import EntityConfig, WatchedTable, parse_config

pytestmark = pytest.mark.usefixtures("capture_language")

A = "00000000-0000-0000-0000-00000000000a"
B = "00000000-0000-0000-0000-00000000000b"
C = "00000000-0000-0000-0000-00000000000c"

APP_SCHEMA = """
CREATE SCHEMA app;
CREATE TABLE app.subscriptions (
    subscription_id uuid PRIMARY KEY,
    customer        text NOT NULL,
    description     text,
    settings        json,       -- no equality operator
    location        point,      -- no equality operator
    amount          numeric,
    internal_notes  text        -- not read by the entity
);
CREATE TABLE app.product_blocks (
    id              serial PRIMARY KEY,
    subscription_id uuid,
    name            text,
    position        integer,
    audit_note      text        -- not read by the entity
);
CREATE TABLE app.tags (
    id      bigint PRIMARY KEY,
    payload jsonb NOT NULL
);
"""

ENTITY = {
    "name": "subscription",
    "model": "tests.models:Subscription",
    "table": "app.subscriptions",
    "key": "subscription_id",
    "columns": ["subscription_id", "customer", "description", "settings", "location", "amount"],
    "watch": [
        {
            "table": "app.product_blocks",
            "key": "subscription_id",
            "columns": ["subscription_id", "name", "position"],
        },
        {"table": "app.tags", "key": "(payload->>'subscription')::uuid"},
    ],
}
BLOCK = {
    "name": "block",
    "model": "tests.models:Block",
    "table": "app.product_blocks",
    "key": "id",
}


def entities(*specs: dict[str, Any]) -> list[EntityConfig]:
    return parse_config({"entities": list(specs)}, "test").entities


@pytest.fixture
def app_url(isolated_database_url: str) -> str:
    with psycopg.connect(isolated_database_url, autocommit=True) as conn:
        conn.execute(APP_SCHEMA)
    return isolated_database_url


@pytest.fixture(scope="module")
def shared_app_url(create_database, template_database) -> str:
    """One app database for the tests that must leave it unchanged (failed installs)."""
    url = create_database(f"capture_{uuid.uuid4().hex[:6]}", template=template_database)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(APP_SCHEMA)
    return url


@pytest.fixture
def conn(app_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(app_url, autocommit=True) as connection:
        yield connection


@pytest.fixture
def installed(conn: psycopg.Connection) -> psycopg.Connection:
    capture.install_triggers(conn, entities(ENTITY, BLOCK))
    return conn


@pytest.fixture
def listener(app_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(app_url, autocommit=True) as connection:
        connection.execute("LISTEN idxr_queue")
        yield connection


def drain(conn: psycopg.Connection) -> list[tuple[str, str, str, str]]:
    """Take every queue row: (kind, entity_id, source_table, operation), in queue order."""
    rows = conn.execute(
        """DELETE FROM idxr.queue RETURNING id, entity_kind, entity_id, source_table, operation"""
    ).fetchall()
    return [tuple(r[1:]) for r in sorted(rows)]


def keys(rows: list[tuple[str, str, str, str]], kind: str = "subscription") -> list[str]:
    return sorted(r[1] for r in rows if r[0] == kind)


def notifications(listener: psycopg.Connection, timeout: float = 1.0) -> list[str]:
    return [n.payload for n in listener.notifies(timeout=timeout) if n.channel == "idxr_queue"]


def add_subscriptions(conn: psycopg.Connection, *ids: str) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO app.subscriptions (subscription_id, customer, description, settings,"
            " location) VALUES (%s, 'acme', 'fibre', '{\"a\": 1}', '(1,2)')",
            [(i,) for i in ids],
        )


# ---------------------------------------------------------------------------------------------
# Main table


def test_multi_row_insert_enqueues_each_key_once_and_notifies_once(installed, listener):
    installed.execute(
        "INSERT INTO app.subscriptions (subscription_id, customer) VALUES (%s, 'x'), (%s, 'y')",
        [A, B],
    )
    rows = drain(installed)
    assert rows == [
        ("subscription", A, "app.subscriptions", "INSERT"),
        ("subscription", B, "app.subscriptions", "INSERT"),
    ] or rows == [
        ("subscription", B, "app.subscriptions", "INSERT"),
        ("subscription", A, "app.subscriptions", "INSERT"),
    ]
    assert notifications(listener) == ["subscription"]


def test_update_of_a_read_column_enqueues_the_key(installed, listener):
    add_subscriptions(installed, A, B)
    drain(installed)
    notifications(listener, 0.3)
    installed.execute(
        "UPDATE app.subscriptions SET description = 'copper' WHERE subscription_id = %s", [A]
    )
    assert drain(installed) == [("subscription", A, "app.subscriptions", "UPDATE")]
    assert notifications(listener) == ["subscription"]


def test_updates_that_change_nothing_read_enqueue_nothing_and_send_no_notify(installed, listener):
    add_subscriptions(installed, A, B)
    drain(installed)
    notifications(listener, 0.3)
    installed.execute("UPDATE app.subscriptions SET description = description")
    installed.execute("UPDATE app.subscriptions SET customer = 'acme', location = '(1,2)'")
    installed.execute("UPDATE app.subscriptions SET settings = '{\"a\": 1}'")  # json, same value
    installed.execute("UPDATE app.subscriptions SET internal_notes = 'not read'")
    installed.execute("UPDATE app.subscriptions SET description = 'x' WHERE false")
    assert drain(installed) == []
    assert notifications(listener, 0.5) == []


def test_types_without_equality_are_compared(installed):
    add_subscriptions(installed, A, B)
    drain(installed)
    installed.execute(
        "UPDATE app.subscriptions SET location = '(3,4)' WHERE subscription_id = %s", [A]
    )
    installed.execute(
        "UPDATE app.subscriptions SET settings = '{\"a\": 2}' WHERE subscription_id = %s", [B]
    )
    assert [r[1] for r in drain(installed)] == [A, B]


def test_equal_values_with_a_different_text_form_are_changes(installed):
    add_subscriptions(installed, A)
    installed.execute("UPDATE app.subscriptions SET amount = 1.0")
    drain(installed)
    installed.execute("UPDATE app.subscriptions SET amount = 1.0")
    assert drain(installed) == []
    installed.execute("UPDATE app.subscriptions SET amount = 1.00")  # = 1.0, but reads "1.00"
    assert keys(drain(installed)) == [A]


def test_key_change_enqueues_old_and_new_key(installed):
    add_subscriptions(installed, A)
    drain(installed)
    installed.execute(
        "UPDATE app.subscriptions SET subscription_id = %s WHERE subscription_id = %s", [C, A]
    )
    rows = drain(installed)
    assert keys(rows) == [A, C]
    assert {r[3] for r in rows} == {"UPDATE"}


def test_multi_row_update_and_delete_enqueue_one_row_per_key(installed, listener):
    add_subscriptions(installed, A, B, C)
    drain(installed)
    notifications(listener, 0.3)
    installed.execute(
        "UPDATE app.subscriptions SET description = 'bulk' WHERE subscription_id <> %s", [C]
    )
    assert keys(drain(installed)) == [A, B]
    installed.execute("DELETE FROM app.subscriptions")
    rows = drain(installed)
    assert keys(rows) == [A, B, C]
    assert {r[3] for r in rows} == {"DELETE"}
    assert notifications(listener) == ["subscription", "subscription"]


def test_notify_false_enqueues_without_a_notification(conn, listener, capture_language):
    capture.install_triggers(conn, entities({**ENTITY, "notify": False}))
    add_subscriptions(conn, A)
    assert keys(drain(conn)) == [A]
    assert notifications(listener, 0.5) == []
    if capture_language == "c":  # flags: 'u' (unique key), no 'n' (ring)
        (definition,) = conn.execute(
            "SELECT pg_get_triggerdef(oid) FROM pg_trigger"
            " WHERE tgname = 'idxr_subscription_insert' AND tgrelid = 'app.subscriptions'::regclass"
        ).fetchone()
        assert "idxr.idxr_capture('subscription', 'app.subscriptions', 'u', " in definition
        return
    function = conn.execute(
        "SELECT prosrc FROM pg_proc WHERE proname = 'capture_subscription__app__subscriptions'"
    ).fetchone()[0]
    assert "pg_notify" not in function


def test_integer_keys_are_stored_as_text(installed):
    installed.execute("INSERT INTO app.product_blocks (id, name) VALUES (7, 'x'), (42, 'y')")
    assert keys(drain(installed), "block") == ["42", "7"]


# ---------------------------------------------------------------------------------------------
# Watched child tables


def test_child_table_changes_enqueue_the_parent_keys(installed, listener):
    add_subscriptions(installed, A, B)
    drain(installed)
    notifications(listener, 0.3)
    installed.execute(
        "INSERT INTO app.product_blocks (subscription_id, name, position)"
        " SELECT s, 'block ' || i, i FROM unnest(%s::uuid[]) s, generate_series(1, 3) i",
        [[A, B]],
    )
    rows = drain(installed)
    assert sorted(r for r in rows if r[0] == "subscription") == sorted(
        [
            ("subscription", A, "app.product_blocks", "INSERT"),
            ("subscription", B, "app.product_blocks", "INSERT"),
        ]
    )
    assert len(keys(rows, "block")) == 6  # the block kind reads the same table
    assert sorted(notifications(listener)) == ["block", "subscription"]

    installed.execute(
        "UPDATE app.product_blocks SET name = 'renamed' WHERE subscription_id = %s AND position = 1",
        [A],
    )
    assert keys(drain(installed)) == [A]

    installed.execute(
        "UPDATE app.product_blocks SET subscription_id = %s WHERE subscription_id = %s"
        " AND position = 2",
        [B, A],
    )
    assert keys(drain(installed)) == [A, B]

    installed.execute("DELETE FROM app.product_blocks WHERE subscription_id = %s", [B])
    rows = drain(installed)
    assert keys(rows) == [B]
    assert {r[2:] for r in rows if r[0] == "subscription"} == {("app.product_blocks", "DELETE")}


def test_audit_only_update_on_child_enqueues_nothing_for_the_parent(installed):
    add_subscriptions(installed, A)
    installed.execute(
        "INSERT INTO app.product_blocks (subscription_id, name) VALUES (%s, 'b')", [A]
    )
    drain(installed)
    installed.execute("UPDATE app.product_blocks SET audit_note = 'ignored'")
    rows = drain(installed)
    assert keys(rows) == []  # subscription reads only subscription_id, name, position
    assert len(keys(rows, "block")) == 1  # block reads every column of its own table


def test_swapping_child_rows_between_parents_is_seen_as_a_change(installed):
    add_subscriptions(installed, A, B)
    installed.execute(
        "INSERT INTO app.product_blocks (id, subscription_id, name) VALUES (1, %s, 'x'), (2, %s, 'x')",
        [A, A],
    )
    drain(installed)
    # the multiset of A's blocks changes from {x, x} to {x} although the set stays {x}
    installed.execute("UPDATE app.product_blocks SET subscription_id = %s WHERE id = 2", [B])
    assert keys(drain(installed)) == [A, B]


def test_rows_without_a_parent_key_enqueue_nothing(installed):
    installed.execute(
        "INSERT INTO app.product_blocks (subscription_id, name) VALUES (NULL, 'orphan')"
    )
    assert keys(drain(installed)) == []


def test_expression_key_on_a_watched_table(installed):
    installed.execute(
        "INSERT INTO app.tags (id, payload) VALUES (1, %s), (2, %s), (3, '{}')",
        [f'{{"subscription": "{A}"}}', f'{{"subscription": "{B}"}}'],
    )
    assert keys(drain(installed)) == [A, B]
    installed.execute('UPDATE app.tags SET payload = payload || \'{"label": "gold"}\' WHERE id = 2')
    assert keys(drain(installed)) == [B]


# ---------------------------------------------------------------------------------------------
# TRUNCATE


def seed_index(conn: psycopg.Connection, kind: str, *ids: str) -> None:
    for entity_id in ids:
        conn.execute(
            """INSERT INTO idxr.search_index (entity_kind, entity_id, path, value, value_type,
                                              content_hash)
               VALUES (%s, %s, 'subscription.customer', 'acme', 'string', 'h')""",
            [kind, entity_id],
        )


def test_truncate_enqueues_every_indexed_or_leased_entity_of_the_kind(installed, listener):
    add_subscriptions(installed, A, B)
    installed.execute(
        "INSERT INTO app.product_blocks (subscription_id, name) VALUES (%s, 'b')", [A]
    )
    seed_index(installed, "subscription", A, B)
    seed_index(installed, "other_kind", C)
    installed.execute(
        "INSERT INTO idxr.leases VALUES ('subscription', %s, 'w1', now() + interval '1 minute')",
        [C],
    )
    drain(installed)
    notifications(listener, 0.3)

    installed.execute("TRUNCATE app.product_blocks")
    rows = drain(installed)
    assert keys(rows) == [A, B, C]
    assert {r[2:] for r in rows if r[0] == "subscription"} == {("app.product_blocks", "TRUNCATE")}
    assert "subscription" in notifications(listener)

    installed.execute("TRUNCATE app.subscriptions CASCADE")
    rows = drain(installed)
    assert keys(rows) == [A, B, C]
    assert ("subscription", A, "app.subscriptions", "TRUNCATE") in rows


def test_truncate_with_nothing_indexed_enqueues_nothing(installed, listener):
    installed.execute("TRUNCATE app.tags")
    assert drain(installed) == []
    assert notifications(listener, 0.5) == []


def test_changes_inside_a_rolled_back_transaction_leave_no_queue_rows(installed, app_url):
    with psycopg.connect(app_url) as writer:
        writer.execute(
            "INSERT INTO app.subscriptions (subscription_id, customer) VALUES (%s, 'x')", [A]
        )
        writer.rollback()
    assert drain(installed) == []


# ---------------------------------------------------------------------------------------------
# Validation


def unchecked_entities(spec: dict[str, Any]) -> list[EntityConfig]:
    """The entity without config-load validation: the install checks must hold on their own
    (a key like ``1); DROP ...`` is refused at load too, see tests/unit/config/)."""
    watch = [WatchedTable.model_construct(**{"columns": None, **w}) for w in spec["watch"]]
    return [EntityConfig.model_construct(**{**spec, "watch": watch})]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"table": "app.nope"}, "entity 'subscription': table app.nope does not exist"),
        ({"key": "sub_id"}, "key column 'sub_id' does not exist"),
        ({"columns": ["customer", "colour"]}, "column 'colour' (in columns) does not exist"),
        (
            {
                "watch": [
                    {"table": "app.product_blocks", "key": "subscription_id", "columns": ["nam"]}
                ]
            },
            "watch[0], table app.product_blocks: column 'nam' (in columns) does not exist",
        ),
        (
            {"watch": [{"table": "app.tags", "key": "(payload->>'sub')::uuidd"}]},
            "entity 'subscription', watch[0], table app.tags: key expression",
        ),
        (
            {"watch": [{"table": "app.tags", "key": "payload->>nope"}]},
            'column "nope" does not exist',
        ),
        (
            {"watch": [{"table": "app.tags", "key": "1); DROP TABLE app.tags; --"}]},
            "entity 'subscription', watch[0], table app.tags: key expression",
        ),
    ],
)
def test_config_errors_name_kind_table_and_column_and_change_nothing(
    shared_app_url, change, message
):
    with psycopg.connect(shared_app_url, autocommit=True) as conn:
        with pytest.raises(CaptureError) as raised:
            capture.install_triggers(conn, unchecked_entities({**ENTITY, **change}))
        assert message in str(raised.value)
        assert conn.execute("SELECT to_regclass('app.tags')").fetchone()[0] is not None
        assert capture.installed_captures(conn) == []
        assert trigger_definitions(conn) == []


def test_key_expression_is_checked_under_the_trigger_search_path(conn):
    conn.execute(
        "CREATE FUNCTION public.sub_of(j jsonb) RETURNS uuid LANGUAGE sql AS $$ SELECT (j->>'s')::uuid $$"
    )
    unqualified = {"watch": [{"table": "app.tags", "key": "sub_of(payload)"}]}
    with pytest.raises(CaptureError, match="function sub_of"):
        capture.install_triggers(conn, entities({**ENTITY, **unqualified}))
    qualified = {
        "watch": [{"table": "app.tags", "key": "public.sub_of(payload)", "trusted_key": True}]
    }
    capture.install_triggers(conn, entities({**ENTITY, **qualified}))
    conn.execute("INSERT INTO app.tags VALUES (1, %s)", [f'{{"s": "{A}"}}'])
    assert keys(drain(conn)) == [A]


def test_views_are_refused(conn):
    conn.execute("CREATE VIEW app.subs_view AS SELECT * FROM app.subscriptions")
    with pytest.raises(CaptureError, match="app.subs_view is a view"):
        capture.install_triggers(conn, entities({**ENTITY, "table": "app.subs_view", "watch": []}))


# ---------------------------------------------------------------------------------------------
# Install, drop, uninstall


def trigger_definitions(conn: psycopg.Connection) -> list[tuple[str, str, str]]:
    return conn.execute(
        """SELECT t.tgrelid::regclass::text, t.tgname, pg_get_triggerdef(t.oid)
             FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
            WHERE p.pronamespace = 'idxr'::regnamespace AND NOT t.tgisinternal
            ORDER BY 1, 2"""
    ).fetchall()


def function_definitions(conn: psycopg.Connection) -> list[tuple[str, str]]:
    return conn.execute(
        """SELECT proname, pg_get_functiondef(oid) FROM pg_proc
            WHERE pronamespace = 'idxr'::regnamespace AND proname LIKE 'capture%' ORDER BY 1"""
    ).fetchall()


def test_install_makes_four_triggers_per_table_and_kind(installed, capture_language):
    triggers = trigger_definitions(installed)
    by_table: dict[str, list[str]] = {}
    for table, name, _ in triggers:
        by_table.setdefault(table, []).append(name)
    assert by_table == {
        "app.product_blocks": [
            "idxr_block_delete",
            "idxr_block_insert",
            "idxr_block_truncate",
            "idxr_block_update",
            "idxr_subscription_delete",
            "idxr_subscription_insert",
            "idxr_subscription_truncate",
            "idxr_subscription_update",
        ],
        "app.subscriptions": [
            "idxr_subscription_delete",
            "idxr_subscription_insert",
            "idxr_subscription_truncate",
            "idxr_subscription_update",
        ],
        "app.tags": [
            "idxr_subscription_delete",
            "idxr_subscription_insert",
            "idxr_subscription_truncate",
            "idxr_subscription_update",
        ],
    }
    definitions = " ".join(d for _, _, d in triggers)
    assert "FOR EACH STATEMENT" in definitions and "FOR EACH ROW" not in definitions
    functions = installed.execute(
        """SELECT proname, prosecdef, proconfig FROM pg_proc
            WHERE pronamespace = 'idxr'::regnamespace AND proname LIKE 'capture%'"""
    ).fetchall()
    languages = {
        (c.entity_kind, c.source_table): c.language for c in capture.installed_captures(installed)
    }
    if capture_language == "c":  # every target but the key expression's
        assert languages == {
            ("block", "app.product_blocks"): "c",
            ("subscription", "app.product_blocks"): "c",
            ("subscription", "app.subscriptions"): "c",
            ("subscription", "app.tags"): "plpgsql",
        }
        assert [name for name, _, _ in functions] == ["capture_subscription__app__tags"]
        calls_c = [d for _, _, d in triggers if "idxr.idxr_capture(" in d]
        assert len(calls_c) == 12
        assert (
            "EXECUTE FUNCTION idxr.idxr_capture('subscription', 'app.product_blocks', 'n', "
            "'subscription_id', 'subscription_id,name,position')" in " ".join(calls_c)
        )
    else:
        assert set(languages.values()) == {"plpgsql"}
        assert len(functions) == 4
    assert all(
        secdef and config == ["search_path=pg_catalog, pg_temp", "enable_seqscan=off"]
        for _, secdef, config in functions
    )


def test_install_twice_is_harmless(installed):
    before = (trigger_definitions(installed), function_definitions(installed))
    capture.install_triggers(installed, entities(ENTITY, BLOCK))
    assert (trigger_definitions(installed), function_definitions(installed)) == before
    installed.execute(
        "INSERT INTO app.subscriptions (subscription_id, customer) VALUES (%s, 'x')", [A]
    )
    assert drain(installed) == [("subscription", A, "app.subscriptions", "INSERT")]


def test_reinstall_drops_triggers_of_a_table_no_longer_watched(installed):
    capture.install_triggers(installed, entities({**ENTITY, "watch": ENTITY["watch"][:1]}))
    tables = {t for t, name, _ in trigger_definitions(installed) if "subscription" in name}
    assert tables == {"app.subscriptions", "app.product_blocks"}
    installed.execute("INSERT INTO app.tags VALUES (1, %s)", [f'{{"subscription": "{A}"}}'])
    assert drain(installed) == []
    assert {c.entity_kind for c in capture.installed_captures(installed)} == {
        "subscription",
        "block",
    }


def test_drop_by_kind_then_all(installed):
    dropped = capture.drop_triggers(installed, ["block"])
    assert [(d.entity_kind, d.source_table) for d in dropped] == [("block", "app.product_blocks")]
    assert not [
        name for _, name, _ in trigger_definitions(installed) if name.startswith("idxr_block")
    ]
    assert len(trigger_definitions(installed)) == 12

    capture.drop_triggers(installed)
    assert trigger_definitions(installed) == []
    assert function_definitions(installed) == []
    assert capture.installed_captures(installed) == []
    add_subscriptions(installed, A)
    installed.execute(
        "INSERT INTO app.product_blocks (subscription_id, name) VALUES (%s, 'b')", [A]
    )
    assert drain(installed) == []


def test_one_table_listed_twice_for_a_kind_unions_both_keys(conn):
    conn.execute("CREATE TABLE app.categories (id int PRIMARY KEY, parent_id int, name text)")
    tree = {
        "name": "category",
        "model": "tests.models:Category",
        "table": "app.categories",
        "key": "id",
        "watch": [{"table": "categories", "key": "parent_id", "columns": ["parent_id", "name"]}],
    }
    conn.execute("SET search_path = app, public")
    capture.install_triggers(conn, entities(tree))
    assert len(capture.installed_captures(conn)) == 1
    conn.execute("INSERT INTO app.categories VALUES (1, NULL, 'root'), (2, 1, 'child')")
    drain(conn)
    conn.execute("UPDATE app.categories SET name = 'leaf' WHERE id = 2")
    assert keys(drain(conn), "category") == ["1", "2"]  # the child and its parent


def test_partitioned_tables_are_captured_through_their_parent(conn):
    conn.execute(
        """CREATE TABLE app.events (id int, region text, body text, PRIMARY KEY (id, region))
               PARTITION BY LIST (region);
           CREATE TABLE app.events_eu PARTITION OF app.events FOR VALUES IN ('eu');
           CREATE TABLE app.events_us PARTITION OF app.events FOR VALUES IN ('us')"""
    )
    events = {"name": "event", "model": "tests.models:Event", "table": "app.events", "key": "id"}
    capture.install_triggers(conn, entities(events))
    conn.execute("INSERT INTO app.events VALUES (1, 'eu', 'a'), (2, 'us', 'b'), (3, 'us', 'c')")
    assert keys(drain(conn), "event") == ["1", "2", "3"]
    conn.execute("UPDATE app.events SET region = 'eu' WHERE id = 2")  # moves partition
    assert keys(drain(conn), "event") == ["2"]
    conn.execute("DELETE FROM app.events_us")
    assert keys(drain(conn), "event") == ["3"]
    assert [c.complete for c in capture.installed_captures(conn)] == [True]

    conn.execute("CREATE TABLE app.events_ap PARTITION OF app.events FOR VALUES IN ('ap')")
    assert capture.installed_captures(conn)[0].uncovered == ("app.events_ap",)
    capture.install_triggers(conn, entities(events))
    conn.execute("INSERT INTO app.events_ap VALUES (4, 'ap', 'd')")
    assert keys(drain(conn), "event") == ["4"]
    assert [c.complete for c in capture.installed_captures(conn)] == [True]


def cli(url: str, config: Path, *args: str):
    return CliRunner().invoke(
        main, ["--database-url", url, "--config", str(config), *args], catch_exceptions=False
    )


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "idxr.yaml"
    path.write_text(yaml.safe_dump({"entities": [ENTITY, BLOCK]}))
    return path


def test_cli_sql_prints_the_script_install_runs(app_url, conn, config_file, tmp_path):
    printed = cli(app_url, config_file, "triggers", "sql")
    assert printed.exit_code == 0, printed.output
    assert trigger_definitions(conn) == []  # printing changes nothing
    script = tmp_path / "capture.sql"
    script.write_text(printed.output)
    subprocess.run(
        ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", app_url, "-f", str(script)],
        check=True,
        capture_output=True,
    )
    via_psql = (trigger_definitions(conn), function_definitions(conn))
    assert len(via_psql[0]) == 16

    result = cli(app_url, config_file, "triggers", "install")
    assert result.exit_code == 0, result.output
    assert "installed subscription on app.tags" in result.output
    assert (trigger_definitions(conn), function_definitions(conn)) == via_psql

    listed = cli(app_url, config_file, "triggers", "list")
    assert listed.output.count("\tok") == 4

    dropped = cli(app_url, config_file, "triggers", "drop", "--kind", "subscription")
    assert "dropped subscription on app.tags" in dropped.output
    assert len(trigger_definitions(conn)) == 4


def test_cli_reports_config_errors_without_traceback(app_url, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"entities": [{**ENTITY, "columns": ["customer", "colour"]}]}))
    result = CliRunner().invoke(
        main, ["--database-url", app_url, "--config", str(path), "triggers", "install"]
    )
    assert result.exit_code == 1
    assert "error: entity 'subscription', table app.subscriptions: column 'colour'" in (
        result.output
    )


def test_uninstall_removes_triggers_and_leaves_app_tables_and_rows(installed, app_url, config_file):
    add_subscriptions(installed, A, B)
    installed.execute(
        "INSERT INTO app.product_blocks (subscription_id, name) VALUES (%s, 'b')", [A]
    )
    before = installed.execute(
        "SELECT count(*), string_agg(subscription_id::text, ',' ORDER BY 1) FROM app.subscriptions"
    ).fetchone()

    result = cli(app_url, config_file, "uninstall", "--yes")
    assert result.exit_code == 0, result.output

    assert installed.execute("SELECT to_regnamespace('idxr')").fetchone()[0] is None
    assert installed.execute(
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'app.subscriptions'::regclass"
        " AND NOT tgisinternal"
    ).fetchone() == (0,)
    assert (
        installed.execute(
            "SELECT count(*), string_agg(subscription_id::text, ',' ORDER BY 1) FROM app.subscriptions"
        ).fetchone()
        == before
    )
    installed.execute("UPDATE app.subscriptions SET description = 'still writable'")
    installed.execute(
        "INSERT INTO app.product_blocks (subscription_id, name) VALUES (%s, 'c')", [B]
    )
    assert installed.execute("SELECT count(*) FROM app.product_blocks").fetchone() == (2,)


# ---------------------------------------------------------------------------------------------
# Names (no database)


def test_names_are_readable_and_bounded():
    assert capture.function_name("subscription", "public", "product_blocks") == (
        "capture_subscription__public__product_blocks"
    )
    assert capture.trigger_name("subscription", "update") == "idxr_subscription_update"
    long_kind = "k" * 63
    names = {capture.trigger_name(long_kind, event) for event in capture.EVENTS}
    assert len(names) == 4 and all(len(n) <= 63 for n in names)
    assert sorted(n.rsplit("_", 1)[1] for n in names) == sorted(capture.EVENTS)
    long_fn = capture.function_name(long_kind, "public", "t" * 63)
    assert len(long_fn) <= 63 and long_fn != capture.function_name(long_kind, "public", "t" * 62)


def test_ambiguous_names_get_a_hash_suffix():
    # 'a__b' + 'c' and 'a' + 'b__c' would both read capture_a__b__c without the suffix
    first = capture.function_name("a", "s", "b__c")
    second = capture.function_name("a__b", "s", "c")
    assert first != second
    assert capture.function_name("a", "s", "b_c") == "capture_a__s__b_c"
