"""Query latency through `idxr_pg.search`: one torch thread for a short query vs torch's own.

A scratch database holds the search tests' catalogue (tests/integration/search_data.py,
embedded with the real default model). Then rounds alternate between the two thread policies,
each timing `idxr_pg.search(text)` for every short query (the model is loaded once per process
by `idxr_pg.search`; the first call of each policy is a warm-up), and `search_vector` with the
same vectors (the SQL part alone), so the query-embedding share is their difference:

  per call size   `idxr_pg.embedding.threads`: 1 thread for one text of <= 64 tokens
  torch default   torch.get_num_threads() threads for every call (the policy switched off)

    flock /tmp/idxr-bench.lock .venv/bin/python bench/query_latency.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import psycopg  # noqa: E402
import torch  # noqa: E402
from benchdb import add_database_url, with_dbname  # noqa: E402
from psycopg import sql  # noqa: E402

import idxr_pg  # noqa: E402
from idxr_pg.config import IdxrConfig  # noqa: E402
from idxr_pg.db import migrations  # noqa: E402
from idxr_pg.db.connection import connect  # noqa: E402
from idxr_pg.embedding import threads  # noqa: E402
from idxr_pg.search import _embed_query, _embedder, search_vector  # noqa: E402
from tests.integration import search_data  # noqa: E402

QUERIES = (
    "keep copies of our company files safe",
    "internet for hotel guests",
    "phone lines for the reception",
    "protect the office network",
    "video meetings with screen sharing",
    "space for our own servers",
    "spam filtering for email",
    "support desk for hardware problems",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    add_database_url(parser)
    args = parser.parse_args()
    config = IdxrConfig()
    name = f"idxr_bench_query_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = with_dbname(args.database_url, name)
    policy_cap = threads.SHORT_QUERY_TOKENS
    times: dict[str, list[float]] = {"per call size": [], "torch default": []}
    sql_times: list[float] = []
    try:
        migrations.upgrade(url)
        embedder = _embedder(config.embedding)
        with connect(url, autocommit=True) as conn:
            search_data.index_catalogue(conn, embedder)
        vectors = [_embed_query(embedder, config.embedding, q) for q in QUERIES]
        for _ in range(args.rounds):
            for label, cap in (("per call size", policy_cap), ("torch default", 0)):
                threads.SHORT_QUERY_TOKENS = cap
                idxr_pg.search(QUERIES[0], database_url=url, config=config)  # warm-up
                for query in QUERIES:
                    started = time.perf_counter()
                    idxr_pg.search(query, database_url=url, config=config)
                    times[label].append(time.perf_counter() - started)
            for vector in vectors:
                started = time.perf_counter()
                search_vector(vector, database_url=url)
                sql_times.append(time.perf_counter() - started)
    finally:
        threads.SHORT_QUERY_TOKENS = policy_cap
        with psycopg.connect(args.database_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    load = os.getloadavg()
    sql_p50 = statistics.median(sql_times)
    print(
        f"\nquery latency through idxr_pg.search: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.get_num_threads()} threads by default, load average "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {embedder.name} ({embedder.device}, "
        f"{embedder.precision}); {len(QUERIES)} queries x {args.rounds} rounds, interleaved"
    )
    print(f"search_vector (SQL only, same queries): p50 {sql_p50 * 1000:.1f} ms")
    base = statistics.median(times["torch default"])
    for label, values in times.items():
        p50 = statistics.median(values)
        p95 = statistics.quantiles(values, n=20)[-1]
        print(
            f"  {label:14} search p50 {p50 * 1000:6.1f} ms (p95 {p95 * 1000:6.1f}),"
            f" embedding ~{(p50 - sql_p50) * 1000:6.1f} ms, {p50 / base:4.2f}x torch default"
        )


if __name__ == "__main__":
    main()
