"""Search latency and recall: HNSW vs exact search, unfiltered and path-filtered, per size.

For each size it creates a scratch database (dropped afterwards unless --keep), installs the
idxr schema, generates that many field records server-side (ten per entity; clustered
synthetic vectors of low intrinsic dimension, like sentence embeddings: see create_pools),
builds the HNSW index and times top-k queries:

  unfiltered   idxr.search(q) and the hand-written HNSW query, vs exact search (seq scan)
  filtered     for path filters admitting ~60%, 5% and 0.5% of the rows:
               idxr.search(q, filter) (the shipped strategy), exact search, an HNSW walk with
               iterative scan and no fallback, and a plain HNSW walk (no iterative scan)

and prints p50/p95 latency (client side, one query at a time), recall@k against exact
search and the mean number of rows returned (a plain filtered HNSW walk returns fewer than k
when the filter is selective). Run from the repository root:

    .venv/bin/python bench/search.py --sizes 100000,1000000
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchdb import add_database_url  # noqa: E402

from idxr_pg.db import migrations  # noqa: E402
from idxr_pg.db.connection import connect  # noqa: E402
from idxr_pg.schema import read_schema_file  # noqa: E402

DIMS = 384
FIELDS_PER_ENTITY = 10
# name -> (lquery, share of rows it admits): entities in the 'notes' and 'legacy' sections put
# all their fields there; the rest have name/description/product.* fields.
FILTERS: dict[str, tuple[str, float]] = {
    "broad ~60%": ("subscription.product.*", 0.8 * 0.95 * 0.8),
    "mid 5%": ("*.legacy.*", 0.05),
    "selective 0.5%": ("*.notes.*", 0.005),
}

LATENT_DIMS = 32


def create_pools(conn: psycopg.Connection, topics: int, pool: int, seed: int = 7) -> None:
    """Vectors shaped like sentence embeddings: low intrinsic dimension. Topic centroids and
    two pools of offsets live in a random 32-dimensional subspace of the 384 dimensions, plus a
    pool of small full-rank noise; rows combine one of each (see GENERATE_ROWS).

    Isotropic noise in all 384 dimensions would be far harder for any ANN index than real
    text embeddings (distances concentrate); real MiniLM embeddings have an intrinsic
    dimension of a few tens."""
    import numpy as np

    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((DIMS, LATENT_DIMS)))  # orthonormal columns
    tables = {
        "centroids": rng.standard_normal((topics, LATENT_DIMS)) @ basis.T,
        "offsets_a": (0.5 * rng.standard_normal((pool, LATENT_DIMS))) @ basis.T,
        "offsets_b": (0.5 * rng.standard_normal((pool, LATENT_DIMS))) @ basis.T,
        "noise": 0.065 * rng.standard_normal((pool, DIMS)),
    }
    conn.execute("CREATE SCHEMA bench")
    for name, vectors in tables.items():
        table = sql.Identifier("bench", name)
        conn.execute(sql.SQL("CREATE TABLE {} (id integer PRIMARY KEY, v vector)").format(table))
        with (
            conn.cursor() as cur,
            cur.copy(sql.SQL("COPY {} (id, v) FROM STDIN").format(table)) as copy,
        ):
            for i, vector in enumerate(vectors.astype(np.float32)):
                copy.write_row((i, "[" + ",".join(f"{x:.6g}" for x in vector) + "]"))


# Ten records per entity; 20% products, 80% subscriptions; 0.5% of entities keep their
# fields under 'notes', 5% under 'legacy'. Vectors: the entity's topic centroid plus two
# offsets and a noise vector picked by hashing the row number.
GENERATE_ROWS = """
INSERT INTO idxr.search_index
    (entity_kind, entity_id, path, value, value_type, content_hash, embedding)
SELECT r.kind, r.e::text, text2ltree(r.path), 'synthetic text ' || r.n, 'string',
       md5(r.n::text), l2_normalize(c.v + a.v + b.v + z.v)
  FROM (
    SELECT n, e, f,
           CASE WHEN e %% 5 = 0 THEN 'product' ELSE 'subscription' END AS kind,
           (CASE WHEN e %% 5 = 0 THEN 'product' ELSE 'subscription' END) || CASE
               WHEN e %% 200 = 0 THEN '.notes.' || f
               WHEN e %% 20 = 1 THEN '.legacy.' || f || '.text'
               WHEN f = 0 THEN '.name'
               WHEN f = 1 THEN '.description'
               WHEN f = 2 THEN '.product.name'
               WHEN f = 3 THEN '.product.description'
               ELSE '.product.blocks.' || (f - 4) || '.name'
           END AS path
      FROM (SELECT n, n / %(fields)s AS e, n %% %(fields)s AS f
              FROM generate_series(0, %(rows)s - 1) n) g
  ) r
  JOIN bench.centroids c ON c.id = abs(hashint8(r.e)) %% %(topics)s
  JOIN bench.offsets_a a ON a.id = abs(hashint8(r.n * 3)) %% %(pool)s
  JOIN bench.offsets_b b ON b.id = abs(hashint8(r.n * 3 + 1)) %% %(pool)s
  JOIN bench.noise z ON z.id = abs(hashint8(r.n * 3 + 2)) %% %(pool)s
"""

QUERIES = """
SELECT l2_normalize(c.v + a.v + b.v + z.v)
  FROM generate_series(1, %(count)s) q
  JOIN bench.centroids c ON c.id = abs(hashint8(q + 7000000000)) %% %(topics)s
  JOIN bench.offsets_a a ON a.id = abs(hashint8(q + 8000000000)) %% %(pool)s
  JOIN bench.offsets_b b ON b.id = abs(hashint8(q + 9000000000)) %% %(pool)s
  JOIN bench.noise z ON z.id = abs(hashint8(q + 6000000000)) %% %(pool)s
 ORDER BY q
"""

COLS = "s.entity_kind, s.entity_id, s.path"
EXACT = (
    "WITH c AS MATERIALIZED (SELECT {cols}, s.embedding <=> %(q)s AS d FROM idxr.search_index s"
    " WHERE s.embedding IS NOT NULL {where}) SELECT entity_kind, entity_id, path FROM c"
    " ORDER BY d LIMIT %(k)s"
)
# `(...) IS TRUE` keeps the path condition a filter on the HNSW walk instead of a GiST index
# condition (with it the planner may sort all rows the GiST finds: exact, not HNSW).
# Written as the per-size partial expression index is defined (schema/020_dimensions.sql).
HNSW = (
    "SELECT {cols} FROM idxr.search_index s WHERE vector_dims(s.embedding) = 384 {where}"
    " ORDER BY {order} LIMIT %(k)s"
)
# The ORDER BY of each index storage, as knn_search (040_search.sql) writes it.
ORDER = {
    "vector": "(s.embedding::vector(384)) <=> %(q)s",
    "halfvec": "(s.embedding::halfvec(384)) <=> %(q)s::halfvec(384)",
}
FUNCTION = "SELECT entity_kind, entity_id, path FROM idxr.search(%(q)s, %(f)s, NULL, %(k)s)"
ENTITIES = "SELECT entity_kind, entity_id FROM idxr.search_entities(%(q)s, %(f)s, NULL, %(k)s)"
EXACT_ENTITIES = (
    "WITH c AS MATERIALIZED (SELECT s.entity_kind, s.entity_id, s.embedding <=> %(q)s AS d"
    " FROM idxr.search_index s WHERE s.embedding IS NOT NULL {where})"
    " SELECT entity_kind, entity_id FROM (SELECT DISTINCT ON (entity_kind, entity_id) * FROM c"
    " ORDER BY entity_kind, entity_id, d) b ORDER BY d LIMIT %(k)s"
)


@dataclass
class Variant:
    """One way of answering a query; ``exact_only`` variants run on the recall subset only."""

    label: str
    query: str
    hnsw: dict[str, object] = field(default_factory=dict)  # session settings for this one
    exact_only: bool = False
    times: list[float] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    recall: list[float] = field(default_factory=list)

    def line(self) -> str:
        p50 = statistics.median(self.times) * 1000
        p95 = percentile(self.times, 95) * 1000
        recall = f"{statistics.mean(self.recall):.3f}" if self.recall else "  -  "
        rows = statistics.mean(self.rows)
        return (
            f"  {self.label:<46} p50 {p50:8.2f} ms  p95 {p95:8.2f} ms  recall {recall}"
            f"  rows {rows:5.1f}"
        )


def percentile(values: Sequence[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


def admin_url(url: str, dbname: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(url)
    params["dbname"] = dbname
    return psycopg.conninfo.make_conninfo(**params)


def apply_settings(conn: psycopg.Connection, values: dict[str, object]) -> None:
    for name in ("iterative_scan", "ef_search"):
        if name in values:
            statement = sql.SQL("SET {} = {}").format(
                sql.Identifier("hnsw", name), sql.Literal(values[name])
            )
        else:
            statement = sql.SQL("RESET {}").format(sql.Identifier("hnsw", name))
        conn.execute(statement)


def compare(
    conn: psycopg.Connection,
    variants: Sequence[Variant],
    vectors: Sequence[object],
    exact_count: int,
    extra: dict,
    k: int,
) -> None:
    """Run every variant on every query vector, interleaved (so that cache state is the same
    for all), after one untimed warm-up round; variants[0] is the exact search, the truth for
    recall on the first ``exact_count`` vectors. It runs last for each vector, and the others
    take turns at going first: right after a full scan the next statement was measured up to
    10x slower. Prints one line per variant."""
    for variant in variants:  # warm-up
        apply_settings(conn, variant.hnsw)
        conn.execute(variant.query, {"q": vectors[-1], "k": k, **extra}).fetchall()
    others = list(variants[1:])
    for i, vector in enumerate(vectors):
        found: dict[str, set] = {}
        turn = i % len(others)
        for variant in [*others[turn:], *others[:turn], variants[0]]:
            if variant.exact_only and i >= exact_count:
                continue
            apply_settings(conn, variant.hnsw)
            start = time.perf_counter()
            rows = conn.execute(variant.query, {"q": vector, "k": k, **extra}).fetchall()
            variant.times.append(time.perf_counter() - start)
            variant.rows.append(len(rows))
            found[variant.label] = {tuple(map(str, row)) for row in rows}
        truth = found.get(variants[0].label)
        if truth is not None:
            for variant in variants[1:]:
                hits = found[variant.label]
                variant.recall.append(len(hits & truth) / max(1, min(k, len(truth))))
    apply_settings(conn, {})
    for variant in variants:
        print(variant.line(), flush=True)


def bench_size(args: argparse.Namespace, rows: int) -> None:
    dbname = f"idxr_bench_search_{rows}"
    server = args.database_url
    with psycopg.connect(server, autocommit=True) as admin:
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [dbname]).fetchone()
        reuse = bool(exists) and args.reuse
        if not reuse:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname))
            )
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    url = admin_url(server, dbname)
    try:
        if reuse:
            print(f"\n== reusing {dbname}; search functions reinstalled from this tree ==")
            with connect(url, autocommit=True) as conn:
                conn.execute(read_schema_file("040_search.sql"))
        else:
            migrations.upgrade(url)
            migrations.set_embedding_dimensions(url, DIMS)
        with connect(url, autocommit=True) as conn:
            measure_size(conn, args, rows, load=not reuse)
    finally:
        if not args.keep:
            with psycopg.connect(server, autocommit=True) as admin:
                admin.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(dbname)
                    )
                )
        else:
            print(f"  kept database {dbname}")


def load_and_build(conn: psycopg.Connection, args: argparse.Namespace, params: dict) -> None:
    """Generate the rows with the HNSW index dropped, then build it (timed) and analyze."""
    conn.execute(f"DROP INDEX idxr.search_index_embedding_hnsw_{DIMS}")
    start = time.perf_counter()
    create_pools(conn, params["topics"], params["pool"])
    conn.execute(GENERATE_ROWS, params)
    conn.execute("VACUUM ANALYZE idxr.search_index")
    print(f"  generated and loaded in {time.perf_counter() - start:.1f} s", flush=True)

    conn.execute(
        sql.SQL("SET maintenance_work_mem = {}").format(sql.Literal(args.maintenance_work_mem))
    )
    conn.execute(
        sql.SQL("SET max_parallel_maintenance_workers = {}").format(sql.Literal(args.workers))
    )
    # Built as the schema defines it (idxr.embedding_index_ddl), with these options.
    conn.execute(
        "SELECT idxr.set_embedding_index_options(%s, %s, %s, %s)",
        [DIMS, args.index_storage, args.m, args.ef_construction],
    )
    ddl = conn.execute(
        "SELECT idxr.embedding_index_ddl(%s, idxr.embedding_index_name(%s))", [DIMS, DIMS]
    ).fetchone()[0]
    start = time.perf_counter()
    conn.execute(ddl)
    build = time.perf_counter() - start
    size = conn.execute(
        f"SELECT pg_size_pretty(pg_relation_size('idxr.search_index_embedding_hnsw_{DIMS}')),"
        " pg_size_pretty(pg_table_size('idxr.search_index'))"
    ).fetchone()
    print(
        f"  HNSW build ({args.index_storage}, m={args.m}, ef_construction={args.ef_construction}, "
        f"{args.workers} parallel workers, maintenance_work_mem={args.maintenance_work_mem}): "
        f"{build:.1f} s; index {size[0]}, table {size[1]}",
        flush=True,
    )
    conn.execute("ANALYZE idxr.search_index")


def measure_size(conn: psycopg.Connection, args: argparse.Namespace, rows: int, load: bool) -> None:
    k = args.k
    params = {
        "dims": DIMS,
        "topics": max(10, rows // 500),
        "pool": 4096,
        "rows": rows,
        "fields": FIELDS_PER_ENTITY,
    }
    print(
        f"\n== {rows:,} field records ({rows // FIELDS_PER_ENTITY:,} entities, "
        f"{params['topics']} topics) ==",
        flush=True,
    )
    if load:
        load_and_build(conn, args, params)
    # JIT compiles each of these short statements for 50-400 ms (their plans' costs pass
    # jit_above_cost); the search functions turn it off too.
    conn.execute("SET jit = off")
    vectors = [row[0] for row in conn.execute(QUERIES, {**params, "count": args.queries})]
    exact_vectors = vectors[: args.exact_queries]
    conn.prepare_threshold = None  # the same plans for every query, prepared or not
    for name, (lquery, _share) in FILTERS.items():
        admitted = conn.execute(
            "SELECT count(*) FROM idxr.search_index WHERE path ~ %s::lquery", [lquery]
        ).fetchone()[0]
        print(f"  filter {name}: {lquery!r} admits {admitted:,} rows ({admitted / rows:.1%})")

    n_exact = len(exact_vectors)
    print(f"  -- unfiltered top-{k} ({len(vectors)} queries; exact and recall: first {n_exact}) --")
    hnsw = HNSW.format(cols=COLS, where="", order=ORDER[args.index_storage])
    variants = [
        Variant("exact (seq scan, sort)", EXACT.format(cols=COLS, where=""), exact_only=True)
    ]
    variants += [
        Variant(f"HNSW hand-written, ef_search={ef}", hnsw, {"ef_search": ef})
        for ef in args.ef_search
    ]
    variants.append(Variant("idxr.search(q) (function)", FUNCTION))
    compare(conn, variants, vectors, n_exact, {"f": None}, k)
    entity_variants(conn, vectors, n_exact, "", {"f": None}, k)

    for name, (lquery, _share) in FILTERS.items():
        print(f"  -- path-filtered top-{k}: {name} ({lquery}) --")
        where = "AND s.path ~ %(f)s::lquery"
        hnsw = HNSW.format(
            cols=COLS,
            where="AND (s.path ~ %(f)s::lquery) IS TRUE",
            order=ORDER[args.index_storage],
        )
        variants = [
            Variant(
                "exact (GiST/seq scan, sort)", EXACT.format(cols=COLS, where=where), exact_only=True
            ),
            Variant("idxr.search(q, filter) (function)", FUNCTION),
            Variant(
                "HNSW iterative relaxed, ef_search=100",
                hnsw,
                {"iterative_scan": "relaxed_order", "ef_search": 100},
            ),
            Variant("HNSW plain (no iterative), ef_search=100", hnsw, {"ef_search": 100}),
        ]
        compare(conn, variants, vectors, n_exact, {"f": lquery}, k)
        entity_variants(conn, vectors, n_exact, where, {"f": lquery}, k)


def entity_variants(
    conn: psycopg.Connection,
    vectors: Sequence[object],
    n_exact: int,
    where: str,
    extra: dict,
    k: int,
) -> None:
    """idxr.search_entities (one row per entity) against the exact per-entity ranking."""
    variants = [
        Variant(
            "entities: exact (DISTINCT ON, sort)",
            EXACT_ENTITIES.format(where=where),
            exact_only=True,
        ),
        Variant("entities: idxr.search_entities (function)", ENTITIES),
    ]
    compare(conn, variants, vectors, n_exact, extra, k)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes", default="100000,1000000", help="field-record counts, comma-separated"
    )
    add_database_url(parser, help="server to create the scratch databases on (needs CREATEDB)")
    parser.add_argument("--queries", type=int, default=200, help="queries per HNSW measurement")
    parser.add_argument(
        "--exact-queries", type=int, default=50, help="queries for exact search and recall"
    )
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--m", type=int, default=16, help="HNSW m (pgvector default 16)")
    parser.add_argument(
        "--ef-construction", type=int, default=64, help="HNSW ef_construction (default 64)"
    )
    parser.add_argument(
        "--ef-search", default="40,100", help="ef_search values for the unfiltered HNSW query"
    )
    parser.add_argument(
        "--index-storage", choices=("vector", "halfvec"), default="vector", help="HNSW storage"
    )
    parser.add_argument("--maintenance-work-mem", default="4GB")
    parser.add_argument("--workers", type=int, default=2, help="max_parallel_maintenance_workers")
    parser.add_argument("--keep", action="store_true", help="keep the scratch databases")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="reuse a kept database of the same size (skips load and build; reinstalls the "
        "search functions from this tree)",
    )
    args = parser.parse_args(argv)
    args.ef_search = [int(v) for v in args.ef_search.split(",")]
    sizes = [int(v.replace("_", "")) for v in args.sizes.split(",")]
    with psycopg.connect(args.database_url) as conn:
        server = conn.execute("SHOW server_version").fetchone()[0]
        shared = conn.execute("SHOW shared_buffers").fetchone()[0]
        vector = conn.execute(
            "SELECT default_version FROM pg_available_extensions WHERE name = 'vector'"
        ).fetchone()[0]
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB; "
        f"PostgreSQL {server} (shared_buffers {shared}), pgvector {vector}"
    )
    for rows in sizes:
        bench_size(args, rows)


if __name__ == "__main__":
    main()
