"""Invariant 2: while a worker is embedding entity X, application writes to X's row commit
without waiting; and (invariant 3) the change committed meanwhile gets another pass."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import psycopg
import pytest

from idxr_pg.embedding import DeterministicEmbedder
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
)


class BlockingEmbedder(DeterministicEmbedder):
    """Parks the first embed call until released, so a test can act while it is 'inside the model'."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls = 0

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        if self.calls == 1:
            self.entered.set()
            assert self.release.wait(60), "test never released the embedder"
        return super().embed(texts)


def strict_app_connection(url: str) -> psycopg.Connection:
    """An application connection that errors instead of waiting on any lock."""
    conn = psycopg.connect(url, autocommit=True)
    conn.execute("SET lock_timeout = '1s'")
    conn.execute("SET statement_timeout = '5s'")
    return conn


@pytest.mark.parametrize("overlap", [False, True], ids=["sequential", "overlap"])
def test_application_writes_do_not_wait_for_a_worker_that_is_embedding(
    isolated_database_url, tmp_path, overlap
):
    url = isolated_database_url
    execute(url, ITEMS_DDL)
    execute(url, "INSERT INTO items (id, title, n) VALUES (2, 'other row', 0)")
    config = make_config(
        tmp_path,
        [item_entity()],
        model="deterministic-test",
        worker={"poll_interval": 0.2, "overlap": overlap},
    )
    install_triggers(url, config)
    embedder = BlockingEmbedder()
    with worker_thread(url, config, embedder=embedder) as runner:
        execute(url, "INSERT INTO items (id, title, body, n) VALUES (1, 'first words', 'body', 1)")
        assert embedder.entered.wait(60), "the worker never started embedding"
        try:
            # The worker holds entity 1's lease and is inside the model. Writers go ahead:
            with strict_app_connection(url) as app:
                app.execute("UPDATE items SET title = 'second words' WHERE id = 1")
                with app.transaction():
                    app.execute("UPDATE items SET n = n + 1 WHERE id = 1")
                    app.execute("DELETE FROM items WHERE id = 2")
                app.execute("INSERT INTO items (id, title, n) VALUES (3, 'third row', 3)")
                # Even an ACCESS EXCLUSIVE lock is granted at once: no transaction of the
                # worker touches the table while it embeds.
                with app.transaction():
                    app.execute("LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
                idle_in_transaction = app.execute(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE application_name LIKE 'idxr-worker%'"
                    " AND state LIKE 'idle in transaction%'"
                ).fetchone()[0]
            assert idle_in_transaction == 0
            assert embedder.entered.is_set() and not embedder.release.is_set()
        finally:
            embedder.release.set()
        # The change committed during the first pass leads to another pass.
        batches = runner.worker.totals.batches
        runner.settle(url, batches_after=batches)
    assert queue_depth(url) == 0
    assert actual_index(url, "item") == expected_index(
        url, "item", Item, "SELECT id, to_jsonb(i) FROM items i"
    )
    assert ("1", "item.title", "second words") in {
        (entity, path, value) for entity, path, value, *_ in actual_index(url, "item")
    }


@pytest.mark.parametrize("overlap", [False, True], ids=["sequential", "overlap"])
@pytest.mark.parametrize("statement", ["UPDATE", "DELETE"])
def test_a_change_committed_while_the_worker_embeds_gets_another_pass(
    isolated_database_url, tmp_path, statement, overlap
):
    """Invariant 3: the worker's load predates the change; the change's queue row survives
    (with the overlap, the claim made while the batch is embedded leaves it alone)."""
    url = isolated_database_url
    execute(url, ITEMS_DDL)
    config = make_config(
        tmp_path,
        [item_entity()],
        model="deterministic-test",
        worker={"poll_interval": 0.2, "overlap": overlap},
    )
    install_triggers(url, config)
    embedder = BlockingEmbedder()
    with worker_thread(url, config, embedder=embedder) as runner:
        execute(url, "INSERT INTO items (id, title, n) VALUES (1, 'before', 1)")
        assert embedder.entered.wait(60)
        with strict_app_connection(url) as app:
            if statement == "UPDATE":
                app.execute("UPDATE items SET title = 'after' WHERE id = 1")
            else:
                app.execute("DELETE FROM items WHERE id = 1")
        embedder.release.set()
        runner.settle(url, batches_after=runner.worker.totals.batches)
    assert actual_index(url, "item") == expected_index(
        url, "item", Item, "SELECT id, to_jsonb(i) FROM items i"
    )
