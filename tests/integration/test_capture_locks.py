"""Issue 13: concurrent writers of ONE entity through a child table. Capture share-locks an
entity's pending queue row (or inserts one), so such writers never wait for each other nor
deadlock and no change is lost; the trigger's look-up of the pending row is an index scan on
both key columns whatever the planner believes about the queue; and revision 0007 keeps what
is queued, up and down, with capture functions installed before it still working."""

from __future__ import annotations

import random
import re
import threading

import psycopg
import pytest

from idxr_pg.capture.triggers import LANGUAGE_ENV
from idxr_pg.db import migrations, queue
from idxr_pg.embedding import DeterministicEmbedder
from idxr_pg.runtime.worker import Worker
from tests.integration.test_writers_never_wait import strict_app_connection
from tests.integration.worker_runner import worker_thread
from tests.integration.worker_support import (
    ALL_ARTICLES,
    ARTICLES_DDL,
    Article,
    actual_index,
    article_entity,
    execute,
    expected_index,
    install_triggers,
    make_config,
    queue_depth,
)

TAG = "INSERT INTO tags (article_id, name, weight) VALUES (%s, %s, %s)"


def setup(url: str, tmp_path):
    execute(url, ARTICLES_DDL)
    config = make_config(
        tmp_path, [article_entity()], model="deterministic-test", worker={"poll_interval": 0.2}
    )
    install_triggers(url, config)
    execute(url, "INSERT INTO articles (id, title) VALUES (1, 'first'), (2, 'second')")
    return config


def lookup_plans(conn: psycopg.Connection, writes: list[tuple[int, str]]) -> list[str]:
    """The plans auto_explain reports for the trigger's look-up of pending rows (``FOR SHARE``
    on idxr.queue) while ``conn`` writes these tags, one transaction each."""
    plans: list[str] = []
    conn.add_notice_handler(lambda diag: plans.append(diag.message_primary or ""))
    for article, name in writes:
        conn.execute(TAG, [article, name, 1])
    return [p for p in plans if "FOR SHARE OF p" in p and "idxr.queue" in p]


def assert_index_scan_on_both_key_columns(plan: str) -> None:
    assert "Index Scan using queue_pending on queue p" in plan, plan
    assert re.search(
        r"Index Cond: \(\(entity_kind = 'article'::text\) AND \(entity_id = [^)]+\)\)", plan
    ), plan
    assert "Seq Scan" not in plan and "queue_ready" not in plan, plan


def test_the_pending_row_look_up_is_an_index_scan_on_both_key_columns_on_an_empty_analysed_queue_and_with_a_backlog(
    isolated_database_url, tmp_path, monkeypatch: pytest.MonkeyPatch
):
    """The plpgsql body's plan (the C trigger probes queue_pending itself: no plan)."""
    monkeypatch.setenv(LANGUAGE_ENV, "plpgsql")
    url = isolated_database_url
    setup(url, tmp_path)
    execute(url, "INSERT INTO articles SELECT g, 'a' || g FROM generate_series(3, 40) g")
    execute(url, "TRUNCATE idxr.queue, idxr.queue_batches")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE idxr.queue")  # analysed while empty: what autovacuum leaves
        assert conn.execute(
            "SELECT relpages, reltuples FROM pg_class WHERE oid = 'idxr.queue'::regclass"
        ).fetchone() == (0, 0)
        conn.execute("LOAD 'auto_explain'")
        conn.execute("SET auto_explain.log_min_duration = 0")
        conn.execute("SET auto_explain.log_nested_statements = on")
        conn.execute("SET auto_explain.log_level = notice")
        # the plan a plpgsql function keeps (a generic one) is made now, on the empty queue
        conn.execute("SET plan_cache_mode = force_generic_plan")
        empty = lookup_plans(conn, [(1, "e1"), (1, "e2")])
        assert len(empty) == 2 and "$1" in empty[0]  # generic: the key is a parameter
        for plan in empty:
            assert_index_scan_on_both_key_columns(plan)
        # a backlog, in the same session: the cached generic plan is still the one used
        execute(
            url,
            "INSERT INTO idxr.queue (entity_kind, entity_id)"
            " SELECT 'article', g::text FROM generate_series(1000, 30999) g",
        )
        backlog = lookup_plans(conn, [(2, "b1"), (3, "b2")])
        assert len(backlog) == 2
        for plan in backlog:
            assert_index_scan_on_both_key_columns(plan)
        # analysed with the backlog, default plan caching (custom plans, then generic)
        conn.execute("ANALYZE idxr.queue")
        conn.execute("RESET plan_cache_mode")
        analysed = lookup_plans(conn, [(4 + i % 30, f"c{i}") for i in range(8)])
        assert len(analysed) == 8
        for plan in analysed:
            assert_index_scan_on_both_key_columns(plan)
        pending = conn.execute(
            "SELECT count(*) FROM idxr.queue WHERE entity_id::int < 1000"
        ).fetchone()[0]
    assert pending == 11  # one pending row per article written (1, 2, 3 .. 11), coalesced


def test_a_claim_reads_the_queue_through_its_indexes_whatever_its_statistics_say(
    isolated_database_url,
):
    url = isolated_database_url
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE idxr.queue, idxr.queue_batches, idxr.leases")
        for _ in range(8):  # a worker that started on the empty queue (psycopg prepares at 5)
            assert len(queue.claim(conn, "k", owner="w", batch_size=8, lease_seconds=60)) == 0
        conn.execute(
            "INSERT INTO idxr.queue (entity_kind, entity_id)"
            " SELECT 'k', g::text FROM generate_series(1, 30000) g"
        )
        conn.execute(
            "INSERT INTO idxr.queue_batches (entity_kind, entity_ids)"
            " SELECT 'k', array_agg(g::text) FROM generate_series(29990, 30020) g"
        )
        plans: list[str] = []
        conn.add_notice_handler(lambda diag: plans.append(diag.message_primary or ""))
        conn.execute("LOAD 'auto_explain'")
        conn.execute("SET auto_explain.log_min_duration = 0")
        conn.execute("SET auto_explain.log_level = notice")
        claimed = queue.claim(conn, "k", owner="w", batch_size=8, lease_seconds=60)
        claim_plans = list(plans)
        pending = conn.execute("SELECT count(*) FROM idxr.queue WHERE claimed_by IS NULL")
        assert pending.fetchone()[0] == 30020 - 8  # the batch expanded, coalesced
    assert claimed.entity_ids == [str(i) for i in range(1, 9)]  # oldest first
    assert not any("Seq Scan" in p or "JIT" in p for p in claim_plans), claim_plans
    (expand,) = [p for p in claim_plans if "WITH taken AS" in p]
    (ready,) = [p for p in claim_plans if "ORDER BY q.not_before" in p]
    (more,) = [p for p in claim_plans if "CROSS JOIN LATERAL (" in p]
    assert re.search(
        r"Index Only Scan using queue_pending on queue p .*\n\s+Index Cond: \(\(entity_kind = "
        r"t\.entity_kind\) AND \(entity_id = k\.id\)\)",
        expand,
    ), expand
    assert "Index Scan using queue_ready on queue q" in ready and "Sort" not in ready, ready
    assert re.search(
        r"Index Scan using queue_pending on queue p .*\n\s+Index Cond: \(\(entity_kind = "
        r"'k'::text\) AND \(entity_id = k\.id\)\)",
        more,
    ), more


def test_writers_of_the_same_articles_in_opposite_order_neither_wait_nor_deadlock(
    isolated_database_url, tmp_path, capture_language
):
    url = isolated_database_url
    config = setup(url, tmp_path)
    execute(url, "INSERT INTO articles (id, title) VALUES (3, 'third')")
    execute(url, "DELETE FROM idxr.queue WHERE entity_id = '3'")  # article 3: no pending row
    with psycopg.connect(url) as first:
        first.execute(TAG, [1, "a1", 1])  # the pending rows of articles 1 and 2 exist from
        first.execute(TAG, [2, "a2", 2])  # setup: share-locked by this open transaction
        first.execute(TAG, [3, "a3", 3])  # creates article 3's pending row, uncommitted
        with strict_app_connection(url) as second:  # lock_timeout 1s: it must not wait
            with second.transaction():
                second.execute(TAG, [2, "b2", 4])  # the opposite order
                second.execute(TAG, [1, "b1", 5])
            with second.transaction():
                second.execute(TAG, [3, "b3", 6])  # a pending row of its own
        first.execute(TAG, [1, "a4", 7])
        first.commit()
    with psycopg.connect(url) as conn:
        pending = conn.execute(
            "SELECT entity_id, count(*) FROM idxr.queue GROUP BY 1 ORDER BY 1"
        ).fetchall()
    assert pending == [("1", 1), ("2", 1), ("3", 2)]  # coalesced; two creators of one row
    Worker(url, config, embedder=DeterministicEmbedder()).drain()
    assert queue_depth(url) == 0
    assert actual_index(url, "article") == expected_index(url, "article", Article, ALL_ARTICLES)
    names = {v for e, p, v, *_ in actual_index(url, "article") if p.endswith(".name")}
    assert {"a1", "a2", "a3", "a4", "b1", "b2", "b3"} <= names


def test_concurrent_child_writers_with_a_worker_running_lose_no_change(
    isolated_database_url, tmp_path, capture_language
):
    url = isolated_database_url
    config = setup(url, tmp_path)
    errors: list[BaseException] = []

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        try:
            with psycopg.connect(url) as conn:
                conn.execute("SET lock_timeout = '5s'")
                for i in range(30):
                    articles = [1, 2]
                    rng.shuffle(articles)
                    for article in articles:  # two statements, random order
                        conn.execute(TAG, [article, f"w{seed}-{i}-{article}", i])
                    if i % 5 == 0:
                        conn.execute(
                            "UPDATE tags SET weight = weight + 1 WHERE id = (SELECT max(id)"
                            " FROM tags WHERE article_id = %s)",
                            [articles[0]],
                        )
                    conn.commit()
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    with worker_thread(url, config, embedder=DeterministicEmbedder()) as runner:
        threads = [threading.Thread(target=writer, args=(seed,)) for seed in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        runner.settle(url)
    assert errors == []  # no deadlock, no lock timeout
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM tags").fetchone()[0] == 6 * 30 * 2
    assert actual_index(url, "article") == expected_index(url, "article", Article, ALL_ARTICLES)


OLD_STYLE_FUNCTION = """
CREATE FUNCTION idxr.capture_old__public__things() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
    INSERT INTO idxr.queue (entity_kind, entity_id, source_table, operation)
    SELECT 'old', k.id, 'public.things', TG_OP
      FROM (SELECT (n.id)::text FROM idxr_new AS n) AS k (id)
    ON CONFLICT (entity_kind, entity_id) WHERE claimed_by IS NULL AND attempts = 0
    DO UPDATE SET claimed_by = NULL WHERE false;
    RETURN NULL;
END
$f$;
CREATE TABLE public.things (id integer PRIMARY KEY);
CREATE TRIGGER t AFTER INSERT ON public.things REFERENCING NEW TABLE AS idxr_new
    FOR EACH STATEMENT EXECUTE FUNCTION idxr.capture_old__public__things();
"""


def index_facts(conn: psycopg.Connection) -> tuple[bool, str]:
    unique = conn.execute(
        "SELECT indisunique FROM pg_index WHERE indexrelid = 'idxr.queue_pending'::regclass"
    ).fetchone()[0]
    ready = conn.execute("SELECT pg_get_indexdef('idxr.queue_ready'::regclass)").fetchone()[0]
    return unique, ready


def test_the_upgrade_and_the_downgrade_keep_queued_rows_and_installed_capture_functions_working(
    empty_database_url, tmp_path, monkeypatch: pytest.MonkeyPatch
):
    """plpgsql functions: the C trigger refuses a unique queue_pending (before revision 0007),
    so a downgrade below 0007 needs `triggers install --language plpgsql` first (README)."""
    monkeypatch.setenv(LANGUAGE_ENV, "plpgsql")
    url = empty_database_url
    migrations.upgrade(url, "0006")
    execute(url, OLD_STYLE_FUNCTION)  # the 0002..0006 body: coalesces with ON CONFLICT
    execute(url, "INSERT INTO public.things VALUES (1)")
    execute(
        url,
        "INSERT INTO idxr.queue (entity_kind, entity_id, attempts, not_before, last_error)"
        " VALUES ('old', '2', 2, now() + interval '1 hour', 'boom')",
    )
    execute(url, "INSERT INTO idxr.queue_batches (entity_kind, entity_ids) VALUES ('old', '{7,8}')")
    migrations.upgrade(url, "head")
    with psycopg.connect(url, autocommit=True) as conn:
        assert index_facts(conn) == (
            False,
            'CREATE INDEX queue_ready ON idxr.queue USING btree (entity_kind COLLATE "C",'
            " not_before, id)",
        )
        conn.execute("INSERT INTO public.things VALUES (3)")  # the rewritten body still runs
        queued = conn.execute("SELECT entity_id, attempts FROM idxr.queue ORDER BY 1, 2").fetchall()
        batches = conn.execute("SELECT entity_ids FROM idxr.queue_batches").fetchall()
    assert queued == [("1", 0), ("2", 2), ("3", 0)] and batches == [(["7", "8"],)]

    # this release's functions, then back down: the unique index again, functions still run
    config = setup(url, tmp_path)
    execute(url, TAG, [1, "x", 1])
    migrations.downgrade(url, "0006")
    with psycopg.connect(url, autocommit=True) as conn:
        assert index_facts(conn) == (
            True,
            "CREATE INDEX queue_ready ON idxr.queue USING btree (entity_kind, not_before, id)",
        )
        conn.execute(TAG, [1, "y", 2])  # coalesces into article 1's row through ON CONFLICT
        conn.execute(TAG, [2, "z", 3])
        after = conn.execute(
            "SELECT entity_kind, entity_id, attempts FROM idxr.queue ORDER BY 1, 2, 3"
        ).fetchall()
    assert after == [
        ("article", "1", 0),
        ("article", "2", 0),
        ("old", "1", 0),
        ("old", "2", 2),
        ("old", "3", 0),
    ]
    migrations.upgrade(url, "head")
    with psycopg.connect(url) as conn:
        again = conn.execute(
            "SELECT entity_kind, entity_id, attempts FROM idxr.queue ORDER BY 1, 2, 3"
        ).fetchall()
    assert again == after
    Worker(url, config, embedder=DeterministicEmbedder()).drain()
    assert actual_index(url, "article") == expected_index(url, "article", Article, ALL_ARTICLES)
