"""Queue bloat: the size of the queue's tables and indexes after N captured changes are
processed, with the autovacuum settings revision 0002 gives them.

A watched table of --rows rows (bench/capture.py's kind) gets --changes one-row UPDATEs from 8
pgbench clients (random rows, so most changes queue a new pending row and some coalesce),
plus --bulk 10,000-row UPDATE statements (batch rows), while a drainer claims and deletes
queue rows the way a worker does (`idxr_pg.db.queue.claim`, `delete_rows`, leases released;
no model: the queue is what is measured). Printed: each queue relation's size before, at the
largest sample taken during the run, right after the drain, and after autovacuum has run
(waited for up to --settle seconds; where the server runs with autovacuum off, the bench runs
the VACUUM itself), with the dead tuples left.

    flock /tmp/idxr-bench.lock .venv/bin/python bench/queue_bloat.py [--changes 1000000]
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

import capture as cap  # noqa: E402  (bench/capture.py: scratch database, tables, pgbench)

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "IDXR_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    parser.add_argument("--changes", type=int, default=1_000_000, help="one-row UPDATEs")
    parser.add_argument("--bulk", type=int, default=10, help="10,000-row UPDATE statements")
    parser.add_argument("--settle", type=float, default=180.0, help="wait for autovacuum (s)")
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
        print(f"load average at start: {os.getloadavg()}")
        stop = threading.Event()
        counts = {"rows": 0, "entities": 0}
        drainers = [threading.Thread(target=drain, args=(url, stop, counts)) for _ in range(2)]
        for drainer in drainers:
            drainer.start()
        peak: dict[str, int] = dict(before)
        sampling = threading.Event()

        vacuums = [0]

        def sample() -> None:
            """Sizes every second; with autovacuum off on the server, stands in for it: every
            --naptime seconds, VACUUM each queue table with at least 1,000 dead tuples (the
            threshold the queue tables' own autovacuum settings give)."""
            next_vacuum = time.monotonic() + args.naptime
            with psycopg.connect(url, autocommit=True) as conn:
                while not sampling.is_set():
                    for name, size in sizes(conn).items():
                        peak[name] = max(peak.get(name, 0), size)
                    if autovacuum == "off" and args.naptime and time.monotonic() > next_vacuum:
                        for table, _live, dead_tuples, _count in conn.execute(DEAD_SQL):
                            if dead_tuples >= 1000:
                                conn.execute(f"VACUUM idxr.{table}")
                                vacuums[0] += 1
                        next_vacuum = time.monotonic() + args.naptime
                    time.sleep(1.0)

        sampler = threading.Thread(target=sample)
        sampler.start()
        started = time.perf_counter()
        clients = 8
        script = cap.SCRIPTS["update"].replace("{table}", "watched")
        with open("/tmp/idxr_bloat.sql", "w") as handle:
            handle.write(script)
        import subprocess

        subprocess.run(
            [pgbench, "-n", "-c", str(clients), "-j", "2", "-t", str(args.changes // clients),
             "-f", "/tmp/idxr_bloat.sql", url],
            check=True, capture_output=True,
        )  # fmt: skip
        with psycopg.connect(url, autocommit=True) as conn:
            for i in range(args.bulk):
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
                deadline = time.monotonic() + args.settle
                while time.monotonic() < deadline:
                    if all(row[2] < 1000 for row in conn.execute(DEAD_SQL).fetchall()):
                        break
                    time.sleep(2.0)
                vacuumed = f"autovacuum, waited {args.settle - (deadline - time.monotonic()):.0f} s"
            else:  # what autovacuum would do with the thresholds above, done here
                conn.execute("VACUUM idxr.queue, idxr.queue_batches")
                vacuumed = "VACUUM run by the bench (autovacuum is off on this server)"
            after_vacuum = sizes(conn)
            dead = conn.execute(DEAD_SQL).fetchall()
        sampling.set()
        sampler.join()
    changes = args.changes + args.bulk * 10_000
    print(
        f"{changes} captured changes ({args.changes} one-row UPDATEs by {clients} clients, "
        f"{args.bulk} x 10,000-row UPDATEs) written in {writing:.0f} s; drained "
        f"({counts['rows']} queue rows, {counts['entities']} entity passes) after {drained:.0f} s"
    )
    print(f"{'relation':<20} {'before':>10} {'peak':>10} {'drained':>10} {'vacuumed':>12}")
    for name in sorted(peak):
        print(
            f"{name:<20} {kib(before.get(name))} {kib(peak.get(name))} "
            f"{kib(after_drain.get(name))} {kib(after_vacuum.get(name)):>12}"
        )
    print(f"VACUUMs run by the bench during the run (autovacuum {autovacuum}): {vacuums[0]}")
    print(f"(table, live, dead tuples, autovacuums) drained: {dead_before}")
    print(f"after {vacuumed}: {dead}")
    print(f"load average at end: {os.getloadavg()}")


def kib(size: int | None) -> str:
    return f"{(size or 0) / 1024:8.0f}kB"


if __name__ == "__main__":
    main()
