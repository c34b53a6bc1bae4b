"""HNSW build settings (issue 14): seconds to build the index over N vectors per
(``maintenance_work_mem``, ``max_parallel_maintenance_workers``) setting.

The vectors are `halfvec.deterministic_vectors` (unit vectors around random centres) in a
table of their own in a fresh database; each setting builds the same index
(``vector_cosine_ops``, pgvector's default m and ef_construction, as the bulk backfill's),
``--rounds`` times with the order of the settings rotated per round; the figure is each
one's fastest. ``auto`` is the bulk backfill's default (`idxr_pg.db.hnsw_memory`).

    .venv/bin/python bench/hnsw_build.py [--vectors 20000] [--settings 512MB/4,auto/4,auto/1,auto/0]
"""

from __future__ import annotations

import argparse
import os
import time
import uuid

import psycopg
from benchdb import add_database_url, with_dbname
from halfvec import deterministic_vectors, load
from pgvector.psycopg import register_vector
from psycopg import sql

from idxr_pg.db.hnsw_memory import graph_megabytes


def build_seconds(conn: psycopg.Connection, memory: str, workers: int) -> float:
    conn.execute("DROP INDEX IF EXISTS t_hnsw")
    conn.execute(f"SET maintenance_work_mem = '{memory}'")
    conn.execute(f"SET max_parallel_maintenance_workers = {workers}")
    started = time.perf_counter()
    conn.execute("CREATE INDEX t_hnsw ON t USING hnsw (embedding vector_cosine_ops)")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vectors", type=int, default=20_000)
    parser.add_argument("--clusters", type=int, default=2_000)
    parser.add_argument("--settings", default="512MB/4,auto/4,auto/1,auto/0")
    parser.add_argument("--rounds", type=int, default=2)
    add_database_url(parser)
    args = parser.parse_args()
    start_load = os.getloadavg()
    vectors = deterministic_vectors(args.vectors, 384, args.clusters)
    auto = f"{graph_megabytes(args.vectors, 384)}MB"
    settings = []
    for item in args.settings.split(","):
        memory, workers = item.split("/")
        settings.append((auto if memory == "auto" else memory, int(workers), item))
    name = f"idxr_bench_hnsw_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = with_dbname(args.database_url, name)
    best: dict[str, float] = {}
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION vector")
            register_vector(conn)
            load(conn, vectors)
            for round_ in range(args.rounds):
                shift = round_ % len(settings)
                for memory, workers, label in settings[shift:] + settings[:shift]:
                    seconds = build_seconds(conn, memory, workers)
                    print(f"round {round_ + 1} {label} ({memory}): {seconds:.1f}s", flush=True)
                    best[label] = min(seconds, best.get(label, seconds))
    finally:
        with psycopg.connect(args.database_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
    end_load = os.getloadavg()
    print(
        f"HNSW build, {args.vectors} vectors of 384 dimensions ({args.clusters} clusters), "
        f"auto = {auto}; load average {start_load[0]:.2f} at start, {end_load[0]:.2f} at end"
    )
    first = best[settings[0][2]]
    for _, _, label in settings:
        print(f"  {label:12} {best[label]:7.1f}s  {best[label] / first:.2f}x {settings[0][2]}")


if __name__ == "__main__":
    main()
