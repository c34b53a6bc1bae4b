"""The worker's life: NOTIFY wake-ups, refresh policies, --once and refresh, clean stops on
SIGTERM/SIGINT, heartbeats, and recovery from lost connections. The deterministic test
embedder stands in for the model (beside the point here; the real model runs in
test_worker_e2e.py)."""

from __future__ import annotations

import signal
import subprocess
import time

import psycopg
import pytest

from tests.integration.test_writers_never_wait import BlockingEmbedder
from tests.integration.worker_runner import worker_thread
from tests.integration.worker_support import (
    IDXR,
    ITEMS_DDL,
    execute,
    fetch_index,
    install_triggers,
    item_entity,
    make_config,
    queue_depth,
    subprocess_env,
    wait_until,
)

NOTES_DDL = "CREATE TABLE public.notes (id integer PRIMARY KEY, title text NOT NULL, n integer NOT NULL DEFAULT 0)"


def note_entity(**overrides):
    return item_entity(name="note", table="public.notes", **overrides)


def ids(url: str, kind: str = "item") -> set[str]:
    return {entity for entity, _ in fetch_index(url, kind)}


def worker_row(url: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT state, processed, heartbeat_at FROM idxr.workers ORDER BY started_at"
        ).fetchall()


@pytest.fixture
def items_db(isolated_database_url):
    execute(isolated_database_url, ITEMS_DDL)
    execute(isolated_database_url, NOTES_DDL)
    return isolated_database_url


def run_cli(url: str, config_path, *args: str, timeout: float = 120):
    return subprocess.run(
        [IDXR, "--database-url", url, "--config", str(config_path), *args],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=timeout,
    )


def test_once_drains_on_change_kinds_and_refresh_processes_a_manual_kind(items_db, tmp_path):
    url = items_db
    config = make_config(
        tmp_path,
        [item_entity(), note_entity(refresh="manual")],
        model="deterministic-test",
    )
    install_triggers(url, config)
    execute(
        url,
        "INSERT INTO items (id, title, n) SELECT g, 'item ' || g, g FROM generate_series(1, 150) g",
    )
    execute(url, "INSERT INTO notes (id, title) VALUES (1, 'remember the milk')")

    once = run_cli(url, tmp_path / "idxr.yaml", "worker", "--once", "--batch-size", "40")
    assert once.returncode == 0, once.stderr
    assert "150 entities: 150 indexed" in once.stdout
    assert len(ids(url)) == 150
    assert ids(url, "note") == set() and queue_depth(url, "note") == 1  # manual: left queued
    assert [row[0] for row in worker_row(url)] == ["stopped"]

    refreshed = run_cli(url, tmp_path / "idxr.yaml", "refresh", "note")
    assert refreshed.returncode == 0, refreshed.stderr
    assert refreshed.stdout.startswith("note: 1 entities: 1 indexed")
    assert ids(url, "note") == {"1"} and queue_depth(url) == 0
    with psycopg.connect(url) as conn:
        stamps = dict(
            conn.execute("SELECT name, last_refresh_at IS NOT NULL FROM idxr.entity_kinds")
        )
    assert stamps == {"item": True, "note": True}


def test_a_manual_kind_is_never_processed_by_a_running_worker(items_db, tmp_path):
    url = items_db
    config = make_config(
        tmp_path,
        [item_entity(), note_entity(refresh="manual")],
        model="deterministic-test",
        worker={"poll_interval": 0.1},
    )
    install_triggers(url, config)
    with worker_thread(url, config) as runner:
        execute(url, "INSERT INTO notes (id, title) VALUES (1, 'later')")
        execute(url, "INSERT INTO items (id, title) VALUES (1, 'now')")
        wait_until(lambda: ids(url) == {"1"}, 30, what="the on_change kind indexed")
        time.sleep(1.0)  # ten poll intervals
        assert runner.worker.totals.entities == 1
    assert ids(url, "note") == set() and queue_depth(url, "note") == 1


def test_an_every_kind_is_processed_at_most_once_per_interval(items_db, tmp_path):
    url = items_db
    config = make_config(
        tmp_path,
        [item_entity(refresh="every 1h")],
        model="deterministic-test",
        worker={"poll_interval": 0.1},
    )
    install_triggers(url, config)
    execute(url, "INSERT INTO items (id, title) VALUES (1, 'first')")
    with worker_thread(url, config) as runner:
        wait_until(lambda: ids(url) == {"1"}, 30, what="the first refresh")  # never refreshed yet
        execute(url, "INSERT INTO items (id, title) VALUES (2, 'second')")
        time.sleep(1.0)  # ten poll intervals, well inside the hour
        assert ids(url) == {"1"} and queue_depth(url) == 1
        # An hour passes (for the kind's bookkeeping): the next refresh round runs.
        execute(
            url,
            "UPDATE idxr.entity_kinds SET last_refresh_at = now() - interval '61 minutes'"
            " WHERE name = 'item'",
        )
        wait_until(lambda: ids(url) == {"1", "2"}, 30, what="the second refresh")
        runner.settle(url)
    with psycopg.connect(url) as conn:
        age = conn.execute(
            "SELECT now() - last_refresh_at < interval '1 minute' FROM idxr.entity_kinds"
        ).fetchone()[0]
    assert age


def test_a_notification_wakes_the_worker_long_before_its_poll_interval(items_db, tmp_path):
    url = items_db
    config = make_config(
        tmp_path, [item_entity()], model="deterministic-test", worker={"poll_interval": 600}
    )
    install_triggers(url, config)
    with worker_thread(url, config) as runner:
        wait_until(lambda: worker_row(url) != [], 30, what="the worker to start")
        time.sleep(0.5)  # let it go to sleep on LISTEN
        execute(url, "INSERT INTO items (id, title) VALUES (1, 'wake up')")
        wait_until(lambda: ids(url) == {"1"}, 60, what="the NOTIFY-driven batch")
        assert runner.worker.totals.batches == 1


def test_the_worker_recovers_when_its_connections_are_terminated(items_db, tmp_path):
    url = items_db
    config = make_config(
        tmp_path, [item_entity()], model="deterministic-test", worker={"poll_interval": 0.2}
    )
    install_triggers(url, config)
    with worker_thread(url, config) as runner:
        execute(url, "INSERT INTO items (id, title) VALUES (1, 'before')")
        wait_until(lambda: ids(url) == {"1"}, 30, what="the first entity")
        with psycopg.connect(url, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name LIKE 'idxr-worker%%' AND datname = current_database()"
            ).fetchone()[0]
        assert killed >= 3  # main, listen, cache (and heartbeat when connected)
        beat = worker_row(url)[0][2]
        execute(url, "INSERT INTO items (id, title) VALUES (2, 'after')")
        wait_until(lambda: ids(url) == {"1", "2"}, 60, what="indexing to resume")
        wait_until(lambda: worker_row(url)[0][2] > beat, 30, what="heartbeats to resume")
        assert runner.error is None and runner.thread.is_alive()
        with psycopg.connect(url) as conn:
            reconnected = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'idxr-worker%%'"
                " AND datname = current_database()"
            ).fetchone()[0]
        assert reconnected >= 2


def test_stop_finishes_the_current_batch_first(items_db, tmp_path):
    url = items_db
    config = make_config(
        tmp_path, [item_entity()], model="deterministic-test", worker={"poll_interval": 0.2}
    )
    install_triggers(url, config)
    embedder = BlockingEmbedder()
    with worker_thread(url, config, embedder=embedder) as runner:
        execute(url, "INSERT INTO items (id, title) VALUES (1, 'in flight')")
        assert embedder.entered.wait(30)
        runner.worker.stop()  # what SIGTERM/SIGINT do
        embedder.release.set()
        runner.thread.join(30)
        assert not runner.thread.is_alive()
    assert ids(url) == {"1"} and queue_depth(url) == 0
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM idxr.leases").fetchone()[0] == 0
    assert [row[:2] for row in worker_row(url)] == [("stopped", 1)]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_worker_cleanly_with_exit_code_0(items_db, tmp_path, signum):
    url = items_db
    config = make_config(
        tmp_path, [item_entity()], model="deterministic-test", worker={"poll_interval": 0.2}
    )
    install_triggers(url, config)
    proc = subprocess.Popen(
        [IDXR, "--database-url", url, "--config", str(tmp_path / "idxr.yaml"), "worker"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
    )
    try:
        wait_until(lambda: [r[0] for r in worker_row(url)] == ["running"], 60, what="start")
        execute(url, "INSERT INTO items (id, title) VALUES (1, 'one')")
        wait_until(lambda: ids(url) == {"1"}, 30, what="indexing")
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "1 entities: 1 indexed" in out
    assert [row[:2] for row in worker_row(url)] == [("stopped", 1)]


def test_an_unknown_kind_is_refused_with_the_known_ones(items_db, tmp_path):
    make_config(tmp_path, [item_entity()], model="deterministic-test")
    result = run_cli(items_db, tmp_path / "idxr.yaml", "worker", "--once", "--kind", "nope")
    assert result.returncode == 1
    assert "unknown entity kind 'nope' (known: item)" in result.stderr


@pytest.mark.parametrize("with_vector", [False, True])
def test_a_database_without_the_idxr_schema_is_reported_not_retried(
    empty_database_url, tmp_path, with_vector
):
    if with_vector:
        execute(empty_database_url, "CREATE EXTENSION vector")
    make_config(tmp_path, [item_entity()], model="deterministic-test")
    result = run_cli(empty_database_url, tmp_path / "idxr.yaml", "worker", "--once", timeout=60)
    assert result.returncode == 1
    assert "run `idxr-pg migrate`" in result.stderr
    assert ("idxr schema is not installed" in result.stderr) == with_vector
    assert "Traceback" not in result.stderr
