"""Reindex after an added field vs the old way, `backfill --force` (issue 15).

N entities of the demo application (default 400) are backfilled with the real default model;
then the model gains one field (bench/reindex_models.py). The database is copied, so both
runs start from the same index and embedding cache: `idxr-pg plan` and `idxr-pg reindex` run
on one copy, `backfill --force` with the new model on the other. Printed: each run's wall time,
records written and texts embedded, the ratio force/reindex, and the plan's estimate against
the reindex's actual time. Hold the bench lock:

    flock /tmp/idxr-bench.lock .venv/bin/python bench/reindex.py [--entities 400]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import uuid
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("IDXR_ALLOW_SUPERUSER", "1")  # the bench connects as postgres

import psycopg  # noqa: E402
from benchdb import add_database_url, with_dbname  # noqa: E402
from psycopg import sql  # noqa: E402

from idxr_pg.config import EmbeddingSettings, parse_config  # noqa: E402
from idxr_pg.db import migrations  # noqa: E402
from idxr_pg.demo import data as demo_data  # noqa: E402
from idxr_pg.demo.run import demo_config  # noqa: E402
from idxr_pg.embedding import load_embedder  # noqa: E402
from idxr_pg.runtime.backfill import Backfill, BackfillOptions  # noqa: E402
from idxr_pg.runtime.plan import plan_reindex  # noqa: E402

KIND = "subscription"
MODEL = "all-MiniLM-L6-v2"


def config(batch_size: int, model: str | None = None) -> Any:
    data = demo_config(0)
    if model:
        data["entities"][0]["model"] = model
    data["embedding"] = {"model": MODEL}
    data["worker"] = {"batch_size": batch_size}
    return parse_config(data, "bench")


def run(url: str, cfg: Any, embedder: Any, batch_size: int, **options: Any) -> tuple[float, Any]:
    runner = Backfill(
        url,
        cfg,
        KIND,
        BackfillOptions(batch_size=batch_size, progress_interval=3600, tty=False, **options),
        embedder=embedder,
    )
    started = time.perf_counter()
    job = runner.run()
    return time.perf_counter() - started, job


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entities", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=64)
    add_database_url(parser)
    args = parser.parse_args()
    embedder = load_embedder(EmbeddingSettings(model=MODEL))
    embedder.embed(["warm-up: one text"] * 8)
    tag = uuid.uuid4().hex[:8]
    names = [f"idxr_bench_reindex_{tag}", f"idxr_bench_force_{tag}"]
    base, added = config(args.batch_size), config(args.batch_size, "reindex_models:Subscription")
    with psycopg.connect(args.database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(names[0])))
    urls = [with_dbname(args.database_url, n) for n in names]
    try:
        migrations.upgrade(urls[0])
        migrations.set_embedding_dimensions(urls[0], 384)
        schema = (
            Path(__file__).resolve().parents[1] / "idxr_pg" / "demo" / "schema.sql"
        ).read_text()
        with psycopg.connect(urls[0], autocommit=True) as conn:
            conn.execute(schema)
            with conn.transaction():
                demo_data.load(conn, demo_data.generate(args.entities, seed=11))
        _, first = run(urls[0], base, embedder, args.batch_size)
        with psycopg.connect(args.database_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(names[1]), sql.Identifier(names[0])
                )
            )
        plan = plan_reindex(urls[0], added, KIND, embedder=embedder)
        reindex_s, reindex_job = run(urls[0], added, embedder, args.batch_size, reindex=True)
        force_s, force_job = run(urls[1], added, embedder, args.batch_size, force=True)
    finally:
        with psycopg.connect(args.database_url, autocommit=True) as admin:
            for name in names:
                admin.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
    assert plan.records_to_write == reindex_job.counts.records_written
    assert plan.texts_to_embed == reindex_job.counts.texts_embedded
    load = os.getloadavg()
    print(
        f"\nreindex after an added field: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, "
        f"{MODEL} ({embedder.device}, {embedder.precision}), {args.entities} entities, "
        f"{first.counts.records_written} records indexed before"
    )
    header = f"{'run':28} {'seconds':>8} {'written':>8} {'embedded':>8}"
    print(header)
    print("-" * len(header))
    for label, seconds, job in (
        ("reindex (diff)", reindex_s, reindex_job),
        ("backfill --force (old way)", force_s, force_job),
    ):
        c = job.counts
        print(f"{label:28} {seconds:8.1f} {c.records_written:8d} {c.texts_embedded:8d}")
    print(f"backfill --force / reindex: {force_s / reindex_s:.2f}x the time")
    print(
        f"plan: estimate {plan.eta_seconds:.1f}s (scan {plan.scan_seconds:.1f}s, "
        f"{plan.texts_to_embed} texts at {plan.texts_per_second or 0:.1f}/s: {plan.rate_source}); "
        f"reindex took {reindex_s:.1f}s: estimate/actual {plan.eta_seconds / reindex_s:.2f}"
    )


if __name__ == "__main__":
    main()
