"""Where the wall time of a backfill goes, stage by stage (issue 14).

Backfills N fresh demo entities into an empty kind (bulk mode unless ``--no-bulk``) with the
real default model or the deterministic test embedder, and times each stage of every batch by
wrapping the pipeline's own functions: lease, load documents, stored hashes (the diff's query),
validate + flatten + diff, cache look-ups, model inference, cache writes, index row writes,
stale/gone deletes, finalize (checkpoint) + lease release + stamp, commit, and the rest.
Each stage is printed as seconds, share of the wall time and milliseconds per batch. With the
overlap (the default) the helper thread's stages (lease … model inference) run beside the
writes, so the shares add up to more than 100%; "wait for the batch being prepared" is the
time the writing thread idles.

``--compare`` runs the same backfill ``--rounds`` times each as *before* and *after* the
non-inference work of issue 14's second pass (the order alternating by round, index and cache
emptied before each run) and prints both columns in ms per batch, from each one's fastest run:
*before* tokenizes every text twice (the service counts tokens, the model tokenizes again),
writes the cache once per model batch, commits the backfill's and the cache's writes
synchronously, and builds the index with a fixed 512MB; *after* is the code as it is.

    .venv/bin/python bench/backfill_profile.py [--entities 2000] [--embedder model|deterministic]
        [--compare --rounds 2] [--workload demo|fresh]
"""

from __future__ import annotations

import argparse
import os
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("IDXR_ALLOW_SUPERUSER", "1")  # the bench connects as postgres

import psycopg  # noqa: E402
from benchdb import add_database_url, with_dbname  # noqa: E402
from psycopg import sql  # noqa: E402
from workloads import WORKLOADS  # noqa: E402
from workloads import generate as generate_workload  # noqa: E402

from idxr_pg.config import EmbeddingSettings, parse_config  # noqa: E402
from idxr_pg.db import leases, migrations, search_index, source  # noqa: E402
from idxr_pg.demo import data as demo_data  # noqa: E402
from idxr_pg.demo.run import demo_config  # noqa: E402
from idxr_pg.embedding import (  # noqa: E402
    EmbeddingCache,
    EmbeddingService,  # noqa: E402
    load_embedder,
)
from idxr_pg.embedding import cache as cache_module  # noqa: E402
from idxr_pg.embedding.deterministic import DeterministicEmbedder  # noqa: E402
from idxr_pg.indexing import pipeline as pipeline_module  # noqa: E402
from idxr_pg.runtime import backfill as backfill_module  # noqa: E402

KIND = "subscription"
MODEL = "all-MiniLM-L6-v2"

SECONDS: dict[str, float] = defaultdict(float)
_LOCK = threading.Lock()
_LOCAL = threading.local()  # per thread, the stages open: a stage's time is not its parent's


@contextmanager
def stage(name: str) -> Iterator[None]:
    active: list[str] = _LOCAL.__dict__.setdefault("active", [])
    started = time.perf_counter()
    active.append(name)
    try:
        yield
    finally:
        active.pop()
        spent = time.perf_counter() - started
        with _LOCK:
            SECONDS[name] += spent
            if active:
                SECONDS[active[-1]] -= spent


def timed(owner: Any, attribute: str, name: str) -> None:
    original: Callable[..., Any] = getattr(owner, attribute)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with stage(name):
            return original(*args, **kwargs)

    setattr(owner, attribute, wrapper)


def instrument(embedder: Any) -> None:
    timed(backfill_module.leases, "acquire", "lease")
    timed(pipeline_module.source, "load_documents", "load documents")
    timed(search_index, "stored_state", "stored hashes (diff query)")
    timed(pipeline_module.Pipeline, "_prepare", "validate + flatten + diff")
    timed(pipeline_module.Pipeline, "_embed", "embed (service: dedupe, tokens)")
    timed(EmbeddingCache, "get_many", "cache look-up")
    timed(EmbeddingCache, "put_many", "cache writes")
    timed(embedder, "embed", "model inference")
    if hasattr(embedder, "embed_token_ids"):
        timed(embedder, "embed_token_ids", "model inference")
    timed(pipeline_module.Pipeline, "_write", "write tx (lock leases, commit)")
    timed(backfill_module.Backfill, "_write_next", "wait for the batch being prepared")
    for name in ("upsert_records", "write_records"):
        if hasattr(search_index, name):
            timed(search_index, name, "index row writes")
    timed(search_index, "delete_paths", "stale deletes")
    timed(search_index, "delete_entities", "gone deletes")
    timed(pipeline_module.Pipeline, "_finish", "finalize + release + stamp")
    timed(leases, "release", "finalize + release + stamp")
    timed(backfill_module.Backfill, "_build_index", "HNSW index build")
    timed(backfill_module, "assemble", "assemble (kinds, cache)")
    timed(backfill_module.Backfill, "_sweep", "orphan sweep")
    _ = source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entities", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64, help="entities per batch")
    parser.add_argument("--embedder", choices=("model", "deterministic"), default="model")
    parser.add_argument("--no-bulk", action="store_true", help="keep the HNSW index row by row")
    parser.add_argument(
        "--no-overlap", action="store_true", help="prepare each batch only after the last write"
    )
    parser.add_argument("--workload", choices=WORKLOADS, default="demo", help="see workloads.py")
    parser.add_argument("--compare", action="store_true", help="before and after, same run")
    parser.add_argument("--rounds", type=int, default=2, help="with --compare: runs of each")
    add_database_url(parser)
    args = parser.parse_args()

    if args.embedder == "model":
        embedder: Any = load_embedder(EmbeddingSettings(model=MODEL, backend="torch"))
        embedder.embed(["warm-up: one text"] * 8)
        model_config = {"model": MODEL, "backend": "torch"}
    else:
        embedder = DeterministicEmbedder()
        model_config = {"model": "deterministic-test"}
    name = f"idxr_bench_profile_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = with_dbname(args.database_url, name)
    try:
        migrations.upgrade(url)
        migrations.set_embedding_dimensions(url, 384)
        schema = (
            Path(__file__).resolve().parents[1] / "idxr_pg" / "demo" / "schema.sql"
        ).read_text()
        config_data = demo_config(0)
        config_data["embedding"] = model_config
        config = parse_config(config_data, "bench")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(schema)
            with conn.transaction():
                demo_data.load(conn, generate_workload(args.workload, args.entities, seed=11))
        instrument(embedder)
        variants = ["before", "after"] if args.compare else ["as is"]
        best: dict[str, tuple[float, dict[str, float], Any]] = {}
        for round_ in range(args.rounds if args.compare else 1):
            order = variants if round_ % 2 == 0 else variants[::-1]
            for variant in order:
                empty_index(url)
                wall, seconds, job = run_once(url, config, embedder, args, variant)
                print(f"round {round_ + 1} {variant}: wall {wall:.2f}s", flush=True)
                if variant not in best or wall < best[variant][0]:
                    best[variant] = (wall, seconds, job)
    finally:
        with psycopg.connect(args.database_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
    report(best, args)


class TokenizingTwice:
    """The embedder as before issue 14's second pass: it does not offer `embed_token_ids`,
    so the service counts tokens and the model tokenizes every text again."""

    embeds_token_ids = False

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        if name in ("token_ids", "embed_token_ids"):
            raise AttributeError(name)
        return getattr(self._inner, name)

    def embed(self, texts: Any) -> Any:
        return self._inner.embed(texts)


def _synchronous(conn: Any) -> None:
    """Stands in for `commit_asynchronously` in the *before* runs: commits wait for the WAL."""


def _embed_batch_and_store(original: Any) -> Any:
    """The *before* runs' cache writes: one per model batch, as each batch succeeds."""

    def embed_batch(self: EmbeddingService, batch: Any, distinct: Any, requests: Any) -> Any:
        fresh = original(self, batch, distinct, requests)
        if self.cache is not None:
            self.cache.put_many(self.model_key, fresh)
        return fresh

    return embed_batch


def empty_index(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE idxr.search_index, idxr.embedding_cache")
        conn.execute("VACUUM idxr.search_index")


def run_once(
    url: str, config: Any, embedder: Any, args: argparse.Namespace, variant: str
) -> tuple[float, dict[str, float], Any]:
    before = variant == "before"
    asynchronous = (backfill_module.commit_asynchronously, cache_module.commit_asynchronously)
    per_call = (EmbeddingService._embed_batch, EmbeddingService._keep)
    if before:
        backfill_module.commit_asynchronously = _synchronous  # type: ignore[assignment]
        cache_module.commit_asynchronously = _synchronous  # type: ignore[assignment]
        EmbeddingService._embed_batch = _embed_batch_and_store(per_call[0])  # type: ignore[method-assign]
        EmbeddingService._keep = lambda self, fresh: None  # type: ignore[method-assign]
    try:
        runner = backfill_module.Backfill(
            url,
            config,
            KIND,
            backfill_module.BackfillOptions(
                batch_size=args.batch_size,
                bulk=False if args.no_bulk else None,
                overlap=not args.no_overlap,
                progress_interval=3600,
                tty=False,
                **({"maintenance_work_mem": "512MB"} if before else {}),
            ),
            embedder=TokenizingTwice(embedder) if before else embedder,
        )
        SECONDS.clear()
        started = time.perf_counter()
        job = runner.run()
        wall = time.perf_counter() - started
    finally:
        backfill_module.commit_asynchronously, cache_module.commit_asynchronously = asynchronous
        EmbeddingService._embed_batch, EmbeddingService._keep = per_call  # type: ignore[method-assign]
    return wall, dict(SECONDS), job


def report(best: dict[str, tuple[float, dict[str, float], Any]], args: argparse.Namespace) -> None:
    batches = -(-args.entities // args.batch_size)
    load = os.getloadavg()
    _, _, job = next(iter(best.values()))
    print(
        f"\nbackfill profile: {args.entities} entities, {batches} batches of {args.batch_size}, "
        f"{job.counts.records_written} rows, {job.counts.texts_embedded} texts embedded, "
        f"embedder {args.embedder}, bulk {job.options['bulk']}, overlap {not args.no_overlap}, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    if len(best) == 1:
        wall, seconds, job = best["as is"]
        print(f"wall {wall:.2f}s, {job.counts.records_written / wall:.0f} rows/s")
        header = f"{'stage':34} {'seconds':>8} {'share':>6} {'ms/batch':>9}"
        print(header)
        print("-" * len(header))
        for stage_name, spent in sorted(seconds.items(), key=lambda kv: -kv[1]):
            print(f"{stage_name:34} {spent:8.2f} {spent / wall:6.1%} {1000 * spent / batches:9.1f}")
        rest = wall - sum(seconds.values())
        print(f"{'rest (job rows, keys, progress)':34} {rest:8.2f} {rest / wall:6.1%}")
        return
    (wall_b, before, _), (wall_a, after, _) = best["before"], best["after"]
    header = f"{'stage (ms per batch)':34} {'before':>8} {'after':>8} {'after-before':>12}"
    print(header)
    print("-" * len(header))
    for stage_name in sorted(set(before) | set(after), key=lambda k: -before.get(k, 0.0)):
        b = 1000 * before.get(stage_name, 0.0) / batches
        a = 1000 * after.get(stage_name, 0.0) / batches
        print(f"{stage_name:34} {b:8.1f} {a:8.1f} {a - b:12.1f}")
    print(f"{'wall (s)':34} {wall_b:8.2f} {wall_a:8.2f}   after/before {wall_a / wall_b:.3f}")


if __name__ == "__main__":
    main()
