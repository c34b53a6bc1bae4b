"""Stopping `idxr-pg worker` and `idxr-pg backfill` with signals: the first SIGTERM finishes
the current batch (see test_worker_lifecycle.py), a second one stops at once, mid-batch, with
exit code 128 + 15.

The batch is made slow on purpose (the document query sleeps), so the second signal arrives
while the worker (or the backfill's helper thread, which prepares the batch ahead: the
overlap) is inside it."""

from __future__ import annotations

import signal
import subprocess
import time

import psycopg
import pytest

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

SLEEP_SECONDS = 60
SLOW_DOCUMENT = (
    f"SELECT i.id, CASE WHEN pg_sleep({SLEEP_SECONDS}) IS NULL THEN NULL ELSE to_jsonb(i) END "
    "FROM public.items AS i WHERE i.id = ANY(%(keys)s::integer[])"
)


def _sleeping_backends(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND state = 'active' AND query LIKE %s AND pid <> pg_backend_pid()",
            [f"%pg_sleep({SLEEP_SECONDS})%"],
        ).fetchone()[0]


@pytest.fixture
def items_db(isolated_database_url):
    execute(isolated_database_url, ITEMS_DDL)
    return isolated_database_url


def test_a_second_sigterm_stops_the_worker_mid_batch_with_128_plus_signum(items_db, tmp_path):
    url = items_db
    config = make_config(
        tmp_path,
        [item_entity(document=SLOW_DOCUMENT)],
        model="deterministic-test",
        worker={"poll_interval": 0.2},
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
        execute(url, "INSERT INTO items (id, title) VALUES (1, 'one')")
        wait_until(lambda: _sleeping_backends(url) == 1, 60, what="the worker inside its batch")
        proc.send_signal(signal.SIGTERM)  # first: finish the batch (which would take a minute)
        time.sleep(0.5)
        assert proc.poll() is None, "the first SIGTERM must not stop the worker mid-batch"
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)  # second: stop now
        out, err = proc.communicate(timeout=30)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert took < SLEEP_SECONDS / 2, f"took {took:.1f} s to stop"
    assert "SIGTERM received: stopping after the current batch" in err
    assert "worker stopped mid-batch" in err and out == ""
    # nothing of the interrupted batch was written; the change stays queued for the next worker
    assert fetch_index(url, "item") == {} and queue_depth(url, "item") == 1
    wait_until(lambda: _sleeping_backends(url) == 0, 30, what="the slow query to end")
    with psycopg.connect(url) as conn:
        leases = conn.execute("SELECT count(*) FROM idxr.leases").fetchone()[0]
        state = conn.execute("SELECT state FROM idxr.workers").fetchone()[0]
    assert leases == 0 and state == "stopped"  # released on the way out, not left to expire


def test_a_second_sigterm_stops_a_backfill_whose_helper_is_inside_a_slow_batch(items_db, tmp_path):
    url = items_db
    make_config(tmp_path, [item_entity(document=SLOW_DOCUMENT)], model="deterministic-test")
    execute(url, "INSERT INTO items (id, title) VALUES (1, 'one'), (2, 'two')")
    proc = subprocess.Popen(
        [IDXR, "--database-url", url, "--config", str(tmp_path / "idxr.yaml"), "backfill", "item"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
    )
    try:
        # The overlap (on by default) loads the first batch in its helper thread.
        wait_until(lambda: _sleeping_backends(url) == 1, 60, what="the backfill inside its batch")
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert proc.poll() is None, "the first SIGTERM must not stop the backfill mid-batch"
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert took < SLEEP_SECONDS / 2, f"took {took:.1f} s to stop"
    assert "stopped mid-batch" in err
    wait_until(lambda: _sleeping_backends(url) == 0, 10, what="the slow query to end")
    with psycopg.connect(url) as conn:
        leases = conn.execute("SELECT count(*) FROM idxr.leases").fetchone()[0]
        state = conn.execute("SELECT state FROM idxr.jobs").fetchone()[0]
    assert fetch_index(url, "item") == {} and state == "interrupted" and leases == 0
