"""halfvec against vector for the HNSW index (issue 14): recall@10, size, build time.

Measures, on a table of its own in a fresh database (not the idxr schema, which stays as it
is), an HNSW index on ``embedding`` (``vector_cosine_ops``, 4 bytes a dimension) and one on
the expression ``embedding::halfvec(N)`` (``halfvec_cosine_ops``, 2 bytes a dimension) over
the same ``--vectors`` rows: build time (same ``maintenance_work_mem``, sized to the graph
like the bulk backfill's ``auto``, and the same parallel workers), index size, and for
``--queries`` queries recall@10 against an exact scan of the float32 vectors, with query
latency, at ``hnsw.ef_search`` 40 (pgvector's default) and 100. The builds run one after the
other, the order alternating with ``--rounds``; the figure is each one's fastest.

Vectors: ``deterministic`` (default) draws unit vectors around ``--clusters`` random centres
(seeded), so that near neighbours exist as they do among real embeddings; ``model`` embeds
the demo's distinct texts with the real default model (slow on a CPU: a few thousand only).
Queries are stored vectors nudged by noise (each has its own row among its neighbours).

    .venv/bin/python bench/halfvec.py [--vectors 100000] [--queries 200] [--source deterministic]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import psycopg  # noqa: E402
from pgvector.psycopg import register_vector  # noqa: E402
from psycopg import sql  # noqa: E402

from idxr_pg.db.hnsw_memory import graph_megabytes  # noqa: E402

INDEXES = {
    "vector": ("embedding", "vector_cosine_ops", "embedding <=> %(q)s::vector"),
    "halfvec": (
        "(embedding::halfvec({dims}))",
        "halfvec_cosine_ops",
        "embedding::halfvec({dims}) <=> %(q)s::vector::halfvec({dims})",
    ),
}


def with_dbname(url: str, name: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(url)
    params["dbname"] = name
    return psycopg.conninfo.make_conninfo(**params)


def deterministic_vectors(count: int, dims: int, clusters: int, seed: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dims))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    members = centres[rng.integers(0, clusters, count)]
    vectors = members + rng.standard_normal((count, dims)) * (0.8 / np.sqrt(dims))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32)


def model_vectors(count: int) -> np.ndarray:
    """The real default model's vectors of up to ``count`` distinct demo texts."""
    import dataclasses

    from idxr_pg.config import EmbeddingSettings
    from idxr_pg.demo import data as demo_data
    from idxr_pg.embedding import load_embedder

    data = demo_data.generate(max(count // 2, 100), seed=11)
    texts: dict[str, None] = {}
    for field in dataclasses.fields(data):
        for row in getattr(data, field.name):
            for value in row if isinstance(row, tuple | list) else (row,):
                if isinstance(value, str) and " " in value:
                    texts[f"{field.name}: {value}"] = None
    distinct = list(texts)[:count]
    embedder = load_embedder(EmbeddingSettings(model="all-MiniLM-L6-v2", backend="torch"))
    out = [embedder.embed(distinct[i : i + 64]) for i in range(0, len(distinct), 64)]
    return np.vstack(out).astype(np.float32)


def load(conn: psycopg.Connection, vectors: np.ndarray) -> None:
    dims = vectors.shape[1]
    conn.execute(f"CREATE TABLE t (id int PRIMARY KEY, embedding vector({dims}))")
    with (
        conn.cursor() as cur,
        cur.copy("COPY t (id, embedding) FROM STDIN (FORMAT BINARY)") as copy,
    ):
        copy.set_types(["int4", "vector"])
        for i, vector in enumerate(vectors):
            copy.write_row((i, vector))
    conn.execute("VACUUM ANALYZE t")


def build(conn: psycopg.Connection, kind: str, dims: int, memory: str, workers: int) -> float:
    expression, ops, _ = INDEXES[kind]
    conn.execute(f"DROP INDEX IF EXISTS t_{kind}")
    conn.execute(f"SET maintenance_work_mem = '{memory}'")
    conn.execute(f"SET max_parallel_maintenance_workers = {workers}")
    started = time.perf_counter()
    conn.execute(f"CREATE INDEX t_{kind} ON t USING hnsw ({expression.format(dims=dims)} {ops})")
    return time.perf_counter() - started


def exact_top(conn: psycopg.Connection, query: np.ndarray) -> list[int]:
    conn.execute("SET enable_indexscan = off")
    rows = conn.execute(
        "SELECT id FROM t ORDER BY embedding <=> %(q)s::vector LIMIT 10", {"q": query}
    ).fetchall()
    conn.execute("RESET enable_indexscan")
    return [r[0] for r in rows]


def index_top(
    conn: psycopg.Connection, kind: str, dims: int, query: np.ndarray
) -> tuple[list[int], float, bool]:
    order = INDEXES[kind][2].format(dims=dims)
    statement = f"SELECT id FROM t ORDER BY {order} LIMIT 10"
    started = time.perf_counter()
    rows = conn.execute(statement, {"q": query}).fetchall()
    spent = time.perf_counter() - started
    plan = conn.execute("EXPLAIN " + statement, {"q": query}).fetchall()
    used = any(f"t_{kind}" in line[0] for line in plan)
    return [r[0] for r in rows], spent, used


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--clusters", type=int, default=2_000)
    parser.add_argument("--source", choices=("deterministic", "model"), default="deterministic")
    parser.add_argument("--rounds", type=int, default=1, help="builds of each; fastest kept")
    parser.add_argument("--workers", type=int, default=4, help="parallel maintenance workers")
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "IDXR_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    args = parser.parse_args()
    started_load = os.getloadavg()
    if args.source == "model":
        vectors = model_vectors(args.vectors)
    else:
        vectors = deterministic_vectors(args.vectors, 384, args.clusters)
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
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION vector")
            register_vector(conn)
            load(conn, vectors)
            builds: dict[str, list[float]] = {kind: [] for kind in INDEXES}
            for round_ in range(args.rounds):
                kinds = list(INDEXES) if round_ % 2 == 0 else list(INDEXES)[::-1]
                for kind in kinds:
                    builds[kind].append(build(conn, kind, dims, memory, args.workers))
            sizes = {
                kind: conn.execute(
                    "SELECT pg_relation_size(%s::regclass)", [f"t_{kind}"]
                ).fetchone()[0]  # type: ignore[index]
                for kind in INDEXES
            }
            table = conn.execute("SELECT pg_table_size('t')").fetchone()[0]  # type: ignore[index]
            truth = [exact_top(conn, q) for q in queries]
            conn.execute("SET enable_seqscan = off")  # small tables: the index, not a sort
            results: dict[tuple[str, int], tuple[float, float]] = {}
            for ef in (40, 100):
                conn.execute(f"SET hnsw.ef_search = {ef}")
                for kind in INDEXES:
                    recalls, times = [], []
                    for query, exact in zip(queries, truth, strict=True):
                        found, spent, used = index_top(conn, kind, dims, query)
                        assert used, f"the {kind} query did not use its index"
                        recalls.append(len(set(found) & set(exact)) / 10)
                        times.append(spent)
                    results[(kind, ef)] = (
                        statistics.mean(recalls),
                        1000 * statistics.median(times),
                    )
    finally:
        with psycopg.connect(args.database_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
    ended_load = os.getloadavg()
    print(
        f"halfvec vs vector: {count} {args.source} vectors of {dims} dimensions"
        f"{f' ({args.clusters} clusters)' if args.source == 'deterministic' else ''}, "
        f"{len(queries)} queries, maintenance_work_mem {memory}, {args.workers} workers; "
        f"table {table / 2**20:.0f} MiB; load average {started_load[0]:.2f} at start, "
        f"{ended_load[0]:.2f} at end"
    )
    header = (
        f"{'index':8} {'build s':>8} {'size MiB':>9} {'recall@10 ef40':>15} {'p50 ms':>7} "
        f"{'recall@10 ef100':>16} {'p50 ms':>7}"
    )
    print(header)
    print("-" * len(header))
    for kind in INDEXES:
        r40, t40 = results[(kind, 40)]
        r100, t100 = results[(kind, 100)]
        print(
            f"{kind:8} {min(builds[kind]):8.1f} {sizes[kind] / 2**20:9.1f} {r40:15.3f} "
            f"{t40:7.2f} {r100:16.3f} {t100:7.2f}"
        )
    print(
        f"halfvec / vector: build {min(builds['halfvec']) / min(builds['vector']):.2f}x, "
        f"size {sizes['halfvec'] / sizes['vector']:.2f}x"
    )


if __name__ == "__main__":
    main()
