"""Worker throughput on the demo application (subscriptions with customer, product and blocks).

One run, in a fresh database, the queue filled by the real capture triggers:

1. new entities, one in-process worker, `deterministic-test` embedder: the baseline;
2. the same entities re-queued while unchanged (minimal work: no embedding, no row write);
3. one text field changed on every entity (one text embedded and one row written each);
4. new entities with the real default model (a subset: --model-entities), against the
   deterministic embedder on the same subset in the same run;
5. one vs two `idxr-pg worker --once` processes on new entities (deterministic; process start
   included in the wall time, so the ratio understates the gain on long runs);
6. (--no-hnsw) the baseline again without the HNSW index, to show what its upkeep costs.

Each figure is entities per second over a whole drain (claim, load, validate, flatten, diff,
embed, write, queue deletion) and is printed with its ratio to the baseline.

    .venv/bin/python bench/worker.py [--entities 2000] [--model-entities 200] [--batch-size 64]
                                     [--database-url URL] [--keep]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import psycopg  # noqa: E402
import yaml  # noqa: E402
from benchdb import add_database_url, with_dbname  # noqa: E402
from psycopg import sql  # noqa: E402

from idxr_pg.capture import triggers as capture  # noqa: E402
from idxr_pg.config import parse_config  # noqa: E402
from idxr_pg.db import migrations  # noqa: E402
from idxr_pg.demo import data as demo_data  # noqa: E402
from idxr_pg.demo.run import demo_config  # noqa: E402
from idxr_pg.runtime.worker import Worker  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
IDXR = str(Path(sys.executable).with_name("idxr-pg"))
KIND = "subscription"


def config_dict(model: str, batch_size: int) -> dict[str, Any]:
    config = demo_config(0)
    config["embedding"] = {"model": model}
    config["worker"] = {"batch_size": batch_size, "poll_interval": 1.0}
    return config


def reset_index(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE idxr.search_index, idxr.embedding_cache, idxr.queue")


def enqueue(url: str, limit: int | None = None) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(
            "INSERT INTO idxr.queue (entity_kind, entity_id, operation)"
            " SELECT 'subscription', subscription_id::text, 'bench' FROM demo.subscriptions"
            " ORDER BY subscription_id LIMIT %s",
            [limit],
        ).rowcount


def drain(url: str, model: str, batch_size: int) -> tuple[float, dict[str, int]]:
    worker = Worker(url, parse_config(config_dict(model, batch_size), "bench"))
    started = time.perf_counter()
    totals = worker.drain()
    return time.perf_counter() - started, totals.as_dict()


def drain_processes(url: str, config_path: Path, processes: int) -> float:
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            [
                IDXR,
                "--database-url",
                url,
                "--config",
                str(config_path),
                "--log-level",
                "warning",
                "worker",
                "--once",
            ],  # fmt: skip
            stdout=subprocess.DEVNULL,
        )
        for _ in range(processes)
    ]
    codes = [proc.wait() for proc in procs]
    if any(codes):
        raise SystemExit(f"worker processes failed: exit codes {codes}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entities", type=int, default=2000)
    parser.add_argument("--model-entities", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=64)
    add_database_url(parser)
    parser.add_argument("--no-hnsw", action="store_true", help="also measure without HNSW")
    parser.add_argument("--keep", action="store_true", help="keep the bench database")
    args = parser.parse_args()

    name = f"idxr_bench_worker_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = with_dbname(args.database_url, name)
    rows: list[tuple[str, int, float, dict[str, int]]] = []
    try:
        migrations.upgrade(url)
        migrations.set_embedding_dimensions(url, 384)
        schema = (ROOT / "idxr_pg" / "demo" / "schema.sql").read_text()
        config = parse_config(config_dict("deterministic-test", args.batch_size), "bench")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(schema)
            capture.install_triggers(conn, config.entities)
            with conn.transaction():
                demo_data.load(conn, demo_data.generate(args.entities, seed=11))
        n = args.entities

        seconds, totals = drain(url, "deterministic-test", args.batch_size)
        rows.append(("new entities (baseline)", n, seconds, totals))
        enqueue(url)
        seconds, totals = drain(url, "deterministic-test", args.batch_size)
        rows.append(("unchanged entities re-queued", n, seconds, totals))
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("UPDATE demo.subscriptions SET description = description || ' (rev 2)'")
        seconds, totals = drain(url, "deterministic-test", args.batch_size)
        rows.append(("one text field changed", n, seconds, totals))

        m = min(args.model_entities, n)
        reset_index(url)
        enqueue(url, m)
        seconds, totals = drain(url, "deterministic-test", args.batch_size)
        rows.append((f"new, deterministic ({m})", m, seconds, totals))
        Worker(url, parse_config(config_dict("all-MiniLM-L6-v2", 8), "bench")).drain([])  # load
        reset_index(url)
        enqueue(url, m)
        seconds, totals = drain(url, "all-MiniLM-L6-v2", args.batch_size)
        rows.append((f"new, real model ({m})", m, seconds, totals))

        with tempfile.TemporaryDirectory() as tmp:
            config_path = Path(tmp) / "idxr.yaml"
            config_path.write_text(
                yaml.safe_dump(config_dict("deterministic-test", args.batch_size))
            )
            for processes in (1, 2):
                reset_index(url)
                enqueue(url)
                seconds = drain_processes(url, config_path, processes)
                rows.append((f"{processes} worker process(es), --once", n, seconds, {}))

        if args.no_hnsw:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("DROP INDEX idxr.search_index_embedding_hnsw_384")
            reset_index(url)
            enqueue(url)
            seconds, totals = drain(url, "deterministic-test", args.batch_size)
            rows.append(("new entities, no HNSW index", n, seconds, totals))
    finally:
        if not args.keep:
            with psycopg.connect(args.database_url, autocommit=True) as admin:
                admin.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )

    load = os.getloadavg()[0]
    print(
        f"\nworker throughput: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, load average {load:.1f}, batch size {args.batch_size}"
    )
    base = rows[0][1] / rows[0][2]
    header = f"{'scenario':38} {'entities':>8} {'seconds':>8} {'ent/s':>8} {'ratio':>6} {'embedded':>8} {'written':>8}"
    print(header)
    print("-" * len(header))
    for label, count, seconds, totals in rows:
        rate = count / seconds
        print(
            f"{label:38} {count:8d} {seconds:8.2f} {rate:8.0f} {rate / base:6.2f}"
            f" {totals.get('texts_embedded', ''):>8} {totals.get('records_written', ''):>8}"
        )


if __name__ == "__main__":
    main()
