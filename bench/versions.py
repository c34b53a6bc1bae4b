"""A model change with index versions vs the old way (issue 15).

N entities of the demo application (default 30) are backfilled with the default model
(all-MiniLM-L6-v2, 384 dimensions: version 1). The database is copied, then:

- versions: `versions create subscription --model all-mpnet-base-v2` builds version 2 (768
  dimensions) while a reader keeps searching version 1; `versions activate` switches; then
  `versions rollback` switches back. Timed: the build, each switch, and the search latency
  (idxr.search over the kind, k = 10, p50/p95) before, during the build and after the switch.
- the old way, on the copy: empty the kind's rows and backfill it with the new model
  (search of the kind is down, or empty, for that whole time).

Needs the second model (`make second-model`). Hold the bench lock:

    flock /tmp/idxr-bench.lock .venv/bin/python bench/versions.py [--entities 30]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import threading
import time
import uuid
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("IDXR_ALLOW_SUPERUSER", "1")  # the bench connects as postgres

import psycopg  # noqa: E402
from benchdb import add_database_url, with_dbname  # noqa: E402
from pgvector.psycopg import register_vector  # noqa: E402
from psycopg import sql  # noqa: E402

from idxr_pg.config import EmbeddingSettings, parse_config  # noqa: E402
from idxr_pg.db import migrations  # noqa: E402
from idxr_pg.demo import data as demo_data  # noqa: E402
from idxr_pg.demo.run import demo_config  # noqa: E402
from idxr_pg.embedding import load_embedder  # noqa: E402
from idxr_pg.runtime.backfill import Backfill, BackfillOptions  # noqa: E402
from idxr_pg.runtime.versions import BuildOptions, VersionBuild, switch  # noqa: E402

KIND = "subscription"
OLD, NEW = "all-MiniLM-L6-v2", "all-mpnet-base-v2"
QUERY = "a fast fibre internet plan for a small office"
SEARCH = "SELECT count(*) FROM idxr.search(%s, NULL, 'subscription', 10)"


def config(model: str, batch_size: int) -> Any:
    data = demo_config(0)
    data["embedding"] = {"model": model}
    data["worker"] = {"batch_size": batch_size}
    return parse_config(data, "bench")


def latencies(
    url: str, vector: Any, count: int, stop: threading.Event | None = None
) -> list[float]:
    """Milliseconds per idxr.search call (``count`` calls, or until ``stop`` is set)."""
    out: list[float] = []
    with psycopg.connect(url, autocommit=True) as conn:
        register_vector(conn)
        while (stop is None and len(out) < count) or (stop is not None and not stop.is_set()):
            started = time.perf_counter()
            conn.execute(SEARCH, [vector]).fetchone()
            out.append(1000 * (time.perf_counter() - started))
            if stop is not None:
                time.sleep(0.05)
    return out


def p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entities", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--queries", type=int, default=200)
    add_database_url(parser)
    args = parser.parse_args()
    load_before = os.getloadavg()
    old = load_embedder(EmbeddingSettings(model=OLD))
    new = load_embedder(EmbeddingSettings(model=NEW))
    old_q, new_q = old.embed([QUERY])[0], new.embed([QUERY])[0]
    tag = uuid.uuid4().hex[:8]
    names = [f"idxr_bench_versions_{tag}", f"idxr_bench_oldway_{tag}"]
    urls = [with_dbname(args.database_url, n) for n in names]
    with psycopg.connect(args.database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(names[0])))
    try:
        migrations.upgrade(urls[0])
        schema = (
            Path(__file__).resolve().parents[1] / "idxr_pg" / "demo" / "schema.sql"
        ).read_text()
        with psycopg.connect(urls[0], autocommit=True) as conn:
            conn.execute(schema)
            with conn.transaction():
                demo_data.load(conn, demo_data.generate(args.entities, seed=11))
        cfg = config(OLD, args.batch_size)
        options = BackfillOptions(batch_size=args.batch_size, tty=False, progress_interval=3600)
        v1 = Backfill(urls[0], cfg, KIND, options, embedder=old).run()
        with psycopg.connect(args.database_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(names[1]), sql.Identifier(names[0])
                )
            )
        before = latencies(urls[0], old_q, args.queries)

        stop = threading.Event()
        during: list[float] = []
        reader = threading.Thread(
            target=lambda: during.extend(latencies(urls[0], old_q, 0, stop)), daemon=True
        )
        reader.start()
        started = time.perf_counter()
        built = VersionBuild(
            urls[0], cfg, KIND, NEW, BuildOptions(batch_size=args.batch_size, tty=False)
        ).run()
        build_s = time.perf_counter() - started
        stop.set()
        reader.join()
        started = time.perf_counter()
        switch(urls[0], cfg, KIND, built.version)
        switch_s = time.perf_counter() - started
        after = latencies(urls[0], new_q, args.queries)
        started = time.perf_counter()
        switch(urls[0], cfg, KIND, 1)
        rollback_s = time.perf_counter() - started

        # The old way on the copy: the kind's rows (and versions) go, then a backfill with
        # the new model.
        with psycopg.connect(urls[1], autocommit=True) as conn:
            conn.execute("DELETE FROM idxr.search_index WHERE entity_kind = %s", [KIND])
            conn.execute("DELETE FROM idxr.index_versions WHERE entity_kind = %s", [KIND])
            conn.execute("SELECT idxr.set_embedding_dimensions(768)")
        started = time.perf_counter()
        oldway = Backfill(urls[1], config(NEW, args.batch_size), KIND, options, embedder=new).run()
        oldway_s = time.perf_counter() - started
    finally:
        with psycopg.connect(args.database_url, autocommit=True) as admin:
            for name in names:
                admin.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
    load_after = os.getloadavg()
    print(
        f"\nmodel change {OLD} -> {NEW}: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, load average {load_before[0]:.2f} at the start, "
        f"{load_after[0]:.2f} at the end; {args.entities} entities, "
        f"{v1.counts.records_written} records, {built.texts} texts embedded by the build "
        f"({new.device}, {new.precision})"
    )
    print(f"version 1 backfill ({OLD}):       {v1.duration_seconds:6.1f} s")
    print(f"version 2 build ({NEW}):     {build_s:6.1f} s  (search of the kind kept answering)")
    print(f"old way: empty + backfill ({NEW}): {oldway_s:6.1f} s  (the kind unsearchable)")
    print(f"build / old way:                   {build_s / oldway_s:6.2f}x")
    print(f"activate (switch to 768 dims):     {1000 * switch_s:6.0f} ms")
    print(f"rollback (switch back):            {1000 * rollback_s:6.0f} ms")
    print(f"old-way job: {oldway.counts.texts_embedded} texts embedded")
    header = f"{'idxr.search, kind, k = 10':34} {'p50 ms':>7} {'p95 ms':>7} {'n':>5}"
    print(header)
    print("-" * len(header))
    for label, values in (
        ("version 1 (384), before", before),
        ("version 1 (384), during the build", during),
        ("version 2 (768), after the switch", after),
    ):
        print(f"{label:34} {p(values, 50):7.2f} {p(values, 95):7.2f} {len(values):5d}")


if __name__ == "__main__":
    main()
