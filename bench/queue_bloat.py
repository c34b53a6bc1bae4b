"""Queue bloat: the size of the queue's tables and indexes after N captured changes are
processed, with the autovacuum settings revision 0002 gives them.

A watched table of --rows rows (bench/capture.py's kind) gets --changes one-row UPDATEs from 8
pgbench clients (random rows, so most changes queue a new pending row and some coalesce),
plus --bulk 10,000-row UPDATE statements (batch rows), while a drainer claims and deletes
queue rows the way a worker does (`idxr_pg.db.queue.claim`, `delete_rows`, leases released;
no model: the queue is what is measured). Printed: each queue relation's size before, at the
largest sample taken during the run, right after the drain, and after autovacuum has run
(waited for up to 180 s; where the server runs with autovacuum off, the bench runs the VACUUM
itself), with the dead tuples left. ``--second-burst N`` then writes N more one-row UPDATEs the
same way (do the pages the first burst emptied get reused, or do the indexes grow again?);
``--reindex`` ends with ``REINDEX INDEX CONCURRENTLY`` of every queue index (its time, the
sizes after).

    flock /tmp/idxr-bench.lock .venv/bin/python bench/queue_bloat.py [--changes 1000000]
        [--bulk 10] [--second-burst 300000] [--reindex] [--naptime 60]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

import capture as cap  # noqa: E402  (bench/capture.py: scratch database, tables, pgbench)
from benchdb import add_database_url  # noqa: E402

from idxr_pg.db import leases, queue  # noqa: E402

RELATIONS = ("queue", "queue_pkey", "queue_ready", "queue_pending", "queue_held")
SIZES_SQL = """
SELECT c.relname, pg_relation_size(c.oid) FROM pg_class c
 WHERE c.relnamespace = 'idxr'::regnamespace
   AND c.relname = ANY(%s::text[] || ARRAY['queue_batches', 'queue_batches_pkey'])
"""
DEAD_SQL = """
SELECT relname, n_live_tup, n_dead_tup, autovacuum_count FROM pg_stat_user_tables
 WHERE schemaname = 'idxr' AND relname IN ('queue', 'queue_batches') ORDER BY 1
"""
SETTINGS_SQL = """
SELECT c.relname, c.reloptions FROM pg_class c
 WHERE c.relnamespace = 'idxr'::regnamespace AND c.relname IN ('queue', 'queue_batches')
 ORDER BY 1
"""


def sizes(conn: psycopg.Connection) -> dict[str, int]:
    return dict(conn.execute(SIZES_SQL, [list(RELATIONS)]).fetchall())


lock = threading.Lock()


def drain(url: str, stop: threading.Event, counts: dict[str, int]) -> None:
    """Claim and delete queue rows until ``stop`` is set and the queue is empty."""
    owner = f"bloat-{threading.get_ident()}"
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            claim = queue.claim(conn, "bench_item", owner=owner, batch_size=1000, lease_seconds=60)
            if len(claim) == 0:
                if stop.is_set() and cap.queue_rows(conn) == 0:
                    return
                time.sleep(0.05)
                continue
            with conn.transaction():
                deleted = queue.delete_rows(conn, claim.row_ids(claim.entity_ids))
                leases.release(conn, "bench_item", claim.entity_ids, owner)
            with lock:
                counts["rows"] += deleted
                counts["entities"] += len(claim)


def burst(
    url: str, pgbench: str, changes: int, bulk: int, naptime: float, vacuums: int = 1
) -> dict[str, object]:
    """One burst: ``changes`` one-row UPDATEs by 8 pgbench clients and ``bulk`` 10,000-row
    UPDATEs while two drainers empty the queue; then ``vacuums`` VACUUMs. Sizes at the largest sample,
    after the drain and after the vacuum, with timings and dead tuples."""
    with psycopg.connect(url, autocommit=True) as conn:
        autovacuum = conn.execute("SHOW autovacuum").fetchone()[0]
        peak: dict[str, int] = sizes(conn)
    stop = threading.Event()
    counts = {"rows": 0, "entities": 0}
    drainers = [threading.Thread(target=drain, args=(url, stop, counts)) for _ in range(2)]
    for drainer in drainers:
        drainer.start()
    sampling = threading.Event()
    vacuum_count = [0]

    def sample() -> None:
        """Sizes every second; with autovacuum off on the server, stands in for it: every
        ``naptime`` seconds, VACUUM each queue table with at least 1,000 dead tuples (the
        threshold the queue tables' own autovacuum settings give)."""
        next_vacuum = time.monotonic() + naptime
        with psycopg.connect(url, autocommit=True) as conn:
            while not sampling.is_set():
                for name, size in sizes(conn).items():
                    peak[name] = max(peak.get(name, 0), size)
                if autovacuum == "off" and naptime and time.monotonic() > next_vacuum:
                    for table, _live, dead_tuples, _count in conn.execute(DEAD_SQL):
                        if dead_tuples >= 1000:
                            conn.execute(f"VACUUM idxr.{table}")
                            vacuum_count[0] += 1
                    next_vacuum = time.monotonic() + naptime
                time.sleep(1.0)

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.perf_counter()
    clients = 8
    script = cap.SCRIPTS["update"].replace("{table}", "watched")
    with open("/tmp/idxr_bloat.sql", "w") as handle:
        handle.write(script)
    subprocess.run(
        [pgbench, "-n", "-c", str(clients), "-j", "2", "-t", str(changes // clients),
         "-f", "/tmp/idxr_bloat.sql", url],
        check=True, capture_output=True,
    )  # fmt: skip
    with psycopg.connect(url, autocommit=True) as conn:
        for i in range(bulk):
            conn.execute(
                "UPDATE bench.watched SET body = body || '.' WHERE id BETWEEN %s AND %s",
                [1 + i * 10_000, (i + 1) * 10_000],
            )
    writing = time.perf_counter() - started
    stop.set()
    for drainer in drainers:
        drainer.join()
    drained = time.perf_counter() - started
    with psycopg.connect(url, autocommit=True) as conn:
        after_drain = sizes(conn)
        dead_before = conn.execute(DEAD_SQL).fetchall()
        if autovacuum == "on":
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                if all(row[2] < 1000 for row in conn.execute(DEAD_SQL).fetchall()):
                    break
                time.sleep(2.0)
            vacuumed = "autovacuum"
        else:  # what autovacuum would do with the thresholds above, done here
            for _ in range(vacuums):
                conn.execute("VACUUM idxr.queue, idxr.queue_batches")
            vacuumed = f"{vacuums} VACUUM run by the bench (autovacuum is off on this server)"
        after_vacuum = sizes(conn)
        dead = conn.execute(DEAD_SQL).fetchall()
    sampling.set()
    sampler.join()
    print(
        f"burst: {changes + bulk * 10_000} captured changes ({changes} one-row UPDATEs by "
        f"{clients} clients, {bulk} x 10,000-row UPDATEs) written in {writing:.0f} s; drained "
        f"({counts['rows']} queue rows, {counts['entities']} entity passes) after {drained:.0f} s;"
        f" VACUUMs by the bench during it: {vacuum_count[0]}; (table, live, dead, autovacuums) "
        f"drained: {dead_before}; after {vacuumed}: {dead}",
        flush=True,
    )
    return {"peak": peak, "drained": after_drain, "vacuumed": after_vacuum}


def reindex(url: str) -> tuple[dict[str, int], float]:
    """REINDEX CONCURRENTLY every queue index (an operator step after a large backlog):
    the sizes after it and the seconds it took."""
    started = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        for name in RELATIONS[1:] + ("queue_batches_pkey",):
            conn.execute(f"REINDEX INDEX CONCURRENTLY idxr.{name}")
        return sizes(conn), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_database_url(parser)
    parser.add_argument("--changes", type=int, default=1_000_000, help="one-row UPDATEs")
    parser.add_argument("--bulk", type=int, default=10, help="10,000-row UPDATE statements")
    parser.add_argument(
        "--second-burst",
        type=int,
        default=0,
        help="one-row UPDATEs of a second burst after the first is drained and vacuumed "
        "(shows whether the emptied index pages are reused)",
    )
    parser.add_argument(
        "--vacuums-after",
        type=int,
        default=1,
        help="VACUUMs after each drain (a btree page emptied by one VACUUM is reusable only "
        "once a later one has put it in the free space map)",
    )
    parser.add_argument(
        "--reindex", action="store_true", help="REINDEX CONCURRENTLY the queue indexes at the end"
    )
    parser.add_argument(
        "--naptime",
        type=float,
        default=60.0,
        help="with autovacuum off on the server: VACUUM the queue tables this often, as "
        "autovacuum would (0: never)",
    )
    args = parser.parse_args()
    pgbench = cap.find_pgbench()
    assert pgbench, "pgbench is needed"
    with cap.bench_database(args.database_url, False) as url:
        cap.prepare(url)
        with psycopg.connect(url, autocommit=True) as conn:
            autovacuum = conn.execute("SHOW autovacuum").fetchone()[0]
            naptime = conn.execute("SHOW autovacuum_naptime").fetchone()[0]
            print(f"autovacuum {autovacuum}, autovacuum_naptime {naptime}; reloptions:")
            for name, options in conn.execute(SETTINGS_SQL).fetchall():
                print(f"  idxr.{name}: {', '.join(options or [])}")
            before = sizes(conn)
        print(f"load average at start: {os.getloadavg()}", flush=True)
        columns: list[tuple[str, dict[str, int]]] = [("before", before)]
        first = burst(url, pgbench, args.changes, args.bulk, args.naptime, args.vacuums_after)
        columns += [(f"1: {k}", first[k]) for k in ("peak", "drained", "vacuumed")]
        if args.second_burst:
            second = burst(url, pgbench, args.second_burst, 0, args.naptime, args.vacuums_after)
            columns += [(f"2: {k}", second[k]) for k in ("peak", "drained", "vacuumed")]
        if args.reindex:
            reindexed, seconds = reindex(url)
            columns.append(("reindexed", reindexed))
            print(f"REINDEX CONCURRENTLY of the queue indexes (empty queue): {seconds:.2f} s")
    print(f"{'relation':<20}" + "".join(f"{label:>13}" for label, _ in columns))
    for name in sorted(before):
        print(f"{name:<20}" + "".join(f"{kib(values.get(name)):>13}" for _, values in columns))
    print(f"load average at end: {os.getloadavg()}")


def kib(size: int | None) -> str:
    return f"{(size or 0) / 1024:8.0f}kB"


if __name__ == "__main__":
    main()
