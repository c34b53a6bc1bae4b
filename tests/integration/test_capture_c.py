"""The C capture trigger (issue 13, fourth pass): the default where the server has it, plpgsql
where it does not or cannot cover a table; re-installing moves tables between the two; the
sources ship in the package and build with PGXS. What both paths must capture alike is in
test_capture, test_queue_coalescing, test_capture_locks and the chaos test (parametrized by
the ``capture_language`` fixture); the C function's privileges are in test_privileges."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import psycopg
import pytest
import yaml
from click.testing import CliRunner

from idxr_pg.capture import library
from idxr_pg.capture import triggers as capture
from idxr_pg.cli import main
from idxr_pg.db import capture as bookkeeping
from idxr_pg.db import queue
from tests.conftest import c_capture_missing
from tests.integration.test_capture import (
    APP_SCHEMA,
    BLOCK,
    ENTITY,
    add_subscriptions,
    drain,
    entities,
    keys,
)

A = "00000000-0000-0000-0000-00000000000a"
PG_CONFIG = "/usr/lib/postgresql/15/bin/pg_config"


def library_available(url: str) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        return bookkeeping.c_extension_schema(conn)[1]


@pytest.fixture
def app_url(isolated_database_url: str) -> str:
    if not library_available(isolated_database_url):
        c_capture_missing("the server has no idxr_capture library")
    with psycopg.connect(isolated_database_url, autocommit=True) as conn:
        conn.execute(APP_SCHEMA)
    return isolated_database_url


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "idxr.yaml"
    path.write_text(yaml.safe_dump({"entities": [ENTITY, BLOCK]}))
    return path


def cli(url: str, config: Path, *args: str):
    return CliRunner().invoke(
        main, ["--database-url", url, "--config", str(config), *args], catch_exceptions=False
    )


def languages(conn: psycopg.Connection) -> dict[tuple[str, str], str]:
    return {(c.entity_kind, c.source_table): c.language for c in capture.installed_captures(conn)}


def capture_functions(conn: psycopg.Connection) -> list[str]:
    return [
        name
        for (name,) in conn.execute(
            "SELECT proname FROM pg_proc WHERE pronamespace = 'idxr'::regnamespace"
            " AND (proname LIKE 'capture%' OR proname = 'idxr_capture') ORDER BY 1"
        )
    ]


def test_reinstall_moves_plpgsql_tables_to_the_c_trigger_and_back_and_uninstall_removes_it(
    app_url, config_file, monkeypatch
):
    monkeypatch.delenv(capture.LANGUAGE_ENV, raising=False)
    with psycopg.connect(app_url, autocommit=True) as conn:
        # a database installed before the C trigger: plpgsql everywhere, a change queued
        capture.install_triggers(conn, entities(ENTITY, BLOCK), language="plpgsql")
        assert set(languages(conn).values()) == {"plpgsql"}
        add_subscriptions(conn, A)

        installed = cli(app_url, config_file, "triggers", "install", "--allow-superuser")
        assert installed.exit_code == 0, installed.output
        assert "installed subscription on app.subscriptions (C: idxr.idxr_capture)" in (
            installed.output
        )
        assert (
            "installed subscription on app.tags (plpgsql: idxr.capture_subscription__app__tags;"
            " C not used: key expression" in installed.output
        )
        assert languages(conn) == {
            ("block", "app.product_blocks"): "c",
            ("subscription", "app.product_blocks"): "c",
            ("subscription", "app.subscriptions"): "c",
            ("subscription", "app.tags"): "plpgsql",
        }
        # the plpgsql functions of the moved tables are gone; what was queued stays
        assert capture_functions(conn) == ["capture_subscription__app__tags", "idxr_capture"]
        assert keys(drain(conn)) == [A]
        conn.execute("UPDATE app.subscriptions SET customer = 'changed'")
        conn.execute("UPDATE app.subscriptions SET internal_notes = 'not read'")
        assert drain(conn) == [("subscription", A, "app.subscriptions", "UPDATE")]

        listed = cli(app_url, config_file, "triggers", "list")
        assert listed.output.count("\tidxr.idxr_capture (c)\tok\torigin") == 3, listed.output
        assert "\tidxr.capture_subscription__app__tags (plpgsql)\tok" in listed.output
        as_json = cli(app_url, config_file, "triggers", "list", "--json")
        assert '"language": "c"' in as_json.output
        status = cli(app_url, config_file, "status")
        assert (
            "  capture:        c on app.product_blocks, c on app.subscriptions, plpgsql on app.tags"
            in status.output
        ), status.output

        back = cli(app_url, config_file, "triggers", "install", "--language", "plpgsql")
        assert back.exit_code == 0, back.output
        assert set(languages(conn).values()) == {"plpgsql"}
        assert len(capture_functions(conn)) == 5  # 4 plpgsql + the extension's, unused
        conn.execute("UPDATE app.subscriptions SET customer = 'again'")
        assert keys(drain(conn)) == [A]

        capture.install_triggers(conn, entities(ENTITY, BLOCK))  # auto: C again
        assert capture.drop_triggers(conn, ["block"])[0].entity_kind == "block"
        remaining = conn.execute(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'app.product_blocks'::regclass"
            " AND tgname LIKE 'idxr_block%'"
        ).fetchone()[0]
        assert remaining == 0
        assert set(languages(conn)) == {
            ("subscription", "app.product_blocks"),
            ("subscription", "app.subscriptions"),
            ("subscription", "app.tags"),
        }

    removed = cli(app_url, config_file, "uninstall", "--yes")
    assert removed.exit_code == 0, removed.output
    with psycopg.connect(app_url, autocommit=True) as conn:
        assert conn.execute(
            "SELECT count(*) FROM pg_extension WHERE extname = 'idxr_capture'"
        ).fetchone() == (0,)
        assert conn.execute(
            "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'idxr%'"
        ).fetchone() == (0,)
        conn.execute("INSERT INTO app.product_blocks (name) VALUES ('still writable')")
        assert conn.execute("SELECT count(*) FROM app.subscriptions").fetchone() == (1,)


def test_language_c_names_kind_and_table_it_cannot_cover_and_changes_nothing(app_url):
    with psycopg.connect(app_url, autocommit=True) as conn:
        with pytest.raises(capture.CaptureError) as refused:
            capture.install_triggers(conn, entities(ENTITY), language="c")
        assert str(refused.value).startswith(
            "entity 'subscription', table app.tags: the C capture trigger cannot be used: key "
            "expression \"(payload->>'subscription')::uuid\""
        )
        assert capture.installed_captures(conn) == []
        with pytest.raises(capture.CaptureError, match="--always"):
            capture.install_triggers(conn, entities(BLOCK), always=True, language="c")


def test_without_the_library_auto_installs_plpgsql_and_says_why(app_url, config_file, monkeypatch):
    monkeypatch.delenv(capture.LANGUAGE_ENV, raising=False)
    monkeypatch.setattr(bookkeeping, "c_extension_schema", lambda conn: (None, False))
    result = cli(app_url, config_file, "triggers", "install", "--allow-superuser")
    assert result.exit_code == 0, result.output
    assert (
        "installed block on app.product_blocks (plpgsql: idxr.capture_block__app__product_blocks;"
        " C not used: the server has no idxr_capture library (build it with `idxr-pg doctor "
        "--install-missing`" in result.output
    )
    with psycopg.connect(app_url, autocommit=True) as conn:
        assert set(languages(conn).values()) == {"plpgsql"}
        add_subscriptions(conn, A)
        assert keys(drain(conn)) == [A]
    forced = cli(app_url, config_file, "triggers", "install", "--language", "c")
    assert forced.exit_code == 1
    assert "the C capture trigger cannot be used: the server has no idxr_capture library" in (
        forced.output
    )


def test_the_package_carries_the_c_sources_and_they_build_with_pgxs(tmp_path):
    source = library.source_dir()
    for name in library.SOURCE_FILES:
        assert (source / name).is_file(), name
    control = (source / "idxr_capture.control").read_text()
    assert "trusted = true" in control and "schema = idxr" in control
    if not Path(PG_CONFIG).exists() or shutil.which("make") is None:
        c_capture_missing("no PostgreSQL 15 pg_config or make here")
    for name in library.SOURCE_FILES:
        shutil.copyfile(source / name, tmp_path / name)
    subprocess.run(
        ["make", f"PG_CONFIG={PG_CONFIG}"], cwd=tmp_path, check=True, capture_output=True
    )
    assert (tmp_path / "idxr_capture.so").is_file()


def test_doctor_says_whether_capture_uses_the_c_trigger(app_url, config_file):
    result = cli(app_url, config_file, "doctor")
    assert result.exit_code == 0, result.output
    assert "idxr_capture (C capture trigger) available: capture uses it" in result.output


def test_the_c_trigger_copies_the_python_constants_it_shares():
    """idxr_capture.c repeats three facts owned in Python: they must not drift apart."""
    text = (library.source_dir() / "idxr_capture.c").read_text()
    defines = dict(re.findall(r"^#define (\w+) (\S+)", text, re.MULTILINE))
    assert int(defines["BATCH_THRESHOLD"]) == capture.BATCH_THRESHOLD
    assert int(defines["WAKE_NAMESPACE"], 16) == queue.WAKE_NAMESPACE
    assert defines["QUEUE_CHANNEL"] == f'"{queue.CHANNEL}"'


def test_an_installer_who_may_not_execute_the_c_function_gets_plpgsql_with_the_reason(
    app_url, monkeypatch
):
    """The extension exists (created by another role): CREATE TRIGGER would be refused, so
    ``auto`` installs plpgsql and names the reason instead of failing the install."""
    monkeypatch.delenv(capture.LANGUAGE_ENV, raising=False)
    with psycopg.connect(app_url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION idxr_capture")
        monkeypatch.setattr(bookkeeping, "may_execute_c_function", lambda conn: False)
        plan = capture.install_triggers(conn, entities(BLOCK))
        (planned,) = plan.captures
        assert planned.language == "plpgsql"
        assert planned.plpgsql_reason == (
            "only the role that created extension idxr_capture may use idxr.idxr_capture() "
            "(run `triggers install` as that role)"
        )
        assert set(languages(conn).values()) == {"plpgsql"}


def test_a_detached_partition_loses_its_c_triggers_at_the_next_install(app_url):
    with psycopg.connect(app_url, autocommit=True) as conn:
        conn.execute(
            """CREATE TABLE app.events (id int, region text, PRIMARY KEY (id, region))
                   PARTITION BY LIST (region);
               CREATE TABLE app.events_eu PARTITION OF app.events FOR VALUES IN ('eu');
               CREATE TABLE app.events_us PARTITION OF app.events FOR VALUES IN ('us')"""
        )
        events = {
            "name": "event",
            "model": "tests.models:Event",
            "table": "app.events",
            "key": "id",
        }
        capture.install_triggers(conn, entities(events))
        (installed,) = capture.installed_captures(conn)
        assert installed.language == "c" and len(installed.c_triggers) == 12
        conn.execute("ALTER TABLE app.events DETACH PARTITION app.events_us")
        capture.install_triggers(conn, entities(events), language="plpgsql")
        (installed,) = capture.installed_captures(conn)
        assert installed.language == "plpgsql" and installed.c_triggers == ()
        conn.execute("INSERT INTO app.events_us VALUES (7, 'us')")  # no longer the kind's
        conn.execute("INSERT INTO app.events VALUES (8, 'eu')")
        assert keys(drain(conn), "event") == ["8"]
