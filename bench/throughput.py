"""End-to-end indexing throughput against the model's own speed (issue 14), in four parts.

1. **Initial backfill** of N fresh demo entities (default 1,000; the issue's goal is
   ``--entities 20000``) into an empty kind with the real default model (torch backend), in
   bulk mode (HNSW index dropped before, built once after, the build in the wall time):
   *before* (one INSERT per row, each batch prepared only after the last one is written)
   and *after* (binary COPY upserts, batch N+1 prepared and embedded while N is written).
   Each is given in distinct texts embedded per second and as a ratio to raw
   `SentenceTransformer.encode` of the same distinct texts (same model object, same
   precision), measured in the same run after each backfill. ``--rounds`` rounds (default
   2, the order of before and after alternating); every figure is its fastest round.
2. **Steady state**: the same backfill into a kind while the HNSW index already holds
   ``--prefill`` vectors of another kind (deterministic unit vectors written by COPY, index
   built before the clock starts), so every row is inserted into a big live index, as a
   worker's new entities are; before and after, as a ratio to raw encode.
3. **Write path alone** (deterministic embedder, COPY + overlap, bulk): records/s, ms per
   batch and peak RSS at growing sizes (``--write-sizes``).
4. **Worker** (``--parts worker``): steady state through the worker itself: the index holds
   ``--prefill`` vectors, N new entities are queued and `Worker.drain` indexes them, with
   ``worker.overlap`` off (before) and on (after: batch N+1 claimed and prepared by a helper
   thread while N is written), alternating per round, as a ratio to raw encode.

``--workload`` picks the entities (`workloads.py`): ``demo`` (the demo's data: ~17 vector rows
per distinct text at 10,000 entities) or ``fresh`` (every entity's texts its own: rows ~ texts).

Index and embedding cache are emptied before each backfill, so each embeds every text.

    .venv/bin/python bench/throughput.py [--entities 1000] [--prefill 20000]
        [--write-sizes 1000,5000] [--batch-size N] [--rounds 2] [--parts initial,steady,write]
        [--workload demo|fresh]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import resource
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("IDXR_ALLOW_SUPERUSER", "1")  # the bench connects as postgres

import psycopg  # noqa: E402
import torch  # noqa: E402
from benchdb import add_database_url, with_dbname  # noqa: E402
from halfvec import deterministic_vectors  # noqa: E402
from pgvector.psycopg import register_vector  # noqa: E402
from psycopg import sql  # noqa: E402
from workloads import WORKLOADS  # noqa: E402
from workloads import generate as generate_workload  # noqa: E402

from idxr_pg.config import (  # noqa: E402
    DEFAULT_BACKFILL_BATCH_SIZE,
    EmbeddingSettings,
    WorkerSettings,
    parse_config,
)
from idxr_pg.db import migrations, queue, staging  # noqa: E402
from idxr_pg.db.hnsw_memory import graph_megabytes  # noqa: E402
from idxr_pg.demo import data as demo_data  # noqa: E402
from idxr_pg.demo.run import demo_config  # noqa: E402
from idxr_pg.embedding import load_embedder  # noqa: E402
from idxr_pg.embedding.deterministic import DeterministicEmbedder  # noqa: E402
from idxr_pg.records.counts import Counts  # noqa: E402
from idxr_pg.runtime.backfill import Backfill, BackfillOptions  # noqa: E402
from idxr_pg.runtime.worker import Worker  # noqa: E402

KIND = "subscription"
MODEL = "all-MiniLM-L6-v2"


def config_dict(batch_size: int, model: str = MODEL) -> dict[str, Any]:
    config = demo_config(0)
    config["embedding"] = (
        {"model": MODEL, "backend": "torch"} if model == MODEL else {"model": model}
    )
    config["worker"] = {"batch_size": batch_size}
    return config


@contextlib.contextmanager
def write_path(new: bool) -> Iterator[None]:
    """``new``: COPY upserts (the default); else one INSERT per row, as before issue 14's
    COPY writes (the fallback for sessions without TEMPORARY)."""
    original = staging.can_stage
    if not new:
        staging.can_stage = lambda conn: False  # type: ignore[assignment]
    try:
        yield
    finally:
        staging.can_stage = original  # type: ignore[assignment]


def reset_kind(url: str) -> None:
    """Empty the subscription rows and the cache (a prefilled kind stays)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM idxr.search_index WHERE entity_kind = %s", [KIND])
        conn.execute("TRUNCATE idxr.embedding_cache")
        conn.execute("VACUUM idxr.search_index")


def backfill(
    url: str, config: Any, embedder: Any, batch_size: int, *, bulk: bool, new: bool
) -> tuple[float, Any]:
    reset_kind(url)
    runner = Backfill(
        url,
        config,
        KIND,
        BackfillOptions(
            batch_size=batch_size, bulk=bulk, overlap=new, progress_interval=3600, tty=False
        ),
        embedder=embedder,
    )
    started = time.perf_counter()
    with write_path(new):
        job = runner.run()
    seconds = time.perf_counter() - started
    with psycopg.connect(url) as conn:
        present = conn.execute(
            "SELECT to_regclass('idxr.search_index_embedding_hnsw_384') IS NOT NULL"
        ).fetchone()
    assert present and present[0], "the HNSW index is missing after the backfill"
    assert job.options["bulk"] is bulk
    return seconds, job


def worker_drain(
    url: str, config: Any, embedder: Any, batch_size: int, *, overlap: bool
) -> tuple[float, Counts]:
    """Queue every subscription (as an app's inserts would) and time `Worker.drain` over
    them, ``worker.overlap`` as given (start-up included: connect, register, no model load)."""
    reset_kind(url)
    with psycopg.connect(url, autocommit=True) as conn:
        ids = [str(r[0]) for r in conn.execute("SELECT subscription_id FROM demo.subscriptions")]
        with conn.transaction():
            queue.enqueue(conn, KIND, ids, source_table="demo.subscriptions")
    settings = config.worker.model_copy(update={"batch_size": batch_size, "overlap": overlap})
    worker = Worker(url, config, kinds=[KIND], settings=settings, embedder=embedder)
    started = time.perf_counter()
    totals = worker.drain([KIND])
    seconds = time.perf_counter() - started
    assert totals.entities == len(ids) and totals.failed == 0, totals
    return seconds, totals


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


def load_demo(url: str, entities: int, workload: str = "demo") -> None:
    schema = (Path(__file__).resolve().parents[1] / "idxr_pg" / "demo" / "schema.sql").read_text()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS demo CASCADE")
        conn.execute(schema)
        with conn.transaction():
            demo_data.load(conn, generate_workload(workload, entities, seed=11))


def vector_rows(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(embedding) FROM idxr.search_index WHERE entity_kind = %s", [KIND]
        ).fetchone()
    return row[0] if row else 0


def distinct_texts(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [
            r[0]
            for r in conn.execute(
                "SELECT DISTINCT path::text || ': ' || value FROM idxr.search_index "
                "WHERE entity_kind = %s AND embedding IS NOT NULL",
                [KIND],
            ).fetchall()
        ]


def prefill(url: str, vectors: int) -> float:
    """``vectors`` rows of kind 'filler' by binary COPY, then the HNSW index built over them;
    returns the build's seconds. The vectors are unit vectors around 2,000 random centres
    (`halfvec.deterministic_vectors`), so that near neighbours exist as among real
    embeddings (independent random vectors, which the first runs used, are HNSW's worst
    case: every insert searches far)."""
    block = deterministic_vectors(vectors, 384, 2_000)
    with psycopg.connect(url, autocommit=True) as conn:
        register_vector(conn)
        conn.execute("DROP INDEX IF EXISTS idxr.search_index_embedding_hnsw_384")
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("CREATE TEMPORARY TABLE filler (id int, embedding vector(384))")
            with cur.copy("COPY filler (id, embedding) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["int4", "vector"])
                for i, vector in enumerate(block):
                    copy.write_row((i, vector))
            cur.execute(
                "INSERT INTO idxr.search_index (entity_kind, entity_id, path, value, value_type, "
                "content_hash, embedding) SELECT 'filler', id::text, 'filler.text', 'text ' || id, "
                "'string', lpad(to_hex(id), 64, '0'), embedding FROM filler"
            )
        started = time.perf_counter()
        conn.execute(f"SET maintenance_work_mem = '{graph_megabytes(vectors, 384)}MB'")
        conn.execute("SELECT idxr.set_embedding_dimensions(384)")
        return time.perf_counter() - started


def interleaved(
    run: Callable[[bool], tuple[float, Counts]],
    labels: dict[bool, str],
    url: str,
    embedder: Any,
    *,
    settings: Any,
    rounds: int,
    scenarios: tuple[bool, ...] = (False, True),
) -> tuple[float, list[tuple[str, float, Counts]], int]:
    """``rounds`` rounds of: before, raw encode, after, raw encode (the order of before and
    after alternates per round); ``run(after)`` indexes and returns (seconds, counts). Each
    scenario keeps its fastest round (other work on a shared machine only ever slows a run
    down). Returns (raw texts/s, [(label, seconds, counts)], texts)."""
    best: dict[str, tuple[float, Counts]] = {}
    raw: list[float] = []
    texts: list[str] = []
    rows = 0
    for round_ in range(rounds):
        order = scenarios if round_ % 2 == 0 else scenarios[::-1]
        for new in order:
            BUILD_SECONDS.clear()
            seconds, counts = run(new)
            label = labels[new]
            build = f" (HNSW build {sum(BUILD_SECONDS):.1f} s)" if BUILD_SECONDS else ""
            print(f"  round {round_ + 1}: {label}: {seconds:.1f} s{build}", flush=True)
            if label not in best or seconds < best[label][0]:
                best[label] = (seconds, counts)
            if not texts:
                texts, rows = distinct_texts(url), vector_rows(url)
            raw.append(raw_encode(embedder, texts, settings.max_batch_size))
            print(f"  raw encode of {len(texts)} texts: {raw[-1]:.1f} s", flush=True)
    raw_rate = len(texts) / min(raw)
    print(
        f"raw encode of {len(texts)} texts ({rows} vector rows, {rows / len(texts):.2f} per "
        f"text): {', '.join(f'{r:.1f}' for r in raw)} s; fastest {raw_rate:.1f} texts/s"
    )
    out = [(label, *best[label]) for label in sorted(best, reverse=True)]
    return raw_rate, out, len(texts)


BACKFILL_LABELS = {True: "after: COPY + overlap", False: "before: INSERT per row, no overlap"}
WORKER_LABELS = {True: "after: worker.overlap on", False: "before: worker.overlap off"}


def print_ratios(raw_rate: float, rows: list[tuple[str, float, Counts]]) -> None:
    header = f"{'scenario':36} {'seconds':>8} {'embedded':>8} {'texts/s':>8} {'x raw':>6}"
    print(header)
    print("-" * len(header))
    for label, seconds, counts in rows:
        embedded = counts.texts_embedded
        rate = embedded / seconds
        print(f"{label:36} {seconds:8.1f} {embedded:8d} {rate:8.1f} {rate / raw_rate:6.2f}")
    if len(rows) == 2:
        before = next(seconds for label, seconds, _ in rows if label.startswith("before"))
        after = next(seconds for label, seconds, _ in rows if label.startswith("after"))
        print(f"speed-up, before seconds / after seconds: {before / after:.2f}x")
    print(f"load average now {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)


BUILD_SECONDS: list[float] = []


def _timed_build(original: Any) -> Any:
    def build(self: Backfill, control: Any) -> None:
        started = time.perf_counter()
        original(self, control)
        BUILD_SECONDS.append(time.perf_counter() - started)

    return build


BATCH_MARKS: list[tuple[float, int, float]] = []  # per batch written: time, records, RSS MiB
WINDOW = 20  # batches per ms/batch figure along a run


def _current_rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _marked_write(original: Any) -> Any:
    def write(self: Backfill, work: Any, run: Any, prepared: Any, *, checkpoint: Any) -> Any:
        result = original(self, work, run, prepared, checkpoint=checkpoint)
        BATCH_MARKS.append(
            (time.perf_counter(), run.state.counts.records_written, _current_rss_mib())
        )
        return result

    return write


def print_along_the_run(records: int) -> None:
    """ms per batch (the mean of `WINDOW` batches) and the process's RSS as records grow."""
    targets = [t for t in (10_000, 50_000, 100_000, 250_000, 500_000, 750_000) if t < records]
    print(f"  {'records':>9} {'ms/batch':>9} {'RSS MiB':>8}")
    for target in [*targets, records]:
        end = next(i for i, mark in enumerate(BATCH_MARKS) if mark[1] >= target)
        start = max(0, end - WINDOW)
        if end == start:
            continue
        spent = BATCH_MARKS[end][0] - BATCH_MARKS[start][0]
        ms = 1000 * spent / (end - start)
        print(f"  {BATCH_MARKS[end][1]:9d} {ms:9.1f} {BATCH_MARKS[end][2]:8.1f}")


def write_path_alone(url: str, sizes: list[int], batch_size: int) -> None:
    """Deterministic embedder, COPY + overlap, bulk: records/s (index build included),
    ms/batch (build excluded), the build's seconds, peak RSS; then ms/batch and RSS along
    each run."""
    Backfill._write_batch = _marked_write(Backfill._write_batch)  # type: ignore[method-assign]
    config = parse_config(config_dict(batch_size, "deterministic-test"), "bench")
    embedder = DeterministicEmbedder()
    print(
        f"\nwrite path alone (deterministic embedder, COPY + overlap, bulk, batch size "
        f"{batch_size})"
    )
    header = (
        f"{'entities':>8} {'records':>8} {'seconds':>8} {'records/s':>9} {'ms/batch':>8} "
        f"{'build s':>8} {'vectors':>8} {'RSS MiB':>8}"
    )
    print(header)
    print("-" * len(header))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE idxr.search_index, idxr.embedding_cache")
    for size in sizes:
        load_demo(url, size)
        BUILD_SECONDS.clear()
        BATCH_MARKS.clear()
        seconds, job = backfill(url, config, embedder, batch_size, bulk=True, new=True)
        build = sum(BUILD_SECONDS)
        records = job.counts.records_written
        batches = -(-size // batch_size)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        with psycopg.connect(url) as conn:
            row = conn.execute(
                "SELECT count(embedding) FROM idxr.search_index WHERE entity_kind = %s", [KIND]
            ).fetchone()
        vectors = row[0] if row else 0
        print(
            f"{size:8d} {records:8d} {seconds:8.1f} {records / seconds:9.0f} "
            f"{1000 * (seconds - build) / batches:8.1f} {build:8.1f} {vectors:8d} {rss:8.1f}",
            flush=True,
        )
        print_along_the_run(records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entities", type=int, default=1000)
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help=f"entities per batch [backfills: backfill.batch_size, {DEFAULT_BACKFILL_BATCH_SIZE}; "
        f"the worker: worker.batch_size, {WorkerSettings().batch_size}]",
    )
    parser.add_argument("--prefill", type=int, default=20_000, help="vectors before steady state")
    parser.add_argument("--write-sizes", default="1000,5000", help="entities, comma-separated")
    parser.add_argument("--parts", default="initial,steady,write", help="and/or worker")
    parser.add_argument("--workload", choices=WORKLOADS, default="demo", help="see workloads.py")
    parser.add_argument("--rounds", type=int, default=2, help="rounds; each figure is the fastest")
    parser.add_argument(
        "--after-only",
        action="store_true",
        help="initial and steady state: the current path only (no INSERT-per-row 'before')",
    )
    add_database_url(parser)
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    backfill_batch = args.batch_size or DEFAULT_BACKFILL_BATCH_SIZE
    worker_batch = args.batch_size or WorkerSettings().batch_size
    Backfill._build_index = _timed_build(Backfill._build_index)  # type: ignore[method-assign]

    settings = EmbeddingSettings(model=MODEL, backend="torch")
    embedder = load_embedder(settings)
    embedder.embed(["warm-up: one text"] * 8)
    name = f"idxr_bench_throughput_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = with_dbname(args.database_url, name)
    load = os.getloadavg()
    print(
        f"throughput: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, {MODEL} "
        f"({embedder.device}, {embedder.precision}), batch size {backfill_batch} "
        f"(backfills), {worker_batch} (the worker)"
    )
    try:
        migrations.upgrade(url)
        migrations.set_embedding_dimensions(url, 384)
        config = parse_config(config_dict(worker_batch), "bench")
        if parts & {"initial", "steady", "worker"}:
            load_demo(url, args.entities, args.workload)
        scenarios = (True,) if args.after_only else (False, True)

        def backfills(bulk: bool) -> Callable[[bool], tuple[float, Counts]]:
            def run(new: bool) -> tuple[float, Counts]:
                seconds, job = backfill(url, config, embedder, backfill_batch, bulk=bulk, new=new)
                return seconds, job.counts

            return run

        def measure(run: Callable[[bool], tuple[float, Counts]], labels: dict[bool, str]) -> None:
            """The scenarios of ``run`` against raw encode, rounds interleaved; ratios printed."""
            raw_rate, rows, _ = interleaved(
                run,
                labels,
                url,
                embedder,
                settings=settings,
                rounds=args.rounds,
                scenarios=scenarios,
            )
            print_ratios(raw_rate, rows)

        if "initial" in parts:
            print(f"\ninitial backfill, bulk mode, {args.entities} {args.workload} entities")
            measure(backfills(True), BACKFILL_LABELS)
        if parts & {"steady", "worker"}:
            build = prefill(url, args.prefill)
            print(
                f"\nthe index holds {args.prefill} vectors of another kind (build before the "
                f"clock: {build:.1f}s)"
            )
        if "steady" in parts:
            print(f"\nsteady state, backfill: {args.entities} new {args.workload} entities")
            measure(backfills(False), BACKFILL_LABELS)
        if "worker" in parts:
            print(f"\nsteady state, worker: {args.entities} new {args.workload} entities queued")
            measure(
                lambda overlap: worker_drain(url, config, embedder, worker_batch, overlap=overlap),
                WORKER_LABELS,
            )
        if parts & {"steady", "worker"}:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("DELETE FROM idxr.search_index WHERE entity_kind = 'filler'")
        if "write" in parts:
            sizes = [int(x) for x in args.write_sizes.split(",")]
            write_path_alone(url, sizes, backfill_batch)
    finally:
        with psycopg.connect(args.database_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
    load = os.getloadavg()
    print(f"\nload average at end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
