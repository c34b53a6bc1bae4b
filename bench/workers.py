"""Many workers: 1, 2 and 4 worker processes draining the same queue (issue 18).

The demo application's subscriptions (about 20 records each) are queued N at a time in a
fresh database and drained by P worker processes with the `deterministic-test` embedder, so
what is measured is the database side: claim, load, diff, write (HNSW upkeep included),
queue deletion. Each worker process starts, connects and builds its pipeline first, then
waits at its first claim until all P are ready: the wall time runs from that start signal to
the last worker's empty claim, so process start-up is not in it.

Per drain it reports entities per second, the scaling ratio against 1 worker (the same
round's 1-worker drain), and the claim contention:

- claim share: the time workers spent inside `queue.claim` over their drain time;
- empty claims: claims that found nothing ready (the end of a drain, or another worker's
  leases holding what was left);
- lock waits: samples of ``pg_stat_activity`` every 20 ms during the drain, the share of the
  workers' active backends that were waiting on a heavyweight lock (``wait_event_type =
  'Lock'``) and on LWLocks, with the most frequent wait events;
- CPU: the worker processes' and their database backends' CPU seconds over the wall time
  (how many cores the drain kept busy: the ceiling on this machine is its core count).

Rounds are interleaved (1, 2, 4, 1, 2, 4, ...); medians are shown.

    flock /tmp/idxr-bench.lock .venv/bin/python bench/workers.py [--entities 1000]
        [--rounds 2] [--workers 1,2,4] [--batch-size 64] [--no-hnsw] [--database-url URL]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import psycopg  # noqa: E402
import yaml  # noqa: E402
from benchdb import add_database_url, with_dbname  # noqa: E402
from psycopg import sql  # noqa: E402

from idxr_pg.capture import triggers as capture  # noqa: E402
from idxr_pg.config import load_config, parse_config  # noqa: E402
from idxr_pg.db import migrations, queue  # noqa: E402
from idxr_pg.demo import data as demo_data  # noqa: E402
from idxr_pg.demo.run import demo_config  # noqa: E402
from idxr_pg.runtime.worker import Worker  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
KIND = "subscription"
SAMPLE_SECONDS = 0.02
CLK_TCK = os.sysconf("SC_CLK_TCK")

ACTIVITY_SQL = """
SELECT pid, state, wait_event_type, wait_event
  FROM pg_stat_activity
 WHERE datname = current_database() AND application_name LIKE 'idxr-worker main %'
"""


def config_dict(batch_size: int) -> dict[str, Any]:
    config = demo_config(0)
    config["embedding"] = {"model": "deterministic-test"}
    config["worker"] = {"batch_size": batch_size, "poll_interval": 1.0}
    return config


# --------------------------------------------------------------------------- one worker process


def child(url: str, config_path: str) -> None:
    """One worker process: start, report ready at the first claim, wait for "go", drain,
    report its figures as one JSON line, wait for "exit"."""
    worker = Worker(url, load_config(Path(config_path)))
    real_claim = queue.claim
    stats = {"claims": 0, "empty_claims": 0, "claim_seconds": 0.0, "claimed": 0}
    marks: dict[str, float] = {}

    def timed_claim(conn: psycopg.Connection, *args: Any, **kwargs: Any) -> queue.Claim:
        backend = {conn.info.backend_pid}  # the main connection: claims and index writes
        if "go" not in marks:
            print("ready", flush=True)
            if sys.stdin.readline().strip() != "go":
                raise SystemExit("no start signal")
            marks["go"] = time.monotonic()
            marks["cpu"] = _cpu_seconds()
            marks["db_cpu"] = backend_cpu(backend)
        started = time.monotonic()
        claimed = real_claim(conn, *args, **kwargs)
        stats["claim_seconds"] += time.monotonic() - started
        stats["claims"] += 1
        stats["empty_claims"] += not claimed
        stats["claimed"] += len(claimed)
        marks["end"] = time.monotonic()
        # Read while the connection is open (the worker closes it when the drain ends).
        marks["db_cpu_end"] = backend_cpu(backend)
        return claimed

    queue.claim = timed_claim  # type: ignore[assignment]  # the worker calls queue.claim
    totals = worker.drain([KIND])
    report = {
        **stats,
        "entities": totals.entities,
        "records_written": totals.records_written,
        "drain_seconds": marks["end"] - marks["go"],
        "end": marks["end"],  # CLOCK_MONOTONIC: one clock for every process on the machine
        "cpu_seconds": _cpu_seconds() - marks["cpu"],
        "db_cpu_seconds": marks["db_cpu_end"] - marks["db_cpu"],
    }
    print(json.dumps(report), flush=True)
    sys.stdin.readline()


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --------------------------------------------------------------------------- the parent


def backend_cpu(pids: set[int]) -> float:
    """CPU seconds (user + system) of local server processes so far (0 for ones gone)."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime
    return total


class Sampler(threading.Thread):
    """Samples the workers' main backends in pg_stat_activity until stopped."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.stop = threading.Event()
        self.active = 0
        self.lock_waits = 0
        self.lwlock_waits = 0
        self.samples = 0
        self.events: Counter[str] = Counter()

    def run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.stop.is_set():
                for _pid, state, wait_type, wait_event in conn.execute(ACTIVITY_SQL):
                    if state != "active":
                        continue
                    self.active += 1
                    if wait_type == "Lock":
                        self.lock_waits += 1
                    elif wait_type == "LWLock":
                        self.lwlock_waits += 1
                    if wait_type:
                        self.events[f"{wait_type}:{wait_event}"] += 1
                self.samples += 1
                self.stop.wait(SAMPLE_SECONDS)


def reset_and_enqueue(url: str, entities: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE idxr.search_index, idxr.embedding_cache, idxr.queue, idxr.leases")
        conn.execute("VACUUM ANALYZE idxr.search_index")
        conn.execute(
            "INSERT INTO idxr.queue (entity_kind, entity_id, operation)"
            " SELECT 'subscription', subscription_id::text, 'bench' FROM demo.subscriptions"
            " ORDER BY subscription_id LIMIT %s",
            [entities],
        )


def drain(url: str, config_path: Path, processes: int, entities: int) -> dict[str, Any]:
    reset_and_enqueue(url, entities)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--child", url, str(config_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(processes)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise SystemExit(f"a worker process did not start (exit {proc.wait()})")
        sampler = Sampler(url)
        sampler.start()
        started = time.monotonic()
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        reports = [json.loads(proc.stdout.readline()) for proc in procs]  # type: ignore[union-attr]
        wall = max(report["end"] for report in reports) - started
        sampler.stop.set()
        sampler.join()
        for proc in procs:
            proc.stdin.write("exit\n")  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]
        codes = [proc.wait(timeout=60) for proc in procs]
        if any(codes):
            raise SystemExit(f"worker processes failed: exit codes {codes}")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    done = sum(report["entities"] for report in reports)
    if done != entities:
        raise SystemExit(f"{processes} workers processed {done} entities, expected {entities}")
    drain_seconds = sum(report["drain_seconds"] for report in reports)
    return {
        "processes": processes,
        "wall": wall,
        "rate": entities / wall,
        "claims": sum(report["claims"] for report in reports),
        "empty_claims": sum(report["empty_claims"] for report in reports),
        "claim_share": sum(report["claim_seconds"] for report in reports) / drain_seconds,
        "lock_wait_share": sampler.lock_waits / max(sampler.active, 1),
        "lwlock_wait_share": sampler.lwlock_waits / max(sampler.active, 1),
        "events": sampler.events,
        "worker_cores": sum(report["cpu_seconds"] for report in reports) / wall,
        "db_cores": sum(report["db_cpu_seconds"] for report in reports) / wall,
        "records_written": sum(report["records_written"] for report in reports),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entities", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", default="1,2,4", help="worker process counts, e.g. 1,2,4")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--no-hnsw", action="store_true", help="drop the HNSW index first")
    add_database_url(parser)
    parser.add_argument("--child", nargs=2, metavar=("URL", "CONFIG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    counts = [int(n) for n in args.workers.split(",")]
    os.environ.setdefault("IDXR_ALLOW_SUPERUSER", "1")  # the bench connects as postgres

    name = f"idxr_bench_workers_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = with_dbname(args.database_url, name)
    results: dict[int, list[dict[str, Any]]] = {n: [] for n in counts}
    load_before = os.getloadavg()
    try:
        migrations.upgrade(url)
        migrations.set_embedding_dimensions(url, 384)
        config = parse_config(config_dict(args.batch_size), "bench")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute((ROOT / "idxr_pg" / "demo" / "schema.sql").read_text())
            capture.install_triggers(conn, config.entities)
            with conn.transaction():
                demo_data.load(conn, demo_data.generate(args.entities, seed=11))
            if args.no_hnsw:
                conn.execute("DROP INDEX idxr.search_index_embedding_hnsw_384")
        with tempfile.TemporaryDirectory() as tmp:
            config_path = Path(tmp) / "idxr.yaml"
            config_path.write_text(yaml.safe_dump(config_dict(args.batch_size)))
            for round_ in range(args.rounds):
                for n in counts:
                    result = drain(url, config_path, n, args.entities)
                    results[n].append(result)
                    print(
                        f"round {round_ + 1}: {n} worker(s): {result['wall']:.2f} s, "
                        f"{result['rate']:.0f} entities/s",
                        flush=True,
                    )
    finally:
        with psycopg.connect(args.database_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
    report(args, counts, results, load_before, os.getloadavg())


def report(
    args: argparse.Namespace,
    counts: list[int],
    results: dict[int, list[dict[str, Any]]],
    load_before: tuple[float, float, float],
    load_after: tuple[float, float, float],
) -> None:
    print(
        f"\nworkers: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {load_before[0]:.1f} before / {load_after[0]:.1f} after, "
        f"{args.entities} entities, batch size {args.batch_size}, rounds {args.rounds}, "
        f"HNSW {'dropped' if args.no_hnsw else 'kept'}; medians"
    )
    base = counts[0]
    header = (
        f"{'workers':>7} {'seconds':>8} {'ent/s':>7} {'ratio':>6} {'claims':>6} {'empty':>5}"
        f" {'claim%':>6} {'lock%':>6} {'lwlock%':>7} {'w.cores':>7} {'db.cores':>8}"
    )
    print(header)
    print("-" * len(header))
    for n in counts:
        runs = results[n]
        # The ratio per round (against the same round's baseline), then the median.
        ratios = [r["rate"] / b["rate"] for r, b in zip(runs, results[base], strict=True)]

        def med(key: str, runs: list[dict[str, Any]] = runs) -> float:
            return statistics.median(r[key] for r in runs)

        print(
            f"{n:7d} {med('wall'):8.2f} {med('rate'):7.0f} {statistics.median(ratios):6.2f}"
            f" {med('claims'):6.0f} {med('empty_claims'):5.0f} {100 * med('claim_share'):6.1f}"
            f" {100 * med('lock_wait_share'):6.1f} {100 * med('lwlock_wait_share'):7.1f}"
            f" {med('worker_cores'):7.2f} {med('db_cores'):8.2f}"
        )
    for n in counts:
        events: Counter[str] = Counter()
        for run in results[n]:
            events.update(run["events"])
        common = ", ".join(f"{event} {count}" for event, count in events.most_common(4))
        print(f"  {n} worker(s), wait events sampled: {common or 'none'}")


if __name__ == "__main__":
    main()
