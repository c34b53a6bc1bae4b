"""`idxr-pg worker --metrics-port`: a real worker process serves /metrics; after known writes
the scraped values say what it did (deterministic embedder)."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
import urllib.request

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.worker_support import (
    IDXR,
    ITEMS_DDL,
    execute,
    install_triggers,
    item_entity,
    make_config,
    queue_depth,
    subprocess_env,
    wait_until,
)

NOTES_DDL = ITEMS_DDL.replace("public.items", "public.notes")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def metric(values: dict, name: str, **labels: str) -> float:
    return values[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def metrics_db(isolated_database_url):
    execute(isolated_database_url, ITEMS_DDL + NOTES_DDL)
    return isolated_database_url


def test_scraped_metrics_follow_known_writes(metrics_db, tmp_path):
    url = metrics_db
    config = make_config(
        tmp_path,
        [item_entity(), item_entity(name="note", table="public.notes", refresh="manual")],
        model="deterministic-test",
        worker={"poll_interval": 0.2},
    )
    install_triggers(url, config)
    port = _free_port()
    proc = subprocess.Popen(
        [
            IDXR,
            "--database-url",
            url,
            "--config",
            str(tmp_path / "idxr.yaml"),
            "worker",
            "--metrics-port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
    )
    try:

        def serving() -> bool:
            try:
                return ("idxr_queue_up", ()) in scrape(port)
            except OSError:
                assert proc.poll() is None, proc.communicate()[1]
                return False

        wait_until(serving, 60, what="the metrics endpoint")
        before = scrape(port)
        assert metric(before, "idxr_queue_up") == 1
        assert metric(before, "idxr_queue_depth", kind="item") == 0
        assert metric(before, "idxr_entities_processed_total", kind="item", outcome="indexed") == 0
        info = [dict(k[1]) for k in before if k[0] == "idxr_worker_info"]
        assert len(info) == 1 and info[0]["worker_id"] and info[0]["version"]

        # 3 items with a title and a body each: 6 distinct embeddable texts
        execute(
            url,
            "INSERT INTO items (id, title, body) VALUES"
            " (1, 'red apple', 'a fruit'), (2, 'blue sky', 'the air'), (3, 'green tea', 'a drink')",
        )
        # the manual kind is never processed by `worker`: its change stays queued, ageing
        execute(url, "INSERT INTO notes (id, title) VALUES (1, 'kept queued')")
        wait_until(lambda: queue_depth(url, "item") == 0, 60, what="the item queue to drain")

        def counted() -> bool:
            values = scrape(port)
            return (
                metric(values, "idxr_entities_processed_total", kind="item", outcome="indexed") == 3
            )

        wait_until(counted, 30, what="the batch in the metrics")
        time.sleep(1.0)  # the note's change is at least a second old
        after = scrape(port)
        assert metric(after, "idxr_queue_depth", kind="item") == 0
        assert metric(after, "idxr_queue_oldest_change_age_seconds", kind="item") == 0
        assert metric(after, "idxr_queue_depth", kind="note") == 1
        assert metric(after, "idxr_queue_oldest_change_age_seconds", kind="note") >= 1.0
        # The same figures in SQL: idxr.status, per kind.
        with psycopg.connect(url, autocommit=True) as conn:
            in_sql = dict(
                conn.execute("SELECT entity_kind, queue_depth FROM idxr.status").fetchall()
            )
        assert in_sql == {
            kind: metric(after, "idxr_queue_depth", kind=kind) for kind in ("item", "note")
        }
        assert metric(after, "idxr_texts_embedded_total", kind="item") == 6
        assert metric(after, "idxr_embedding_cache_hits_total", kind="item") == 0
        # id, title, body, n per item
        assert metric(after, "idxr_records_written_total", kind="item") == 12
        assert metric(after, "idxr_records_deleted_total", kind="item") == 0
        batches = metric(after, "idxr_batch_duration_seconds_count", kind="item")
        assert batches >= 1
        assert metric(after, "idxr_batch_duration_seconds_sum", kind="item") > 0
        assert metric(after, "idxr_embedding_calls_total") >= 1
        assert metric(after, "idxr_embedding_seconds_total") > 0
        assert metric(after, "idxr_entities_processed_total", kind="note", outcome="indexed") == 0

        # a delete: its records are removed, counted as a deleted entity
        execute(url, "DELETE FROM items WHERE id = 3")
        wait_until(
            lambda: (
                metric(
                    scrape(port), "idxr_entities_processed_total", kind="item", outcome="deleted"
                )
                == 1
            ),
            30,
            what="the delete in the metrics",
        )
        final = scrape(port)
        assert metric(final, "idxr_records_deleted_total", kind="item") == 4
        assert metric(final, "idxr_batch_duration_seconds_count", kind="item") == batches + 1
        assert metric(final, "idxr_queue_depth", kind="item") == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert f"serving Prometheus metrics on http://127.0.0.1:{port}/metrics" in err
    assert "4 entities: 3 indexed, 0 unchanged, 1 deleted" in out  # the worker's own totals
