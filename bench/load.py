"""`idxr-pg load` vs plain COPY of the same file, and the re-load of an unchanged file.

One run, in a fresh database on the server, generates a CSV of --rows rows (integer key, three
text columns, a numeric and a timestamp) and prints:

1. First load: rows/s of `Loader.run` into an empty table with a primary key, and of plain
   ``COPY table FROM STDIN (FORMAT csv, HEADER)`` of the same file's bytes into an identical
   empty table, as the ratio load / COPY. Rounds alternate which of the two runs first; the
   ratio is taken within a round and the median printed (goal: >= 0.5).
2. Re-load of the unchanged file: seconds of `Loader.run` in this process (a scan of the file,
   a look-up, no row read), and of the whole `idxr-pg load` command in a subprocess (Python
   start-up included) (goal: <= 2 s).
3. A changed snapshot: the same file with 1% of its rows changed, loaded again: rows/s and
   rows written (the staging path: every row compared by fingerprint).
4. The same rows as JSONL (parsed in Python, not by COPY), first load: rows/s and the ratio to
   the median COPY above.

    flock /tmp/idxr-bench.lock .venv/bin/python bench/load.py [--rows 100000] [--rounds 3]
          [--partition-rows 20000] [--database-url URL] [--keep]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
from benchdb import add_database_url, with_dbname
from psycopg import sql

from idxr_pg.db import migrations
from idxr_pg.loading.load import Loader, LoadOptions

IDXR = str(Path(sys.executable).with_name("idxr-pg"))
DDL = """
CREATE TABLE {table} (
    id      integer PRIMARY KEY,
    name    text NOT NULL,
    city    text,
    note    text,
    price   numeric(10, 2),
    created timestamptz
)
"""


def generate(path: Path, rows: int, changed_every: int = 0) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        f.write("id,name,city,note,price,created\n")
        for i in range(rows):
            name = f"customer {i}" + (
                " (changed)" if changed_every and i % changed_every == 0 else ""
            )
            f.write(
                f'{i},{name},City {i % 977},"a note, with a comma, about row {i}",'
                f"{(i % 10_000) / 100:.2f},2026-01-{1 + i % 28:02d}T{i % 24:02d}:00:00Z\n"
            )


def write_jsonl(csv_path: Path, jsonl_path: Path) -> None:
    """The CSV's rows as JSON objects, one per line."""
    import csv
    import json

    with csv_path.open(newline="", encoding="utf-8") as f, jsonl_path.open("w") as out:
        for row in csv.DictReader(f):
            row["id"] = int(row["id"])
            out.write(json.dumps(row) + "\n")


def plain_copy(url: str, table: str, path: Path) -> float:
    with psycopg.connect(url) as conn:
        conn.execute(sql.SQL(DDL).format(table=sql.Identifier(table)))
        conn.commit()
        started = time.perf_counter()
        with (
            conn.cursor() as cur,
            cur.copy(
                sql.SQL("COPY {} FROM STDIN (FORMAT csv, HEADER)").format(sql.Identifier(table))
            ) as copy,
            path.open("rb") as f,
        ):
            while block := f.read(1 << 20):
                copy.write(block)
        conn.commit()
        return time.perf_counter() - started


def idxr_load(url: str, table: str, path: Path, partition_rows: int, create: bool = True) -> float:
    if create:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL(DDL).format(table=sql.Identifier(table)))
    loader = Loader(url, LoadOptions(table=table, partition_rows=partition_rows, tty=False))
    started = time.perf_counter()
    result = loader.run(path)
    took = time.perf_counter() - started
    assert result.state in ("done", "unchanged"), result
    return took


def machine() -> str:
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next(
        (line.split(":", 1)[1].strip() for line in cpu.splitlines() if "Model name" in line), "?"
    )
    flags = next((line for line in cpu.splitlines() if line.startswith("Flags")), "")
    marks = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in flags]
    return f"{model} ({os.cpu_count()} CPUs; {', '.join(marks) or 'no AVX-512'}), {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--partition-rows", type=int, default=20_000)
    add_database_url(parser)
    parser.add_argument("--keep", action="store_true", help="keep the bench database")
    args = parser.parse_args()

    name = f"idxr_bench_load_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = with_dbname(args.database_url, name)
    try:
        migrations.upgrade(url)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "customers.csv"
            generate(path, args.rows)
            size = path.stat().st_size
            print(f"machine: {machine()}; load average before: {os.getloadavg()}")
            print(
                f"file: {args.rows:,} rows, {size / 1e6:.1f} MB; partitions of {args.partition_rows:,} rows"
            )
            ratios, copies, loads = [], [], []
            for r in range(args.rounds):
                order = ("copy", "load") if r % 2 == 0 else ("load", "copy")
                took = {}
                for what in order:
                    if what == "copy":
                        took[what] = plain_copy(url, f"copy_{r}", path)
                    else:
                        took[what] = idxr_load(url, f"load_{r}", path, args.partition_rows)
                copies.append(took["copy"])
                loads.append(took["load"])
                ratios.append(took["copy"] / took["load"])
                print(
                    f"round {r + 1}: COPY {took['copy']:.2f} s ({args.rows / took['copy']:,.0f} rows/s), "
                    f"load {took['load']:.2f} s ({args.rows / took['load']:,.0f} rows/s), "
                    f"ratio {ratios[-1]:.2f}"
                )
            print(
                f"first load: median {args.rows / statistics.median(loads):,.0f} rows/s vs COPY "
                f"{args.rows / statistics.median(copies):,.0f} rows/s: ratio load/COPY "
                f"{statistics.median(ratios):.2f} (goal >= 0.5)"
            )
            reloads = [
                idxr_load(url, "load_0", path, args.partition_rows, create=False) for _ in range(3)
            ]
            env = {**os.environ, "IDXR_DATABASE_URL": url}
            cli = []
            for _ in range(3):
                started = time.perf_counter()
                subprocess.run(
                    [IDXR, "load", str(path), "--table", "load_0"],
                    env=env,
                    check=True,
                    capture_output=True,
                )
                cli.append(time.perf_counter() - started)
            print(
                f"re-load of the unchanged file: median {statistics.median(reloads):.3f} s in process, "
                f"{statistics.median(cli):.2f} s as `idxr-pg load` (process start included) (goal <= 2 s)"
            )
            generate(path, args.rows, changed_every=100)
            started = time.perf_counter()
            loader = Loader(
                url, LoadOptions(table="load_0", partition_rows=args.partition_rows, tty=False)
            )
            result = loader.run(path)
            took = time.perf_counter() - started
            print(
                f"changed snapshot (1% of rows changed): {took:.2f} s, {args.rows / took:,.0f} rows/s, "
                f"{result.counts.updated:,} updated, {result.counts.unchanged:,} unchanged"
            )
            jsonl = Path(tmp) / "customers.jsonl"
            write_jsonl(path, jsonl)
            took_jsonl = idxr_load(url, "load_jsonl", jsonl, args.partition_rows)
            print(
                f"JSONL first load (Python parsing): {took_jsonl:.2f} s, "
                f"{args.rows / took_jsonl:,.0f} rows/s, ratio to COPY of the CSV "
                f"{statistics.median(copies) / took_jsonl:.2f}"
            )
            print(f"load average after: {os.getloadavg()}")
    finally:
        if not args.keep:
            with psycopg.connect(args.database_url, autocommit=True) as admin:
                admin.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )


if __name__ == "__main__":
    main()
