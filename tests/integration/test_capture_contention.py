"""Issue 13: concurrent writers of ONE entity through a child table. Capture share-locks an
entity's pending queue row (or inserts one), so such writers never wait for each other nor
deadlock, and no change is lost; and the upgrade to revision 0004 keeps what is queued and
keeps capture functions installed before it working."""

from __future__ import annotations

import random
import threading

import psycopg
import pytest

from idxr_pg.db import migrations
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


def test_writers_of_the_same_articles_in_opposite_order_neither_wait_nor_deadlock(
    isolated_database_url, tmp_path
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
    isolated_database_url, tmp_path
):
    url = isolated_database_url
    config = setup(url, tmp_path)
    errors: list[BaseException] = []

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        try:
            with psycopg.connect(url) as conn:
                conn.execute("SET lock_timeout = '5s'")
                for i in range(40):
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
        assert conn.execute("SELECT count(*) FROM tags").fetchone()[0] == 6 * 40 * 2
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


def test_the_upgrade_keeps_queued_rows_and_rewrites_capture_functions_installed_before(
    empty_database_url,
):
    url = empty_database_url
    migrations.upgrade(url, "0003")
    execute(url, OLD_STYLE_FUNCTION)  # the 0002/0003 body: coalesces with ON CONFLICT
    execute(url, "INSERT INTO public.things VALUES (1)")
    execute(
        url,
        "INSERT INTO idxr.queue (entity_kind, entity_id, attempts, not_before, last_error)"
        " VALUES ('old', '2', 2, now() + interval '1 hour', 'boom')",
    )
    migrations.upgrade(url, "head")
    with psycopg.connect(url, autocommit=True) as conn:
        unique = conn.execute(
            "SELECT indisunique FROM pg_index WHERE indexrelid = 'idxr.queue_pending'::regclass"
        ).fetchone()[0]
        assert unique is False
        conn.execute("INSERT INTO public.things VALUES (3)")  # the rewritten body still runs
        queued = conn.execute("SELECT entity_id, attempts FROM idxr.queue ORDER BY 1, 2").fetchall()
    assert queued == [("1", 0), ("2", 2), ("3", 0)]
    migrations.downgrade(url, "0003")  # merges duplicate pending rows, unique again
    migrations.upgrade(url, "head")
    with psycopg.connect(url) as conn:
        again = conn.execute("SELECT entity_id, attempts FROM idxr.queue ORDER BY 1, 2").fetchall()
    assert again == queued


@pytest.mark.parametrize("isolation", ["REPEATABLE READ", "SERIALIZABLE"])
def test_a_snapshot_writer_coalescing_with_a_claimed_row_gets_no_serialization_failure(
    isolated_database_url, tmp_path, isolation
):
    url = isolated_database_url
    config = setup(url, tmp_path)
    with psycopg.connect(url) as app:
        app.execute(f"SET TRANSACTION ISOLATION LEVEL {isolation}")
        app.execute("SELECT count(*) FROM tags")  # the snapshot is taken
        execute(url, "UPDATE idxr.queue SET claimed_by = 'w'")  # claimed after the snapshot
        app.execute(TAG, [1, "snap", 1])
        app.commit()  # no serialization failure: the change went into a batch row
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT entity_ids FROM idxr.queue_batches").fetchall() == [(["1"],)]
    execute(url, "UPDATE idxr.queue SET claimed_by = NULL")
    Worker(url, config, embedder=DeterministicEmbedder()).drain()
    assert queue_depth(url) == 0
    assert actual_index(url, "article") == expected_index(url, "article", Article, ALL_ARTICLES)
