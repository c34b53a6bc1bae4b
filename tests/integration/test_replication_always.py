"""`triggers install --always`: rows applied by a logical-replication subscription are indexed.

A subscription's apply worker runs with ``session_replication_role = replica``: ordinary
(ORIGIN) triggers do not fire, and it fires row-level triggers only, never statement-level ones
(except TRUNCATE; the initial table copy fires INSERT statement triggers). The publisher is a
throwaway cluster started here with ``wal_level = logical`` (the main test server runs with
``replica``); the subscriber is an isolated test database on the main server.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from tests.integration.worker_support import (
    IDXR,
    ITEMS_DDL,
    Item,
    actual_index,
    execute,
    expected_index,
    item_entity,
    queue_depth,
    subprocess_env,
    wait_until,
    write_config,
)

PG_BIN = Path(os.environ.get("IDXR_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
ALL_ITEMS = "SELECT i.id, to_jsonb(i) FROM public.items i"
ROWS = "SELECT id, title, body, n FROM public.items ORDER BY id"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(*args: str) -> list[str]:
    return args if os.geteuid() != 0 else ["runuser", "-u", "postgres", "--", *args]


@pytest.fixture(scope="module")
def publisher_server() -> Iterator[str]:
    """A throwaway cluster with wal_level = logical; its admin URL. Fails (never skips) when it
    cannot be started: this is the only test of capture on a subscriber."""
    for tool in ("initdb", "pg_ctl"):
        if not (PG_BIN / tool).exists():
            pytest.fail(f"{PG_BIN / tool} is missing: cannot start the publisher cluster")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.fail("running as root without runuser: cannot start the publisher cluster")
    data = Path(tempfile.mkdtemp(prefix="idxr_publisher_"))
    if os.geteuid() == 0:
        shutil.chown(data, "postgres")
    port = _free_port()
    try:
        subprocess.run(
            _as_postgres(str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"),
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
        options = (
            f"-p {port} -c wal_level=logical -c unix_socket_directories={data} "
            "-c listen_addresses=127.0.0.1 -c fsync=off"
        )
        subprocess.run(
            _as_postgres(
                str(PG_BIN / "pg_ctl"),
                "-D",
                str(data),
                "-o",
                options,
                "-l",
                str(data / "server.log"),
                "-w",
                "start",
            ),
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        output = getattr(exc, "stderr", "") or getattr(exc, "stdout", "") or ""
        shutil.rmtree(data, ignore_errors=True)
        pytest.fail(f"cannot start the publisher cluster: {exc}\n{output}")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"),
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def replication(publisher_server: str, isolated_database_url: str) -> Iterator[tuple[str, str]]:
    """(publisher database URL, subscriber database URL), items on both, the publication made;
    the test creates the subscription (named ``idxr_sub``), dropped here afterwards."""
    name = f"pub_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(publisher_server, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    publisher = publisher_server.rsplit("/", 1)[0] + "/" + name
    execute(publisher, ITEMS_DDL)
    execute(publisher, "CREATE PUBLICATION idxr_pub FOR TABLE public.items")
    execute(isolated_database_url, ITEMS_DDL)
    try:
        yield publisher, isolated_database_url
    finally:
        with psycopg.connect(isolated_database_url, autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_subscription WHERE subname = 'idxr_sub'").fetchone():
                conn.execute("ALTER SUBSCRIPTION idxr_sub DISABLE")
                try:  # drops the slot on the publisher too
                    conn.execute("SET statement_timeout = '10s'")
                    conn.execute("DROP SUBSCRIPTION idxr_sub")
                except psycopg.Error:  # publisher unreachable: forget the slot, drop the rest
                    conn.execute("ALTER SUBSCRIPTION idxr_sub SET (slot_name = NONE)")
                    conn.execute("DROP SUBSCRIPTION idxr_sub")


def _subscribe(subscriber: str, publisher: str) -> None:
    params = psycopg.conninfo.conninfo_to_dict(publisher)
    conninfo = f"host=127.0.0.1 port={params['port']} dbname={params['dbname']} user=postgres"
    execute(
        subscriber,
        sql.SQL("CREATE SUBSCRIPTION idxr_sub CONNECTION {} PUBLICATION idxr_pub").format(
            sql.Literal(conninfo)
        ),
    )


def _rows(url: str) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(ROWS).fetchall()


def _wait_replicated(publisher: str, subscriber: str) -> None:
    want = _rows(publisher)
    wait_until(lambda: _rows(subscriber) == want, timeout=15, what="the subscriber's rows")


def _cli(url: str, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [IDXR, "--database-url", url, "--config", str(config), *args],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def _always(url: str, config: Path) -> list[bool]:
    listed = json.loads(_cli(url, config, "triggers", "list", "--json").stdout)
    return [entry["always"] for entry in listed]


def _assert_exact(url: str) -> None:
    assert queue_depth(url, "item") == 0
    assert actual_index(url, "item") == expected_index(url, "item", Item, ALL_ITEMS)


def test_always_triggers_index_the_rows_a_subscription_applies(replication, tmp_path):
    publisher, subscriber = replication
    config = write_config(tmp_path / "idxr.yaml", [item_entity()], model="deterministic-test")
    _cli(subscriber, config, "triggers", "install", "--always")
    assert _always(subscriber, config) == [True]

    # The initial table copy.
    execute(
        publisher,
        "INSERT INTO items (id, title, n) SELECT g, 'first ' || g, g FROM generate_series(1, 5) g",
    )
    _subscribe(subscriber, publisher)
    _wait_replicated(publisher, subscriber)
    assert queue_depth(subscriber, "item") > 0
    _cli(subscriber, config, "worker", "--once")
    _assert_exact(subscriber)
    assert len({row[0] for row in actual_index(subscriber, "item")}) == 5

    # Changes streamed afterwards: inserts, an update of one field, a delete.
    execute(
        publisher,
        "INSERT INTO items (id, title, n) SELECT g, 'later ' || g, g FROM generate_series(6, 8) g",
    )
    execute(publisher, "UPDATE items SET title = 'renamed ' || id WHERE id IN (2, 7)")
    execute(publisher, "UPDATE items SET body = 'a body' WHERE id = 3")
    execute(publisher, "DELETE FROM items WHERE id = 4")
    _wait_replicated(publisher, subscriber)
    assert queue_depth(subscriber, "item") > 0
    _cli(subscriber, config, "worker", "--once")
    _assert_exact(subscriber)
    ids = {row[0] for row in actual_index(subscriber, "item")}
    assert ids == {"1", "2", "3", "5", "6", "7", "8"}

    # TRUNCATE is replicated as a statement; the index empties.
    execute(publisher, "TRUNCATE items")
    _wait_replicated(publisher, subscriber)
    _cli(subscriber, config, "worker", "--once")
    _assert_exact(subscriber)
    assert actual_index(subscriber, "item") == set()

    # Writes on the subscriber itself are still captured once, by the statement triggers.
    execute(subscriber, "INSERT INTO items (id, title, n) VALUES (100, 'local', 1)")
    assert queue_depth(subscriber, "item") == 1


def test_without_always_a_subscriber_captures_nothing(replication, tmp_path):
    publisher, subscriber = replication
    config = write_config(tmp_path / "idxr.yaml", [item_entity()], model="deterministic-test")
    _cli(subscriber, config, "triggers", "install")
    assert _always(subscriber, config) == [False]
    execute(publisher, "INSERT INTO items (id, title, n) VALUES (1, 'copied', 1)")
    _subscribe(subscriber, publisher)
    _wait_replicated(publisher, subscriber)
    execute(publisher, "INSERT INTO items (id, title, n) VALUES (2, 'streamed', 2)")
    execute(publisher, "UPDATE items SET title = 'changed' WHERE id = 1")
    _wait_replicated(publisher, subscriber)
    assert queue_depth(subscriber, "item") == 0


def test_always_is_sticky_until_no_always(isolated_database_url, tmp_path):
    url = isolated_database_url
    execute(url, ITEMS_DDL)
    config = write_config(tmp_path / "idxr.yaml", [item_entity()], model="deterministic-test")
    _cli(url, config, "triggers", "install", "--always")
    _cli(url, config, "triggers", "install", "--always")  # idempotent
    assert _always(url, config) == [True]
    _cli(url, config, "triggers", "install")  # a plain re-install keeps ALWAYS
    assert _always(url, config) == [True]
    listed = _cli(url, config, "triggers", "list").stdout
    assert "always" in listed
    _cli(url, config, "triggers", "install", "--no-always")
    assert _always(url, config) == [False]
    with psycopg.connect(url, autocommit=True) as conn:
        modes = conn.execute(
            "SELECT array_agg(DISTINCT tgenabled::text) FROM pg_trigger"
            " WHERE tgrelid = 'public.items'::regclass AND NOT tgisinternal"
        ).fetchone()[0]
    assert modes == ["O"]  # the row-level replica triggers are gone too
    _cli(url, config, "triggers", "drop")
    with psycopg.connect(url, autocommit=True) as conn:
        left = conn.execute(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'public.items'::regclass"
            " AND NOT tgisinternal"
        ).fetchone()[0]
    assert left == 0


def test_always_covers_every_partition_of_a_partitioned_table(isolated_database_url, tmp_path):
    url = isolated_database_url
    execute(
        url,
        "CREATE TABLE public.items (id integer PRIMARY KEY, title text NOT NULL, body text,"
        " n integer NOT NULL DEFAULT 0) PARTITION BY RANGE (id);"
        " CREATE TABLE public.items_low PARTITION OF public.items FOR VALUES FROM (0) TO (100);"
        " CREATE TABLE public.items_high PARTITION OF public.items FOR VALUES FROM (100) TO (200)",
    )
    config = write_config(tmp_path / "idxr.yaml", [item_entity()], model="deterministic-test")
    _cli(url, config, "triggers", "install", "--always")
    _cli(url, config, "triggers", "install")  # sticky, and re-runnable over the clones
    assert _always(url, config) == [True]
    with psycopg.connect(url, autocommit=True) as conn:
        modes = conn.execute(
            "SELECT c.relname, t.tgname LIKE '%%replica', array_agg(DISTINCT t.tgenabled::text),"
            " count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
            " WHERE c.relname LIKE 'items%%' AND NOT t.tgisinternal GROUP BY 1, 2 ORDER BY 1, 2"
        ).fetchall()
    assert modes == [
        (table, replica, ["R"] if replica else ["A"], 3 if replica else 4)
        for table in ("items", "items_high", "items_low")
        for replica in (False, True)
    ]
    # An apply worker's writes (session_replication_role = replica) reach the queue once.
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute("INSERT INTO public.items (id, title) VALUES (1, 'a'), (150, 'b')")
    assert queue_depth(url, "item") >= 2
