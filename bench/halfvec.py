"""Index storage and HNSW build parameters (issue 14): vector vs halfvec, ef_construction 64
vs 32 (m 16): build time, size, per-row insert cost into the built index, query p50, recall@10.

Measures, on a table of its own in a fresh database (not the idxr schema), the index exactly
as ``idxr.embedding_index_ddl`` defines it (020_dimensions.sql): a bare ``vector`` column and
the partial expression index ``USING hnsw ((embedding::STORAGE(N)) STORAGE_cosine_ops) WITH
(m = M, ef_construction = EF) WHERE vector_dims(embedding) = N``, queried as the search
functions query it (``ORDER BY (embedding::STORAGE(N)) <=> q::STORAGE(N)``). One variant's
index exists at a time; for each, over the same ``--vectors`` rows:

- build time (same ``maintenance_work_mem``, sized like the bulk backfill's ``auto``, and the
  same ``--workers``) and index size;
- recall@10 of ``--queries`` queries against an exact scan of the float32 vectors, and their
  p50, at ``hnsw.ef_search`` 40 (pgvector's default) and 100 (the search functions');
- per-row insert cost: ``--inserts`` new rows written in 64-row binary COPYs into the
  table with that index, minus the same rows written with no index (timed before the first
  variant and after the last; the mean of the two), then deleted again.

Variants run in the order given, reversed in the next ``--rounds`` round; each figure is the
fastest round's (recall: the last round's).

Vectors: ``deterministic`` (default) draws unit vectors around ``--clusters`` random centres
(seeded), so that near neighbours exist as they do among real embeddings; ``model`` embeds
the demo's distinct texts with the real default model (its own precision choice: bf16 where
the CPU has it). Queries are stored vectors nudged by noise.

    flock /tmp/idxr-bench.lock .venv/bin/python bench/halfvec.py [--vectors 100000] \
        [--queries 100] [--inserts 1000] [--source deterministic|model] \
        [--variants vector:64,halfvec:64,vector:32,halfvec:32]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid
from dataclasses import dataclass, field

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import psycopg  # noqa: E402
from benchdb import add_database_url, with_dbname  # noqa: E402
from pgvector.psycopg import register_vector  # noqa: E402
from psycopg import sql  # noqa: E402

from idxr_pg.db.hnsw_memory import graph_megabytes  # noqa: E402

INSERT_BATCH = 64


@dataclass
class Variant:
    storage: str
    ef_construction: int
    m: int = 16
    builds: list[float] = field(default_factory=list)
    inserts: list[float] = field(default_factory=list)
    size: int = 0
    recall: dict[int, float] = field(default_factory=dict)
    p50: dict[int, list[float]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.storage} m{self.m} ef{self.ef_construction}"


def deterministic_vectors(count: int, dims: int, clusters: int, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dims))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    members = centres[rng.integers(0, clusters, count)]
    vectors = members + rng.standard_normal((count, dims)) * (0.8 / np.sqrt(dims))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32)


def model_vectors(count: int) -> np.ndarray:
    """The real default model's vectors of ``count`` distinct texts in the index's
    ``"{path}: {value}"`` form: the demo's text values, under list-item paths
    (``subscriptions.0``, ``subscriptions.1``, ...) once the demo's values run out, as a kind's
    repeated fields give them (the demo holds ~10,000 distinct values)."""
    import dataclasses

    from idxr_pg.config import EmbeddingSettings
    from idxr_pg.demo import data as demo_data
    from idxr_pg.embedding import load_embedder

    data = demo_data.generate(20_000, seed=11)
    values: dict[tuple[str, str], None] = {}
    for part in dataclasses.fields(data):
        for row in getattr(data, part.name):
            for value in row if isinstance(row, tuple | list) else (row,):
                if isinstance(value, str) and " " in value:
                    values[(part.name, value)] = None
    texts: list[str] = []
    item = 0
    while len(texts) < count:
        suffix = "" if item == 0 else f".{item - 1}"
        texts.extend(f"{name}{suffix}: {value}" for name, value in values)
        item += 1
    texts = texts[:count]
    embedder = load_embedder(EmbeddingSettings(model="all-MiniLM-L6-v2", backend="torch"))
    out = [embedder.embed(texts[i : i + 256]) for i in range(0, len(texts), 256)]
    vectors = np.vstack(out).astype(np.float32)
    return vectors[np.random.default_rng(1).permutation(len(vectors))]


def load(conn: psycopg.Connection, vectors: np.ndarray) -> None:
    conn.execute("CREATE TABLE t (id int PRIMARY KEY, embedding vector)")
    with (
        conn.cursor() as cur,
        cur.copy("COPY t (id, embedding) FROM STDIN (FORMAT BINARY)") as copy,
    ):
        copy.set_types(["int4", "vector"])
        for i, vector in enumerate(vectors):
            copy.write_row((i, vector))
    conn.execute("VACUUM ANALYZE t")


def build(conn: psycopg.Connection, v: Variant, dims: int, memory: str, workers: int) -> float:
    conn.execute("DROP INDEX IF EXISTS t_hnsw")
    conn.execute(f"SET maintenance_work_mem = '{memory}'")
    conn.execute(f"SET max_parallel_maintenance_workers = {workers}")
    started = time.perf_counter()
    conn.execute(
        f"CREATE INDEX t_hnsw ON t USING hnsw ((embedding::{v.storage}({dims}))"
        f" {v.storage}_cosine_ops) WITH (m = {v.m}, ef_construction = {v.ef_construction})"
        f" WHERE vector_dims(embedding) = {dims}"
    )
    return time.perf_counter() - started


def insert_seconds(conn: psycopg.Connection, rows: np.ndarray, first_id: int) -> float:
    """Seconds to write ``rows`` in 64-row binary COPYs (autocommit: one transaction each, as
    the worker's COPY writes are), then delete them again (not timed)."""
    started = time.perf_counter()
    for at in range(0, len(rows), INSERT_BATCH):
        with (
            conn.cursor() as cur,
            cur.copy("COPY t (id, embedding) FROM STDIN (FORMAT BINARY)") as copy,
        ):
            copy.set_types(["int4", "vector"])
            for i, vector in enumerate(rows[at : at + INSERT_BATCH]):
                copy.write_row((first_id + at + i, vector))
    spent = time.perf_counter() - started
    conn.execute("DELETE FROM t WHERE id >= %s", [first_id])
    return spent


def exact_top(conn: psycopg.Connection, query: np.ndarray) -> list[int]:
    rows = conn.execute(
        "SELECT id FROM t ORDER BY (embedding <=> %(q)s::vector) + 0 LIMIT 10", {"q": query}
    ).fetchall()
    return [r[0] for r in rows]


def index_top(
    conn: psycopg.Connection, v: Variant, dims: int, query: np.ndarray
) -> tuple[list[int], float, bool]:
    cast = f"{v.storage}({dims})"
    statement = (
        f"SELECT id FROM t WHERE vector_dims(embedding) = {dims}"
        f" ORDER BY (embedding::{cast}) <=> %(q)s::vector::{cast} LIMIT 10"
    )
    started = time.perf_counter()
    rows = conn.execute(statement, {"q": query}).fetchall()
    spent = time.perf_counter() - started
    plan = conn.execute("EXPLAIN " + statement, {"q": query}).fetchall()
    used = any("t_hnsw" in line[0] for line in plan)
    return [r[0] for r in rows], spent, used


def parse_variants(text: str) -> list[Variant]:
    variants = []
    for item in text.split(","):
        storage, _, ef = item.strip().partition(":")
        if storage not in ("vector", "halfvec") or not ef.isdigit():
            raise SystemExit(f"--variants: {item!r} is not STORAGE:EF_CONSTRUCTION")
        variants.append(Variant(storage, int(ef)))
    return variants


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--inserts", type=int, default=1_000)
    parser.add_argument("--clusters", type=int, default=2_000)
    parser.add_argument("--source", choices=("deterministic", "model"), default="deterministic")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of every variant")
    parser.add_argument("--workers", type=int, default=1, help="parallel maintenance workers")
    parser.add_argument("--variants", default="vector:64,halfvec:64,vector:32,halfvec:32")
    add_database_url(parser)
    args = parser.parse_args()
    variants = parse_variants(args.variants)
    started_load = os.getloadavg()
    if args.source == "model":
        vectors = model_vectors(args.vectors + args.inserts)
    else:
        vectors = deterministic_vectors(args.vectors + args.inserts, 384, args.clusters)
    extra, vectors = vectors[-args.inserts :], vectors[: -args.inserts]
    count, dims = vectors.shape
    rng = np.random.default_rng(3)
    picks = rng.choice(count, size=min(args.queries, count), replace=False)
    queries = vectors[picks] + rng.standard_normal((len(picks), dims)).astype(np.float32) * (
        0.5 / np.sqrt(dims)
    )
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    memory = f"{graph_megabytes(count, dims)}MB"

    name = f"idxr_bench_halfvec_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = with_dbname(args.database_url, name)
    bare: list[float] = []
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION vector")
            register_vector(conn)
            load(conn, vectors)
            truth = [exact_top(conn, q) for q in queries]
            for round_ in range(args.rounds):
                bare.append(insert_seconds(conn, extra, count))
                order = variants if round_ % 2 == 0 else variants[::-1]
                for v in order:
                    v.builds.append(build(conn, v, dims, memory, args.workers))
                    v.size = conn.execute("SELECT pg_relation_size('t_hnsw')").fetchone()[0]  # type: ignore[index]
                    conn.execute("SET enable_seqscan = off")
                    for ef in (40, 100):
                        conn.execute(f"SET hnsw.ef_search = {ef}")
                        recalls, times = [], []
                        for query, exact in zip(queries, truth, strict=True):
                            found, spent, used = index_top(conn, v, dims, query)
                            assert used, f"the {v.name} query did not use its index"
                            recalls.append(len(set(found) & set(exact)) / 10)
                            times.append(spent)
                        v.recall[ef] = statistics.mean(recalls)
                        v.p50.setdefault(ef, []).append(1000 * statistics.median(times))
                    conn.execute("RESET enable_seqscan")
                    v.inserts.append(insert_seconds(conn, extra, count))
                bare.append(insert_seconds(conn, extra, count))
            conn.execute("DROP INDEX IF EXISTS t_hnsw")
            table = conn.execute("SELECT pg_table_size('t')").fetchone()[0]  # type: ignore[index]
    finally:
        with psycopg.connect(args.database_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
    ended_load = os.getloadavg()
    print(
        f"index storage: {count} {args.source} vectors of {dims} dimensions"
        f"{f' ({args.clusters} clusters)' if args.source == 'deterministic' else ''}, "
        f"{len(queries)} queries, {len(extra)} inserts in {INSERT_BATCH}-row COPYs, "
        f"maintenance_work_mem {memory}, {args.workers} workers, {args.rounds} round(s); "
        f"table {table / 2**20:.0f} MiB; load average {started_load[0]:.2f} at start, "
        f"{ended_load[0]:.2f} at end"
    )
    no_index = statistics.mean(bare) / len(extra) * 1e6
    print(f"insert with no HNSW index: {no_index:.0f} us/row (mean of {len(bare)})")
    header = (
        f"{'index':20} {'build s':>8} {'size MiB':>9} {'insert us/row':>14} "
        f"{'recall ef40':>12} {'p50 ms':>7} {'recall ef100':>13} {'p50 ms':>7}"
    )
    print(header)
    print("-" * len(header))
    for v in variants:
        per_row = min(v.inserts) / len(extra) * 1e6 - no_index
        print(
            f"{v.name:20} {min(v.builds):8.1f} {v.size / 2**20:9.1f} {per_row:14.0f} "
            f"{v.recall[40]:12.3f} {min(v.p50[40]):7.2f} {v.recall[100]:13.3f} "
            f"{min(v.p50[100]):7.2f}"
        )
    base = variants[0]
    base_insert = min(base.inserts) / len(extra) * 1e6 - no_index
    for v in variants[1:]:
        per_row = min(v.inserts) / len(extra) * 1e6 - no_index
        print(
            f"{v.name} / {base.name}: build {min(v.builds) / min(base.builds):.2f}x, "
            f"size {v.size / base.size:.2f}x, insert {per_row / base_insert:.2f}x, "
            f"recall@10 ef40 {v.recall[40] - base.recall[40]:+.3f}, "
            f"ef100 {v.recall[100] - base.recall[100]:+.3f}, "
            f"p50 ef100 {min(v.p50[100]) / min(base.p50[100]):.2f}x"
        )


if __name__ == "__main__":
    main()
