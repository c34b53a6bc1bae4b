"""Workers that never hang (issue 18): `--once`/`refresh` give up on a dead server in bounded
time while the daemon retries forever and logs each attempt; every connection has TCP
keepalives; a batch stalled past ``worker.stall_timeout_seconds`` loses its leases to another
worker, and its late write is refused."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import psycopg
import pytest

from idxr_pg.db.connection import KEEPALIVES, connect
from idxr_pg.embedding import DeterministicEmbedder
from tests.integration.test_writers_never_wait import BlockingEmbedder
from tests.integration.worker_runner import worker_thread
from tests.integration.worker_support import (
    IDXR,
    ITEMS_DDL,
    Item,
    actual_index,
    execute,
    expected_index,
    install_triggers,
    item_entity,
    make_config,
    subprocess_env,
    wait_until,
    write_config,
)


def dead_port() -> int:
    """A local TCP port nothing listens on (connections to it are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dead_url() -> str:
    return f"postgresql://postgres@127.0.0.1:{dead_port()}/nowhere"


def config_file(tmp_path: Path, **worker: object) -> Path:
    return write_config(
        tmp_path / "idxr.yaml", [item_entity()], model="deterministic-test", worker=worker or None
    )


# --------------------------------------------------------------------------- keepalives


def test_connections_have_tcp_keepalives_and_the_url_overrides_them(database_url):
    with connect(database_url, autocommit=True) as conn:
        params = conn.info.get_parameters()
        assert {k: params.get(k) for k in KEEPALIVES} == KEEPALIVES
        # The socket itself probes: SO_KEEPALIVE on, first probe after keepalives_idle.
        sock = socket.socket(fileno=os.dup(conn.fileno()))
        try:
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            idle = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)
            assert idle == int(KEEPALIVES["keepalives_idle"])
            count = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT)
            assert count == int(KEEPALIVES["keepalives_count"])
        finally:
            sock.detach()
            sock.close()
    own = psycopg.conninfo.make_conninfo(database_url, keepalives_idle="45")
    with connect(own, autocommit=True, vector=False) as conn:
        assert conn.info.get_parameters()["keepalives_idle"] == "45"
        sock = socket.socket(fileno=os.dup(conn.fileno()))
        try:
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 45
        finally:
            sock.detach()
            sock.close()


# --------------------------------------------------------------------------- dead server


def test_worker_once_against_a_dead_port_exits_non_zero_in_bounded_time(tmp_path):
    config = config_file(tmp_path)
    started = time.monotonic()
    done = subprocess.run(
        [IDXR, "--database-url", dead_url(), "--config", str(config)]
        + ["worker", "--once", "--connect-timeout", "2"],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 1, done.stderr
    assert 2 <= elapsed < 20, elapsed
    assert "gave up after" in done.stderr
    assert "attempt 1 failed, retrying in" in done.stderr


def test_refresh_against_a_dead_port_gives_up_after_the_config_key(tmp_path):
    config = config_file(tmp_path, give_up_after_seconds=1.5)
    started = time.monotonic()
    done = subprocess.run(
        [IDXR, "--database-url", dead_url(), "--config", str(config), "refresh", "item"],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 1, done.stderr
    assert 1.5 <= elapsed < 20, elapsed
    assert "gave up after" in done.stderr


def test_the_daemon_keeps_retrying_a_dead_port_and_logs_each_attempt(tmp_path):
    config = config_file(tmp_path, give_up_after_seconds=1)  # --once only: the daemon ignores it
    proc = subprocess.Popen(
        [IDXR, "--database-url", dead_url(), "--config", str(config), "worker"],
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(5)  # 0.5 + 1 + 2 s of backoff, well past give_up_after_seconds
        assert proc.poll() is None, "the daemon gave up"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    for attempt, delay in ((1, "0.5"), (2, "1.0"), (3, "2.0")):
        assert f"attempt {attempt} failed, retrying in {delay} s" in stderr, stderr
    assert "gave up after" not in stderr


# --------------------------------------------------------------------------- stalled batch


@pytest.mark.timeout(120)
def test_a_stalled_worker_loses_its_leases_and_its_late_write_is_refused(
    isolated_database_url, tmp_path, caplog
):
    url = isolated_database_url
    execute(url, ITEMS_DDL)
    config = make_config(
        tmp_path,
        [item_entity()],
        model="deterministic-test",
        worker={"poll_interval": 0.2, "lease_seconds": 2, "stall_timeout_seconds": 1},
    )
    install_triggers(url, config)
    blocked = BlockingEmbedder()
    caplog.set_level(logging.WARNING, logger="idxr_pg.runtime.worker")
    caplog.set_level(logging.INFO, logger="idxr_pg.indexing.pipeline")
    with worker_thread(url, config, embedder=blocked, heartbeat_interval=0.2) as stalled:
        execute(url, "INSERT INTO items (id, title, n) VALUES (1, 'first words', 1)")
        assert blocked.entered.wait(60), "the first worker never started embedding"
        stalled_id = stalled.worker.worker_id
        try:
            # Still beating, but no longer extending: the lease runs out.
            wait_until(
                lambda: "no longer extended" in caplog.text, 10, what="the stall to be logged"
            )
            with psycopg.connect(url, autocommit=True) as conn:
                wait_until(
                    lambda: (
                        conn.execute(
                            "SELECT count(*) FROM idxr.leases"
                            " WHERE worker_id = %s AND leased_until >= now()",
                            [stalled_id],
                        ).fetchone()[0]
                        == 0
                    ),
                    10,
                    what="the stalled worker's lease to expire",
                )
                beat = conn.execute(
                    "SELECT heartbeat_at > now() - interval '2 seconds' FROM idxr.workers"
                    " WHERE worker_id = %s",
                    [stalled_id],
                ).fetchone()[0]
                assert beat, "the stalled worker's heartbeat stopped"
            with worker_thread(url, config, embedder=DeterministicEmbedder()) as other:
                wait_until(
                    lambda: other.worker.totals.indexed == 1, 30, what="the takeover to index"
                )
        finally:
            blocked.release.set()
        wait_until(lambda: stalled.worker.totals.batches >= 1, 30, what="the stalled batch to end")
        assert stalled.worker.totals.skipped == 1  # its write was refused: the lease was lost
        assert stalled.worker.totals.indexed == 0
    assert caplog.text.count("no longer extended") == 1  # logged once
    assert "entity item:1: lease lost to another owner; skipped" in caplog.text
    expected = expected_index(url, "item", Item, "SELECT id, to_jsonb(i) FROM public.items i")
    assert actual_index(url, "item") == expected and expected
