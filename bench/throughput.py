"""End-to-end indexing throughput against the model's own speed (issue 14).

Initial backfill of N fresh entities of the demo application (default 2,000) with the real
default model (torch backend), once in bulk mode (the HNSW index dropped before the load and
built once after it, the build included in the wall time) and once with the index maintained
row by row (`--no-bulk`). Each is given in distinct texts embedded per second and as a ratio to
raw `SentenceTransformer.encode` of the same distinct texts (same model object, same
precision), measured in the same run: raw encode runs before and after the two backfills and
the ratio uses the mean of the two. Index and embedding cache are emptied before each
backfill, so both embed every text.

    .venv/bin/python bench/throughput.py [--entities 2000] [--batch-size 64] [--database-url URL]
"""

from __future__ import annotations

import argparse
import contextlib
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
import torch  # noqa: E402
from psycopg import sql  # noqa: E402

from idxr_pg.config import EmbeddingSettings, parse_config  # noqa: E402
from idxr_pg.db import migrations  # noqa: E402
from idxr_pg.demo import data as demo_data  # noqa: E402
from idxr_pg.demo.run import demo_config  # noqa: E402
from idxr_pg.embedding import load_embedder  # noqa: E402
from idxr_pg.runtime.backfill import Backfill, BackfillOptions  # noqa: E402

KIND = "subscription"
MODEL = "all-MiniLM-L6-v2"


def with_dbname(url: str, name: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(url)
    params["dbname"] = name
    return psycopg.conninfo.make_conninfo(**params)


def config_dict(batch_size: int) -> dict[str, Any]:
    config = demo_config(0)
    config["embedding"] = {"model": MODEL, "backend": "torch"}
    config["worker"] = {"batch_size": batch_size}
    return config


def reset_index(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE idxr.search_index, idxr.embedding_cache")


def backfill(
    url: str, config: Any, embedder: Any, batch_size: int, bulk: bool
) -> tuple[float, Any]:
    reset_index(url)
    runner = Backfill(
        url,
        config,
        KIND,
        BackfillOptions(batch_size=batch_size, bulk=bulk, progress_interval=3600, tty=False),
        embedder=embedder,
    )
    started = time.perf_counter()
    job = runner.run()
    seconds = time.perf_counter() - started
    with psycopg.connect(url) as conn:
        present = conn.execute(
            "SELECT to_regclass('idxr.search_index_embedding_hnsw') IS NOT NULL"
        ).fetchone()
    assert present and present[0], "the HNSW index is missing after the backfill"
    assert job.options["bulk"] is bulk
    return seconds, job


def raw_encode(embedder: Any, texts: list[str], batch_size: int) -> float:
    context = (
        torch.autocast(embedder.model.device.type, dtype=torch.bfloat16)
        if embedder.precision == "bfloat16"
        else contextlib.nullcontext()
    )
    started = time.perf_counter()
    with context:
        embedder.model.encode(
            texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False
        )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entities", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64, help="entities per batch")
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "IDXR_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    args = parser.parse_args()

    settings = EmbeddingSettings(model=MODEL, backend="torch")
    embedder = load_embedder(settings)
    embedder.embed(["warm-up: one text"] * 8)
    name = f"idxr_bench_throughput_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = with_dbname(args.database_url, name)
    try:
        migrations.upgrade(url)
        migrations.set_embedding_dimensions(url, 384)
        schema = (
            Path(__file__).resolve().parents[1] / "idxr_pg" / "demo" / "schema.sql"
        ).read_text()
        config = parse_config(config_dict(args.batch_size), "bench")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(schema)
            with conn.transaction():
                demo_data.load(conn, demo_data.generate(args.entities, seed=11))

        bulk_s, bulk_job = backfill(url, config, embedder, args.batch_size, bulk=True)
        with psycopg.connect(url) as conn:
            texts = [
                r[0]
                for r in conn.execute(
                    "SELECT DISTINCT path::text || ': ' || value FROM idxr.search_index "
                    "WHERE embedding IS NOT NULL"
                ).fetchall()
            ]
        raw_before = raw_encode(embedder, texts, settings.max_batch_size)
        row_s, row_job = backfill(url, config, embedder, args.batch_size, bulk=False)
        raw_after = raw_encode(embedder, texts, settings.max_batch_size)
    finally:
        with psycopg.connect(args.database_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    raw_rate = len(texts) / ((raw_before + raw_after) / 2)
    load = os.getloadavg()
    print(
        f"\ninitial backfill throughput: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, "
        f"{MODEL} ({embedder.device}, {embedder.precision}), {args.entities} entities, "
        f"{len(texts)} distinct texts, batch size {args.batch_size}"
    )
    print(
        f"raw encode: {raw_before:.1f}s before, {raw_after:.1f}s after, "
        f"{raw_rate:.1f} texts/s (mean)"
    )
    header = f"{'scenario':34} {'seconds':>8} {'embedded':>8} {'texts/s':>8} {'x raw':>6}"
    print(header)
    print("-" * len(header))
    for label, seconds, job in (
        ("bulk mode (index built at the end)", bulk_s, bulk_job),
        ("index kept row by row (--no-bulk)", row_s, row_job),
    ):
        embedded = job.counts.texts_embedded
        rate = embedded / seconds
        print(f"{label:34} {seconds:8.1f} {embedded:8d} {rate:8.1f} {rate / raw_rate:6.2f}")


if __name__ == "__main__":
    main()
