"""The worker's overlap (``worker.overlap``, issue 14): batch N+1 is claimed on the worker's
connection and prepared (loaded, flattened, diffed, embedded) by a helper thread while batch N
is written. The index is exactly the one of a worker without overlap; the writes really run
beside the embedding; no transaction of the worker spans a model call (invariant 2); a claim
leaves alone the entities of a batch still being prepared; an error while writing gives back
the leases of the batch being prepared. Crash safety (SIGKILL) is the chaos test's, which
runs with and without overlap (test_worker_concurrency.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import psycopg
import pytest

from idxr_pg.db import queue
from idxr_pg.embedding import DeterministicEmbedder
from idxr_pg.indexing.pipeline import Pipeline
from idxr_pg.records.counts import Counts
from idxr_pg.runtime.worker import Worker
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

ITEMS = 60
BATCH = 8
ALL_ITEMS = "SELECT id, to_jsonb(i) FROM items i"

# A worker transaction open at both ends of a model call: (pid, xact_start) seen at its start
# and still there at its end.
OPEN_TRANSACTIONS = """
SELECT pid, xact_start FROM pg_stat_activity
 WHERE datname = current_database() AND application_name LIKE 'idxr-worker%%'
   AND xact_start IS NOT NULL AND pid <> pg_backend_pid()
"""


class WatchingEmbedder(DeterministicEmbedder):
    """Takes ``delay`` seconds per call (a model's time, during which a write can run) and
    records each call's interval and every worker transaction open across the whole call."""

    def __init__(self, url: str, delay: float) -> None:
        super().__init__()
        self.url = url
        self.delay = delay
        self.calls: list[tuple[float, float]] = []
        self.spanning: list[tuple[int, object]] = []
        self._watch: psycopg.Connection | None = None

    def _open(self) -> set[tuple[int, object]]:
        if self._watch is None:
            self._watch = psycopg.connect(self.url, autocommit=True)
        return set(self._watch.execute(OPEN_TRANSACTIONS).fetchall())

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        before = self._open()
        started = time.monotonic()
        time.sleep(self.delay)
        vectors = super().embed(texts)
        self.calls.append((started, time.monotonic()))
        self.spanning.extend(before & self._open())
        return vectors

    def close(self) -> None:
        if self._watch is not None:
            self._watch.close()


@pytest.fixture
def items(isolated_database_url: str, tmp_path: Path):
    url = isolated_database_url
    execute(url, ITEMS_DDL)

    def config(overlap: bool):
        made = make_config(
            tmp_path,
            [item_entity()],
            model="deterministic-test",
            worker={"batch_size": BATCH, "poll_interval": 0.2, "overlap": overlap},
        )
        install_triggers(url, made)
        return made

    return url, config


def fill(url: str) -> None:
    execute(
        url,
        "INSERT INTO items (id, title, body, n)"
        " SELECT g, 'title of item ' || g, 'the body of item ' || g || ' with words', g"
        " FROM generate_series(1, %s) AS g",
        [ITEMS],
    )


def drain(url: str, config, embedder) -> tuple[Counts, list[tuple[float, int]]]:
    worker = Worker(url, config, embedder=embedder, heartbeat_interval=0.5)
    written: list[tuple[float, int]] = []
    worker.on_batch = lambda kind, counts, seconds: written.append(
        (time.monotonic(), counts.entities)
    )
    totals = worker.drain()
    return totals, written


def leases_left(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM idxr.leases").fetchone()[0]


def stored(url: str) -> dict[tuple[str, str], tuple[str, str]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT entity_id, path::text, content_hash, embedding::text FROM idxr.search_index"
            " WHERE entity_kind = 'item'"
        ).fetchall()
    return {(e, p): (h, v) for e, p, h, v in rows}


def test_an_overlapped_worker_writes_exactly_what_a_sequential_one_writes(items):
    url, config = items
    overlapping = config(True)
    fill(url)
    embedder = WatchingEmbedder(url, delay=0.15)
    try:
        overlapped, written = drain(url, overlapping, embedder)
    finally:
        embedder.close()
    rows_overlapped = stored(url)
    assert queue_depth(url) == 0 and leases_left(url) == 0
    assert actual_index(url, "item") == expected_index(url, "item", Item, ALL_ITEMS)

    # The same entities once more through a worker without overlap, from an empty index.
    execute(url, "TRUNCATE idxr.search_index, idxr.embedding_cache")
    execute(url, "DELETE FROM items")  # queue every entity again, as it was
    fill(url)
    sequential, _ = drain(url, config(False), DeterministicEmbedder())
    assert stored(url) == rows_overlapped  # same rows, hashes and vectors
    for name in ("entities", "indexed", "records_written", "texts_embedded"):
        assert getattr(overlapped, name) == getattr(sequential, name) > 0, name
    assert overlapped.entities == ITEMS and overlapped.batches == sequential.batches

    # Each batch wrote its own entities once (no entity claimed by two batches in flight).
    assert sum(n for _, n in written) == ITEMS and all(n <= BATCH for _, n in written)
    # The writes really ran while the helper was inside the model: some batch was written
    # during a model call.
    assert any(start < at < end for at, _ in written for start, end in embedder.calls)
    # ... and no worker transaction spanned a model call (invariant 2).
    assert embedder.spanning == []


def test_a_claim_leaves_alone_the_entities_of_a_batch_in_flight(items):
    url, config = items
    config(True)
    fill(url)
    with psycopg.connect(url, autocommit=True) as conn:
        first = queue.claim(conn, "item", owner="w", batch_size=BATCH, lease_seconds=60)
        # Without ``busy`` the same owner takes its own leased entities back (a worker that
        # reconnected resumes them) ...
        again = queue.claim(conn, "item", owner="w", batch_size=BATCH, lease_seconds=60)
        assert set(again.entity_ids) == set(first.entity_ids)
        # ... with it, the claim goes on to the next entities.
        second = queue.claim(
            conn, "item", owner="w", batch_size=BATCH, lease_seconds=60, busy=first.entity_ids
        )
    assert len(second) == BATCH and not set(second.entity_ids) & set(first.entity_ids)


def test_an_error_while_writing_gives_back_the_batch_being_prepared(
    items, monkeypatch: pytest.MonkeyPatch
):
    url, config = items
    overlapping = config(True)
    fill(url)
    writes: list[int] = []
    leases_at_failure: list[int] = []
    prepared_again = threading.Event()
    real_write = Pipeline._write

    def failing_second_write(self, conn, leased, *args):
        writes.append(len(leased.ids))
        if len(writes) == 2:
            raise psycopg.OperationalError("the server went away (test)")
        return real_write(self, conn, leased, *args)

    real_recover = Worker._recover

    def recover(self, exc):
        # Before reconnecting: batch 2 failed, batch 3 was being prepared; both gave their
        # leases back.
        leases_at_failure.append(leases_left(url))
        prepared_again.set()
        return real_recover(self, exc)

    monkeypatch.setattr(Pipeline, "_write", failing_second_write)
    monkeypatch.setattr(Worker, "_recover", recover)
    totals, _ = drain(url, overlapping, DeterministicEmbedder())
    assert prepared_again.is_set()
    assert leases_at_failure == [0]
    assert queue_depth(url) == 0 and leases_left(url) == 0
    assert actual_index(url, "item") == expected_index(url, "item", Item, ALL_ITEMS)
    assert totals.entities == ITEMS
