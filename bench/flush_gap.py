"""Issue 13, fifth pass: what a durable one-row commit waits for on this machine.

Two parts, both printed with the load average at start and end:

1. ``--probe``: the disk's flush latency as the server sees it. An 8 KiB ``pwrite`` and an
   ``fdatasync`` in a loop, in a file under ``--probe-dir`` (put it on the WAL's file system),
   back to back and with a busy-wait of N µs between one flush's return and the next write.
   On this session's KVM guest a flush issued at once after the previous one takes ~30 µs; one
   issued after a pause of 20 µs or more often takes 0.3-0.8 ms (the mean rises 5-10x).
2. pgbench variants of the bench's one-row UPDATE on ``bench/capture.py``'s tables, one
   client (``--clients``), rotated order per round, ratios to the unwatched one-statement UPDATE of the same
   round, median of the rounds; per variant the WAL bytes, full-page images and the time spent
   in the WAL flush (``pg_stat_wal.wal_sync_time``, ``track_wal_io_timing`` set per session)
   per transaction. Every run starts on an emptied queue, without the ``CHECKPOINT`` of
   ``capture.reset``: one ``CHECKPOINT`` and an untimed warm-up of ``--warmup`` seconds per
   variant come first, so that the full-page images a checkpoint brings are not in the figure
   (the FPI column shows any that another session's checkpoint caused). ``pg_stat_wal`` is cluster-wide: on a shared server
   the other sessions' WAL is counted too, so run it on a cluster of its own for those columns.

The variants isolate the steps of a watched UPDATE: the same unwatched UPDATE with one more
client round trip (``BEGIN``/``COMMIT``), with a pause, with a share lock of an unrelated row
in the same round trip and in a second statement, with a CPU burn that writes nothing in the
same round trip (``--burn`` rows of ``generate_series``); then the watched tables (C and
plpgsql). ``synchronous_commit = off`` rounds of the unwatched, the burn and the watched
variants give their CPU-bound ratios.

    flock /tmp/idxr-bench.lock .venv/bin/python bench/flush_gap.py [--database-url URL]
        [--rounds 3] [--seconds 2] [--probe] [--probe-dir /var/lib/postgresql]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

import capture as cap  # noqa: E402  (bench/capture.py: database, tables, pgbench, reset)
from benchdb import add_database_url  # noqa: E402

KEY = f"\\set id random(1, {cap.TABLE_ROWS})\n"
UPDATE = "UPDATE bench.{t} SET n = n + 1 WHERE id = :id"
# About as much backend CPU as the C trigger adds to a one-row UPDATE, writing nothing.
BURN = "SELECT count(*) FROM generate_series(1, {burn})"
LOCK = "SELECT 1 FROM bench.lock_target WHERE id = :id FOR SHARE"
VARIANTS: dict[str, str] = {
    "plain": KEY + UPDATE.format(t="plain") + ";\n",
    "plain, BEGIN/UPDATE/COMMIT": KEY + "BEGIN;\n" + UPDATE.format(t="plain") + ";\nCOMMIT;\n",
    "plain, then \\sleep 10 us": KEY + UPDATE.format(t="plain") + ";\n\\sleep 10 us\n",
    "plain + FOR SHARE, one round trip": KEY + UPDATE.format(t="plain") + "\\;" + LOCK + ";\n",
    "plain + FOR SHARE, two statements": KEY
    + "BEGIN;\n"
    + UPDATE.format(t="plain")
    + ";\n"
    + LOCK
    + ";\nCOMMIT;\n",
    "plain + CPU, one round trip": KEY + UPDATE.format(t="plain") + "\\;" + BURN + ";\n",
    "watched (C)": KEY + UPDATE.format(t="watched") + ";\n",
    "watched_plpgsql": KEY + UPDATE.format(t="watched_plpgsql") + ";\n",
}
ASYNC = ("plain", "plain + CPU, one round trip", "watched (C)", "watched_plpgsql")

WAL = "SELECT wal_bytes, wal_fpi, wal_sync, wal_sync_time FROM pg_stat_wal"


def load() -> str:
    return open("/proc/loadavg").read().split()[0]


def probe(directory: str | None, count: int = 3000) -> None:
    """fdatasync latency back to back and after a busy-wait pause (see the module text)."""
    block = b"\1" * 8192
    print(
        f"\nflush probe: 8 KiB pwrite + fdatasync x {count} in {directory or tempfile.gettempdir()}, load {load()}"
    )
    with tempfile.NamedTemporaryFile(dir=directory) as handle:
        fd = handle.fileno()
        for i in range(256):
            os.pwrite(fd, block, i * 8192)
        os.fdatasync(fd)
        for gap_us in (0, 20, 50, 100, 200, 0):
            latencies = []
            started = time.perf_counter()
            for i in range(count):
                os.pwrite(fd, block, (i // 16 % 256) * 8192)
                before = time.perf_counter()
                os.fdatasync(fd)
                after = time.perf_counter()
                latencies.append(after - before)
                until = after + gap_us / 1e6
                while time.perf_counter() < until:
                    pass
            elapsed = time.perf_counter() - started
            latencies.sort()
            print(
                f"  pause {gap_us:3d} µs: fdatasync mean {statistics.fmean(latencies) * 1e6:6.1f}"
                f"  p50 {latencies[count // 2] * 1e6:6.1f}  p90 {latencies[count * 9 // 10] * 1e6:6.1f} µs;"
                f"  {count / elapsed:7.0f} flushes/s"
            )
    print(f"  (load {load()} at the end)")


def empty_queue(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"TRUNCATE {', '.join(cap.queue_tables(conn))}")


def run(
    url: str, script: str, seconds: float, sync: str, warmup: float = 0, clients: int = 1
) -> dict[str, float]:
    empty_queue(url)
    pgbench = cap.find_pgbench()
    assert pgbench, "pgbench not found"
    env = dict(os.environ, PGOPTIONS=f"-c synchronous_commit={sync} -c track_wal_io_timing=on")
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as handle:
        handle.write(script)
    try:

        def bench(length: float) -> str:
            return subprocess.run(
                [pgbench, "-n", "-c", str(clients), "-j", str(min(clients, os.cpu_count() or 1)),
                 "-T", str(int(length)), "-f", handle.name, url],
                capture_output=True, text=True, env=env, check=True,
            ).stdout  # fmt: skip

        if warmup > 0:
            bench(warmup)
        if seconds <= 0:
            return {}
        with psycopg.connect(url, autocommit=True) as conn:
            before = conn.execute(WAL).fetchone()
            out = bench(seconds)
            after = conn.execute(WAL).fetchone()
    finally:
        os.unlink(handle.name)
    tps = float(re.search(r"tps = ([\d.]+) \(without", out).group(1))
    done = int(re.search(r"actually processed: (\d+)", out).group(1))
    delta = [float(a - b) for a, b in zip(after, before, strict=True)]
    return {
        "tps": tps,
        "bytes": delta[0] / done,
        "fpi": delta[1] / done,
        "syncs": delta[2] / done,
        "sync_us": delta[3] * 1000 / done,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_database_url(parser)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=1, help="pgbench clients per run")
    parser.add_argument("--burn", type=int, default=150, help="generate_series rows of the burn")
    parser.add_argument("--probe", action="store_true", help="the fdatasync probe first")
    parser.add_argument(
        "--probe-dir",
        default="/var/lib/postgresql" if os.path.isdir("/var/lib/postgresql") else None,
        help="a directory on the WAL's file system [/var/lib/postgresql, else the temp dir]",
    )
    args = parser.parse_args()
    cap.SINGLE_ROW_TABLES = cap.COMPARE_TABLES
    for name, script in VARIANTS.items():
        VARIANTS[name] = script.replace("{burn}", str(args.burn))
    if args.probe:
        probe(args.probe_dir)
    runs = [(name, "on") for name in VARIANTS] + [(name, "off") for name in ASYNC]
    results: dict[tuple[str, str], list[dict[str, float]]] = {r: [] for r in runs}
    with cap.bench_database(args.database_url, keep=False) as url:
        cap.prepare(url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE bench.lock_target (id integer PRIMARY KEY)")
            conn.execute(
                "INSERT INTO bench.lock_target SELECT generate_series(1, %s)", [cap.TABLE_ROWS]
            )
            conn.execute("VACUUM ANALYZE bench.lock_target")
            conn.execute("CHECKPOINT")
        for name in VARIANTS:
            run(url, VARIANTS[name], 0, "on", args.warmup, args.clients)
        print(
            f"\npgbench, {args.clients} client(s), {args.seconds:g} s per run, rounds rotated; load {load()}"
        )
        for index in range(args.rounds):
            for sync in ("on", "off"):
                order = [r for r in runs if r[1] == sync]
                shift = index % len(order)
                for r in order[shift:] + order[:shift]:
                    results[r].append(run(url, VARIANTS[r[0]], args.seconds, r[1], 0, args.clients))
            print(f"  round {index + 1} done, load {load()}")
    print(
        f"\n{'variant':<36} {'sync':>4} {'tps':>7} {'ratio':>6} {'WAL B/tx':>8}"
        f" {'FPI/tx':>6} {'flush µs/tx':>11}"
    )
    for name, sync in runs:
        rows = results[(name, sync)]
        ratios = [
            row["tps"] / base["tps"]
            for row, base in zip(rows, results[("plain", sync)], strict=True)
        ]
        med = {k: statistics.median(row[k] for row in rows) for k in rows[0]}
        print(
            f"{name:<36} {sync:>4} {med['tps']:7.0f} {statistics.median(ratios):6.2f}"
            f" {med['bytes']:8.0f} {med['fpi']:6.2f} {med['sync_us']:11.0f}"
        )
    print(f"(load {load()} at the end)")


if __name__ == "__main__":
    main()
