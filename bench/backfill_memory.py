"""Backfill memory: peak RSS of an `idxr-pg backfill` process at several table sizes.

The backfill streams keys page by page and indexes them batch by batch, so its memory must not
grow with the table. This runs the real CLI in a subprocess (deterministic test embedder, so
the model's own memory is not part of the picture) over 200 (baseline), 2,000 and 20,000 rows
in a fresh database, reads each child's peak RSS from ``os.wait4`` (ru_maxrss), and prints the
figures with the ratio and difference of the two largest sizes.

    .venv/bin/python bench/backfill_memory.py [--sizes 200,2000,20000] [--batch-size 64]
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

import psycopg
import yaml
from benchdb import with_dbname
from psycopg import sql

from idxr_pg.db import migrations

IDXR = str(Path(sys.executable).with_name("idxr-pg"))
DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"

MODELS = """
from pydantic import BaseModel


class BenchDoc(BaseModel):
    id: int
    title: str
    body: str | None = None
    n: int
"""
DDL = """
DROP TABLE IF EXISTS public.bench_docs;
CREATE TABLE public.bench_docs (
    id integer PRIMARY KEY, title text NOT NULL, body text, n integer NOT NULL
);
"""
ROWS = """
INSERT INTO public.bench_docs (id, title, body, n)
SELECT g, 'title of document ' || g,
       CASE WHEN g %% 4 = 0 THEN NULL ELSE 'the body text of document number ' || g END,
       g %% 10
FROM generate_series(1, %(rows)s::integer) AS g
"""
RESET = "TRUNCATE idxr.search_index, idxr.embedding_cache, idxr.queue, idxr.leases"


def run_backfill(url: str, workdir: Path, batch_size: int) -> tuple[int, float, str]:
    """(peak RSS in KiB, seconds, stderr tail) of one backfill process."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    command = [
        IDXR, "--database-url", url, "--config", str(workdir / "idxr.yaml"),
        "backfill", "bench_doc", "--batch-size", str(batch_size), "--progress-interval", "30",
    ]  # fmt: skip
    started = time.monotonic()
    proc = subprocess.Popen(
        command, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    assert proc.stderr is not None
    stderr = proc.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"backfill failed ({proc.returncode}):\n{stderr}")
    return usage.ru_maxrss, seconds, stderr.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="200,2000,20000", help="row counts, smallest first")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--database-url",
        default=os.environ.get("IDXR_BENCH_DATABASE_URL", DEFAULT_SERVER),
        help="server to create the scratch database on",
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    name = f"idxr_bench_backfill_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = with_dbname(args.database_url, name)
    results: list[tuple[int, int, float]] = []
    try:
        migrations.upgrade(url)
        migrations.set_embedding_dimensions(url, 384)
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            (workdir / "bench_backfill_models.py").write_text(MODELS)
            entity = {
                "name": "bench_doc",
                "model": "bench_backfill_models:BenchDoc",
                "table": "public.bench_docs",
                "key": "id",
            }
            config = {"entities": [entity], "embedding": {"model": "deterministic-test"}}
            (workdir / "idxr.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
            print(
                f"backfill peak RSS, deterministic-test embedder, batch size {args.batch_size}; "
                f"Python {platform.python_version()}, {platform.machine()}"
            )
            print(f"{'rows':>8}  {'peak RSS':>10}  {'seconds':>8}  {'rows/s':>8}")
            for rows in sizes:
                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute(RESET)
                    conn.execute(DDL)
                    conn.execute(ROWS, {"rows": rows})
                    conn.execute("VACUUM ANALYZE public.bench_docs")
                peak_kib, seconds, _ = run_backfill(url, workdir, args.batch_size)
                with psycopg.connect(url) as conn:
                    indexed = conn.execute(
                        "SELECT count(DISTINCT entity_id) FROM idxr.search_index"
                    ).fetchone()[0]
                if indexed != rows:
                    raise SystemExit(f"expected {rows} indexed entities, found {indexed}")
                results.append((rows, peak_kib, seconds))
                print(
                    f"{rows:>8}  {peak_kib / 1024:>7.1f} MiB  {seconds:>8.1f}  "
                    f"{rows / seconds:>8.0f}"
                )
    finally:
        if not args.keep:
            with psycopg.connect(args.database_url, autocommit=True) as admin:
                admin.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
    (small, small_kib, _), (large, large_kib, _) = results[-2], results[-1]
    print(
        f"{large // small}x the rows ({small} -> {large}): peak RSS ratio "
        f"{large_kib / small_kib:.3f}, difference {(large_kib - small_kib) / 1024:+.1f} MiB"
    )


if __name__ == "__main__":
    main()
