"""Invariant 1 under fire: several worker processes (deterministic test embedder), several writer
connections doing random inserts/updates/deletes through the real capture triggers, workers
SIGKILLed at random moments and restarted. Once writes stop and the queue drains,
idxr.search_index must equal the flattening of the current source rows exactly. Run with the
workers' overlap on over the C capture trigger, and off over plpgsql (``worker.overlap``: a
killed worker then also holds a batch claimed and being prepared)."""

from __future__ import annotations

import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import psycopg
import pytest

from idxr_pg.embedding import DeterministicEmbedder
from tests.integration.worker_support import (
    IDXR,
    ITEMS_DDL,
    Item,
    actual_index,
    execute,
    expected_index,
    fetch_index,
    install_triggers,
    item_entity,
    make_config,
    queue_depth,
    subprocess_env,
    wait_until,
)

pytestmark = pytest.mark.slow

WORKERS = 3
WRITERS = 3
WRITE_SECONDS = 15.0
KEYS = 80
WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "solar",
    "wind",
    "river",
    "stone",
    "garden",
    "copper",
    "maple",
    "quiet",
]


# The default document, loaded slowly: a wide window between a worker's read and its write,
# where a change committed meanwhile must lead to another pass (invariant 3).
SLOW_DOCUMENT = (
    "SELECT i.id, to_jsonb(i) FROM public.items i, pg_sleep(random() * 0.3)"
    " WHERE i.id = ANY(%(keys)s::integer[])"
)


def start_worker(url: str, config_path: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [IDXR, "--database-url", url, "--config", str(config_path), "worker"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=subprocess_env(),
        )


def wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    """Until the worker process has joined idxr.workers (its signal handlers are in place)."""

    def ready() -> bool:
        assert proc.poll() is None, f"worker {proc.pid} exited with {proc.returncode}"
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT 1 FROM idxr.workers WHERE pid = %s AND state = 'running'", [proc.pid]
            ).fetchone()
        return row is not None

    wait_until(ready, 60, interval=0.1, what=f"worker {proc.pid} to start")


def writer(url: str, seed: int, stop: threading.Event, counts: dict[str, int]) -> None:
    rng = random.Random(seed)
    with psycopg.connect(url, autocommit=True) as conn:
        while not stop.is_set():
            key = rng.randrange(1, KEYS + 1)
            op = rng.random()
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3)))
            try:
                if op < 0.4:
                    conn.execute(
                        "INSERT INTO items (id, title, body, n) VALUES (%s, %s, %s, %s)"
                        " ON CONFLICT (id) DO UPDATE SET title = excluded.title",
                        [key, text, rng.choice([None, text + " notes"]), rng.randint(0, 9)],
                    )
                elif op < 0.7:
                    conn.execute("UPDATE items SET body = %s WHERE id = %s", [text, key])
                elif op < 0.8:
                    # A multi-row statement in a transaction with a second one.
                    with conn.transaction():
                        conn.execute("UPDATE items SET n = n + 1 WHERE id %% 7 = %s", [key % 7])
                        conn.execute("UPDATE items SET title = %s WHERE id = %s", [text, key])
                else:
                    conn.execute("DELETE FROM items WHERE id = %s", [key])
                counts["writes"] += 1
            except psycopg.errors.DeadlockDetected:
                counts["deadlocks"] += 1  # writers against writers; not the indexer's doing
            time.sleep(rng.uniform(0, 0.01))


# Each capture path (tests/conftest.py capture_language) and each worker mode once: the
# defaults together (the C trigger, overlap on), and both fallbacks together (plpgsql, overlap
# off); the two are independent, so the other two pairings would add 40 s and no new case.
@pytest.mark.parametrize(
    ("capture_language", "overlap"),
    [("c", True), ("plpgsql", False)],
    ids=["c-overlap", "plpgsql-sequential"],
    indirect=["capture_language"],
)
def test_index_equals_the_source_after_random_writes_and_worker_kills(
    isolated_database_url, tmp_path, capture_language, overlap
):
    url = isolated_database_url
    execute(url, ITEMS_DDL)
    config = make_config(
        tmp_path,
        [item_entity(document=SLOW_DOCUMENT)],
        model="deterministic-test",
        worker={"batch_size": 8, "poll_interval": 0.5, "lease_seconds": 2, "overlap": overlap},
    )
    config_path = tmp_path / "idxr.yaml"
    install_triggers(url, config)
    logs = tmp_path / "workers.log"
    workers = [start_worker(url, config_path, logs) for _ in range(WORKERS)]
    stop = threading.Event()
    counts = {"writes": 0, "deadlocks": 0, "kills": 0}
    threads = [
        threading.Thread(target=writer, args=(url, seed, stop, counts)) for seed in range(WRITERS)
    ]
    rng = random.Random(42)
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + WRITE_SECONDS
        while time.monotonic() < deadline:
            time.sleep(rng.uniform(0.5, 2.0))
            victim = rng.randrange(WORKERS)
            workers[victim].send_signal(signal.SIGKILL)
            workers[victim].wait()
            counts["kills"] += 1
            workers[victim] = start_worker(url, config_path, logs)
        stop.set()
        for thread in threads:
            thread.join()

        wait_until(lambda: queue_depth(url) == 0, 90, interval=0.25, what="the queue to drain")
        expected = expected_index(url, "item", Item, "SELECT id, to_jsonb(i) FROM items i")
        assert actual_index(url, "item") == expected, logs.read_text()[-3000:]

        # Every embeddable row carries the vector of its own text; others carry none.
        embedder = DeterministicEmbedder()
        rows = fetch_index(url, "item")
        for (_, path), row in rows.items():
            if row["embedding"] is not None:
                vector = embedder.embed([f"{path}: {row['value']}"])[0]
                assert np.allclose(row["embedding"].to_numpy(), vector, atol=1e-6)
        assert counts["kills"] >= 5 and counts["writes"] > 200
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT count(*) FROM idxr.dead_letters").fetchone()[0] == 0
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        for proc in workers:
            if proc.poll() is None:
                wait_ready(url, proc)
                proc.send_signal(signal.SIGTERM)
        codes = [proc.wait(timeout=30) for proc in workers]
    assert codes == [0] * WORKERS, logs.read_text()[-3000:]
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM idxr.leases").fetchone()[0] == 0
