"""Issue 13: the coalescing queue, batch rows for bulk statements, the wake-up that rings once
per kind at a time, and the upgrade of rows queued under revision 0001."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import numpy as np
import psycopg
import pytest

from idxr_pg.capture.triggers import BATCH_THRESHOLD
from idxr_pg.db import migrations, queue
from idxr_pg.embedding import DeterministicEmbedder
from idxr_pg.runtime.worker import Worker
from tests.integration.test_writers_never_wait import BlockingEmbedder, strict_app_connection
from tests.integration.worker_runner import worker_thread
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

ALL_ITEMS = "SELECT id, to_jsonb(i) FROM items i"

pytestmark = pytest.mark.usefixtures("capture_language")  # the C trigger and plpgsql


class CountingEmbedder(DeterministicEmbedder):
    def __init__(self) -> None:
        super().__init__()
        self.texts: list[str] = []

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.texts.extend(texts)
        return super().embed(texts)


def setup(url: str, tmp_path, **worker):
    execute(url, ITEMS_DDL)
    config = make_config(
        tmp_path,
        [item_entity()],
        model="deterministic-test",
        worker={"poll_interval": 0.2, **worker},
    )
    install_triggers(url, config)
    return config


def rows(url: str, table: str = "idxr.queue") -> int:
    with psycopg.connect(url) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def status(url: str) -> tuple[int, int]:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT queue_depth, queued_entities FROM idxr.status WHERE entity_kind = 'item'"
        ).fetchone()
    return (row[0], row[1]) if row else (0, 0)


def test_a_row_updated_10000_times_without_a_worker_leaves_one_row_and_is_indexed_once(
    isolated_database_url, tmp_path
):
    url = isolated_database_url
    config = setup(url, tmp_path)
    execute(url, "INSERT INTO items (id, title, n) VALUES (1, 'hot row', 0)")
    with psycopg.connect(url, autocommit=True) as app:
        for n in range(1, 10_001):  # 10,000 one-row transactions
            app.execute("UPDATE items SET n = %s WHERE id = 1", [n])
    assert rows(url) == 1 and rows(url, "idxr.queue_batches") == 0
    assert status(url) == (1, 1)
    embedder = CountingEmbedder()
    totals = Worker(url, config, embedder=embedder).drain()
    assert totals.entities == 1 and totals.batches == 1  # indexed once
    assert embedder.texts == ["item.title: hot row"]
    assert queue_depth(url) == 0
    assert actual_index(url, "item") == expected_index(url, "item", Item, ALL_ITEMS)


def test_bulk_statements_write_one_batch_row_and_the_worker_indexes_them_exactly(
    isolated_database_url, tmp_path
):
    url = isolated_database_url
    config = setup(url, tmp_path, batch_size=1000)
    # 2,000 rows: far past the batch threshold (8 keys), and the worker's drain of each
    # statement stays short (bench/capture.py measures 10,000-row statements).
    statements = [
        "INSERT INTO items (id, title, n) SELECT g, 'title ' || g, g FROM generate_series(1, 2000) g",
        "UPDATE items SET title = title || ' changed'",
        "DELETE FROM items WHERE id % 2 = 0",
    ]
    for statement in statements:
        execute(url, statement)
        assert rows(url) == 0 and rows(url, "idxr.queue_batches") == 1, statement
        expected_keys = 2_000 if statement.startswith(("INSERT", "UPDATE")) else 1_000
        assert status(url) == (expected_keys, expected_keys)
        Worker(url, config, embedder=DeterministicEmbedder()).drain()
        assert queue_depth(url) == 0 and rows(url, "idxr.queue_batches") == 0
        assert actual_index(url, "item") == expected_index(url, "item", Item, ALL_ITEMS)
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(DISTINCT entity_id) FROM idxr.search_index").fetchone()[
            0
        ] == (1_000)


def test_few_keys_get_a_row_each_and_an_update_reading_nothing_enqueues_nothing(
    isolated_database_url, tmp_path
):
    url = isolated_database_url
    setup(url, tmp_path)
    execute(
        url,
        "INSERT INTO items (id, title, n) SELECT g, 't', g FROM generate_series(1, %s) g",
        [BATCH_THRESHOLD],
    )
    assert rows(url) == BATCH_THRESHOLD and rows(url, "idxr.queue_batches") == 0
    execute(url, "TRUNCATE idxr.queue")
    execute(url, "UPDATE items SET title = title")  # changes nothing the entity reads
    assert rows(url) == 0 and rows(url, "idxr.queue_batches") == 0


def test_a_coalesced_entity_changed_again_while_processed_gets_another_pass(
    isolated_database_url, tmp_path
):
    url = isolated_database_url
    config = setup(url, tmp_path)
    execute(url, "INSERT INTO items (id, title, n) VALUES (1, 'first', 0)")
    for n in range(50):  # coalesced into one pending row
        execute(url, "UPDATE items SET n = %s WHERE id = 1", [n])
    assert rows(url) == 1
    embedder = BlockingEmbedder()
    with worker_thread(url, config, embedder=embedder) as runner:
        assert embedder.entered.wait(60), "the worker never started embedding"
        with strict_app_connection(url) as app:  # never waits for the worker
            app.execute("UPDATE items SET title = 'second' WHERE id = 1")
            app.execute("UPDATE items SET n = 99 WHERE id = 1")  # coalesces into the new row
        with psycopg.connect(url) as conn:
            claimed = conn.execute(
                "SELECT claimed_by IS NOT NULL, count(*) FROM idxr.queue GROUP BY 1 ORDER BY 1"
            ).fetchall()
        assert claimed == [(False, 1), (True, 1)]
        batches = runner.worker.totals.batches
        embedder.release.set()
        runner.settle(url, batches_after=batches + 1)
    assert actual_index(url, "item") == expected_index(url, "item", Item, ALL_ITEMS)
    assert ("1", "item.title", "second") in {(e, p, v) for e, p, v, *_ in actual_index(url, "item")}


def test_a_writer_coalescing_into_a_pending_row_keeps_the_claim_off_it_until_it_commits(
    isolated_database_url, tmp_path
):
    """Why the trigger locks the pending row (ON CONFLICT DO UPDATE ... WHERE false): with DO
    NOTHING, a claim could take the row and finish before this writer commits, losing it."""
    url = isolated_database_url
    setup(url, tmp_path)
    execute(url, "INSERT INTO items (id, title, n) VALUES (1, 'a', 0)")
    with (
        psycopg.connect(url) as app,
        psycopg.connect(url, autocommit=True) as worker,
    ):
        app.execute("UPDATE items SET title = 'b' WHERE id = 1")  # coalesces, stays open
        assert rows(url) == 1
        early = queue.claim(worker, "item", owner="w1", batch_size=10, lease_seconds=30)
        assert len(early) == 0  # skipped: its writer has not committed
        worker.execute("DELETE FROM idxr.leases")
        app.commit()
        late = queue.claim(worker, "item", owner="w1", batch_size=10, lease_seconds=30)
        assert late.entity_ids == ["1"]
        # A change committed after the claim gets a fresh pending row; finalize leaves it.
        execute(url, "UPDATE items SET title = 'c' WHERE id = 1")
        assert queue.delete_rows(worker, late.row_ids(["1"])) == 1
        pending = worker.execute(
            "SELECT entity_id, claimed_by, attempts FROM idxr.queue"
        ).fetchall()
    assert pending == [("1", None, 0)]


def test_repeatable_read_writers_never_get_a_serialization_failure_from_capture(
    isolated_database_url, tmp_path
):
    """ON CONFLICT against a pending row committed after a REPEATABLE READ snapshot would fail
    the application's statement; such transactions write a batch row instead."""
    url = isolated_database_url
    config = setup(url, tmp_path)
    execute(url, "INSERT INTO items (id, title, n) VALUES (1, 'a', 0), (2, 'b', 0)")
    execute(url, "TRUNCATE idxr.queue")
    for isolation in ("REPEATABLE READ", "SERIALIZABLE"):
        with psycopg.connect(url) as app:
            app.execute(f"SET TRANSACTION ISOLATION LEVEL {isolation}")
            app.execute("SELECT count(*) FROM items")  # the snapshot is taken
            # a pending row for entity 1 commits meanwhile (a child-table write, a retry, ...)
            execute(url, "INSERT INTO idxr.queue (entity_kind, entity_id) VALUES ('item', '1')")
            app.execute("UPDATE items SET title = %s WHERE id = 1", [f"changed in {isolation}"])
            app.commit()
        execute(url, "DELETE FROM idxr.queue WHERE operation IS NULL")
    assert rows(url) == 0 and rows(url, "idxr.queue_batches") == 2
    assert status(url) == (2, 1)
    Worker(url, config, embedder=DeterministicEmbedder()).drain()
    assert queue_depth(url) == 0
    assert actual_index(url, "item") == expected_index(
        url, "item", Item, ALL_ITEMS + " WHERE id = 1"
    )


def test_only_one_open_transaction_per_kind_rings(isolated_database_url, tmp_path):
    url = isolated_database_url
    setup(url, tmp_path)
    with (
        psycopg.connect(url, autocommit=True) as listener,
        psycopg.connect(url) as ringer,
        psycopg.connect(url, autocommit=True) as other,
    ):
        listener.execute(f"LISTEN {queue.CHANNEL}")
        ringer.execute("INSERT INTO items (id, title) VALUES (1, 'a')")  # rings, stays open
        other.execute("INSERT INTO items (id, title) VALUES (2, 'b')")  # skips ringing
        assert [n.payload for n in listener.notifies(timeout=0.5)] == []
        ringer.commit()
        assert [n.payload for n in listener.notifies(timeout=1.0)] == ["item"]
        other.execute("INSERT INTO items (id, title) VALUES (3, 'c')")  # alone: rings
        assert [n.payload for n in listener.notifies(timeout=1.0)] == ["item"]


def test_a_writer_that_skipped_ringing_is_indexed_without_waiting_for_the_poll(
    isolated_database_url, tmp_path
):
    url = isolated_database_url
    config = setup(url, tmp_path, poll_interval=60)
    with worker_thread(url, config, embedder=DeterministicEmbedder()) as runner:
        time.sleep(1.0)  # the worker is listening
        ringer = psycopg.connect(url)
        quiet = psycopg.connect(url)
        try:
            ringer.execute("INSERT INTO items (id, title) VALUES (1, 'rang')")
            quiet.execute("INSERT INTO items (id, title) VALUES (2, 'skipped ringing')")
            done = threading.Event()

            def commit_quiet_later() -> None:
                time.sleep(0.02)
                quiet.commit()
                done.set()

            threading.Thread(target=commit_quiet_later).start()
            ringer.commit()
            assert done.wait(10)
        finally:
            ringer.close()
            quiet.close()
        wait_until(
            lambda: len({e for e, *_ in actual_index(url, "item")}) == 2,
            10,
            what="both items indexed before the 60 s poll",
        )
        runner.settle(url)
    assert actual_index(url, "item") == expected_index(url, "item", Item, ALL_ITEMS)


def test_the_upgrade_merges_duplicate_pending_rows_and_keeps_retry_rows(empty_database_url):
    url = empty_database_url
    migrations.upgrade(url, "0001")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            """
            INSERT INTO idxr.queue (entity_kind, entity_id, operation, enqueued_at, attempts,
                                    not_before, last_error)
            VALUES ('k', 'a', 'INSERT', now() - interval '3 hours', 0, now(), NULL),
                   ('k', 'a', 'UPDATE', now() - interval '2 hours', 0, now(), NULL),
                   ('k', 'a', 'UPDATE', now() - interval '1 hour', 0, now(), NULL),
                   ('k', 'a', 'retry', now() - interval '4 hours', 2, now() + interval '1 hour',
                    'boom'),
                   ('k', 'b', 'INSERT', now(), 0, now(), NULL),
                   ('k', 'c', 'retry', now(), 3, now() + interval '1 hour', 'bad'),
                   ('j', 'a', 'DELETE', now(), 0, now(), NULL)
            """
        )
    migrations.upgrade(url, "head")
    with psycopg.connect(url) as conn:
        queued = conn.execute(
            """SELECT entity_kind, entity_id, attempts, claimed_by,
                      round(extract(epoch FROM now() - enqueued_at) / 3600), last_error
                 FROM idxr.queue ORDER BY 1, 2, 3"""
        ).fetchall()
        status = conn.execute(
            "SELECT entity_kind, queue_depth, queued_entities, retrying_changes"
            " FROM idxr.status ORDER BY 1"
        ).fetchall()
    assert queued == [
        ("j", "a", 0, None, 0, None),
        ("k", "a", 0, None, 3, None),  # three pending rows merged, the oldest time kept
        ("k", "a", 2, None, 4, "boom"),
        ("k", "b", 0, None, 0, None),
        ("k", "c", 3, None, 0, "bad"),
    ]
    assert status == [("j", 1, 1, 0), ("k", 4, 3, 2)]
    # Downgrade and upgrade again: nothing queued is lost either way.
    migrations.downgrade(url, "0001")
    migrations.upgrade(url, "head")
    with psycopg.connect(url) as conn:
        again = conn.execute(
            "SELECT entity_kind, entity_id, attempts FROM idxr.queue ORDER BY 1, 2, 3"
        ).fetchall()
    assert again == [(k, e, a) for k, e, a, *_ in queued]


def test_many_child_rows_of_few_entities_coalesce_and_bulk_key_changes_are_exact(
    isolated_database_url, tmp_path
):
    """Keys are collected without sorting; a child table's rows share keys, so they are made
    distinct first: 30 tags of 3 articles take the few-keys path (3 pending rows), 100 tags of
    20 articles one batch row of 20 keys, each article indexed once. A bulk key change on the
    main table (keys paired by its primary key) queues the old and the new keys."""
    from tests.integration.worker_support import (
        ALL_ARTICLES,
        ARTICLES_DDL,
        Article,
        article_entity,
    )

    url = isolated_database_url
    execute(url, ARTICLES_DDL)
    config = make_config(tmp_path, [article_entity()], model="deterministic-test")
    install_triggers(url, config)
    execute(
        url, "INSERT INTO articles (id, title) SELECT g, 'a' || g FROM generate_series(1, 30) g"
    )
    Worker(url, config, embedder=DeterministicEmbedder()).drain()
    execute(
        url,
        "INSERT INTO tags (article_id, name) SELECT 1 + g % 3, 't' || g FROM generate_series(1, 30) g",
    )
    assert rows(url) == 3 and rows(url, "idxr.queue_batches") == 0
    execute(
        url,
        "INSERT INTO tags (article_id, name) SELECT 1 + g % 20, 'u' || g FROM generate_series(1, 100) g",
    )
    with psycopg.connect(url) as conn:
        (keys,) = conn.execute("SELECT entity_ids FROM idxr.queue_batches").fetchone()
    assert sorted(keys, key=int) == [str(i) for i in range(1, 21)]
    totals = Worker(url, config, embedder=DeterministicEmbedder()).drain()
    assert totals.entities == 20  # articles 1-3 had rows pending too: one pass each
    execute(url, "UPDATE articles SET id = id + 1000 WHERE id > 20")  # 10 keys change
    with psycopg.connect(url) as conn:
        (keys,) = conn.execute("SELECT entity_ids FROM idxr.queue_batches").fetchone()
    assert sorted(keys, key=int) == [str(i) for i in range(21, 31)] + [
        str(i) for i in range(1021, 1031)
    ]
    Worker(url, config, embedder=DeterministicEmbedder()).drain()
    assert queue_depth(url) == 0
    assert actual_index(url, "article") == expected_index(url, "article", Article, ALL_ARTICLES)
