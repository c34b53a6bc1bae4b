"""Latency of hybrid and full-text search against vector search, at 100k records (issue 16).

A scratch database gets N field records (default 100,000) of one kind, generated server-side:
half titles (one sentence), half bodies (10-30 sentences of bench/quality_corpus.py's topic
and boilerplate sentences, plus a unique part number `PN-<n>`), each with a random unit vector
(384 dimensions; the vector search's cost does not depend on what the vectors mean). The HNSW
index is built once after the load and the kind's full-text index by
idxr.set_text_search_config. Then rounds interleave, for the same queries (the quality
corpus's paraphrases and part-number queries, each with a random query vector):

  vector    idxr.search_entities(v, kind, k)
  lexical   idxr.text_search_entities(text, kind, k)
  hybrid    idxr.hybrid_search_entities(text, v, kind, k)

and p50/p95 per method are printed with the ratio to vector, client side, one query at a time.
``--fields`` adds the field-level calls (idxr.search, idxr.hybrid_search); ``--chunks N`` gives
every body N chunks (schema revision 0009): N - 1 chunk rows more per body, each with a random
vector of its own, so the searches read chunked fields (more rows, the same 100k fields).

    flock /tmp/idxr-bench.lock .venv/bin/python bench/hybrid_latency.py [--records 100000]

To compare versions of the SQL functions on the same data, load once with --keep and time
again with --database <the kept name> (the schema's functions are re-applied by the upgrade,
the records and indexes are reused; --records must match the kept load for the queries).
``--versus <kept name>`` times a second kept database in the same rounds, query by query
alternated with the first, without migrating it: a load kept by another version of the code
(say main's) against this one, the machine's load shared by both.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import psycopg  # noqa: E402
from benchdb import add_database_url, with_dbname  # noqa: E402
from psycopg import sql  # noqa: E402

from bench.quality_corpus import BOILERPLATE, TOPICS  # noqa: E402
from idxr_pg.db import migrations  # noqa: E402
from idxr_pg.db.connection import connect  # noqa: E402

KIND = "report"
DIMS = 384

LOAD = """
INSERT INTO idxr.search_index
    (entity_kind, entity_id, path, value, value_type, content_hash, embedding)
SELECT 'report', (g.n / 2)::text,
       (CASE WHEN g.n %% 2 = 0 THEN 'report.title' ELSE 'report.body' END)::ltree,
       CASE WHEN g.n %% 2 = 0
            THEN (%(s)s::text[])[1 + (hashint4(g.n) & 2147483647) %% cardinality(%(s)s::text[])]
            ELSE (SELECT string_agg((%(s)s::text[])[1 + (hashint8(g.n * 64 + i) & 2147483647)
                                                    %% cardinality(%(s)s::text[])], ' ')
                    FROM generate_series(1, 10 + g.n %% 21) i)
                 || ' Part PN-' || g.n || ' was checked.'
       END,
       'string', md5(g.n::text),
       (SELECT l2_normalize(array_agg(random() - 0.5)::vector)
          FROM generate_series(1, 384) d WHERE g.n >= 0)  -- correlated: one vector per row
  FROM generate_series(%(start)s, %(stop)s - 1) AS g(n)
"""


# Chunks 1..N-1 of every body (019_chunks.sql: value '', the chunk's range of the field's
# value), each with a random unit vector; chunk 0 (the body's row) gets its range.
CHUNK_ROWS = """
INSERT INTO idxr.search_index
    (entity_kind, entity_id, path, value, value_type, content_hash, embedding,
     chunk, chunk_start, chunk_end)
SELECT s.entity_kind, s.entity_id, s.path, '', s.value_type, s.content_hash,
       (SELECT l2_normalize(array_agg(random() - 0.5)::vector)
          FROM generate_series(1, 384) d WHERE c.c >= 0),
       c.c, c.c * length(s.value) / %(n)s, (c.c + 1) * length(s.value) / %(n)s
  FROM idxr.search_index s CROSS JOIN generate_series(1, %(n)s - 1) AS c(c)
 WHERE s.path = 'report.body' AND s.chunk = 0
"""
CHUNK_ZERO = """
UPDATE idxr.search_index SET chunk_start = 0, chunk_end = length(value) / %(n)s
 WHERE path = 'report.body' AND chunk = 0
"""


def load_records(
    conn: psycopg.Connection, records: int, sentences: list[str], chunks: int = 1
) -> tuple[float, float]:
    """Loads the records, builds the HNSW and full-text indexes; returns the two durations."""
    started = time.perf_counter()
    conn.execute("DROP INDEX idxr.search_index_embedding_hnsw_384")
    conn.execute("INSERT INTO idxr.entity_kinds (name) VALUES (%s)", [KIND])
    step = 10_000
    for start in range(0, records, step):
        conn.execute(LOAD, {"s": sentences, "start": start, "stop": min(records, start + step)})
    if chunks > 1:
        conn.execute(CHUNK_ROWS, {"n": chunks})
        conn.execute(CHUNK_ZERO, {"n": chunks})
    loaded = time.perf_counter() - started
    conn.execute("SET maintenance_work_mem = '1GB'")
    conn.execute("SELECT idxr.set_embedding_dimensions(%s)", [DIMS])
    conn.execute("SELECT idxr.set_text_search_config(%s, 'english')", [KIND])
    conn.execute("VACUUM ANALYZE idxr.search_index")
    return loaded, time.perf_counter() - started - loaded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("-k", type=int, default=10)
    add_database_url(parser)
    parser.add_argument("--keep", action="store_true", help="keep the scratch database")
    parser.add_argument(
        "--fields", action="store_true", help="also time idxr.search and idxr.hybrid_search"
    )
    parser.add_argument(
        "--versus",
        metavar="DATABASE",
        help="a second kept database (another code version's load) timed in the same rounds",
    )
    parser.add_argument(
        "--chunks", type=int, default=1, help="chunks per body (a new load; revision 0009)"
    )
    parser.add_argument(
        "--database",
        help="reuse this scratch database (kept by an earlier --keep run) instead of loading one;"
        " it is kept",
    )
    args = parser.parse_args()
    sentences = [s for t in TOPICS for s in t.sentences] + list(BOILERPLATE)
    rng = random.Random(16)
    texts = [q for t in TOPICS for q in t.queries] + [
        f"where was PN-{rng.randrange(args.records)} checked" for _ in range(16)
    ]
    vectors = np.random.default_rng(16).normal(size=(len(texts), DIMS)).astype(np.float32)
    name = args.database or f"idxr_bench_hybrid_{uuid.uuid4().hex[:8]}"
    keep = args.keep or args.database is not None
    if args.database is None:
        with psycopg.connect(args.database_url, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = with_dbname(args.database_url, name)
    times: dict[str, list[float]] = {}
    versus: dict[str, list[float]] = {}
    loaded = built = 0.0
    try:
        migrations.upgrade(url)
        with connect(url, autocommit=True) as conn:
            if args.database is None:
                loaded, built = load_records(conn, args.records, sentences, args.chunks)
            calls = {
                "vector": ("SELECT * FROM idxr.search_entities(%(v)s, NULL, %(kind)s, %(k)s)"),
                "lexical": (
                    "SELECT * FROM idxr.text_search_entities(%(t)s, NULL, %(kind)s, %(k)s)"
                ),
                "hybrid": (
                    "SELECT * FROM idxr.hybrid_search_entities(%(t)s, %(v)s, NULL, %(kind)s, %(k)s)"
                ),
            }
            if args.fields:
                calls["vector fields"] = "SELECT * FROM idxr.search(%(v)s, NULL, %(kind)s, %(k)s)"
                calls["hybrid fields"] = (
                    "SELECT * FROM idxr.hybrid_search(%(t)s, %(v)s, NULL, %(kind)s, %(k)s)"
                )
            times.update({label: [] for label in calls})
            other = (
                connect(with_dbname(args.database_url, args.versus), autocommit=True)
                if args.versus
                else None
            )
            if other is not None:
                versus.update({label: [] for label in calls})
                for text, vector in zip(texts[:3], vectors[:3], strict=True):  # warm-up
                    for query in calls.values():
                        other.execute(query, {"t": text, "v": vector, "kind": KIND, "k": args.k})
            for text, vector in zip(texts[:3], vectors[:3], strict=True):  # warm-up
                for query in calls.values():
                    conn.execute(query, {"t": text, "v": vector, "kind": KIND, "k": args.k})
            for _ in range(args.rounds):
                for text, vector in zip(texts, vectors, strict=True):
                    for label, query in calls.items():
                        params = {"t": text, "v": vector, "kind": KIND, "k": args.k}
                        pairs = [(conn, times), (other, versus)] if other is not None else []
                        for target, into in pairs or [(conn, times)]:
                            started = time.perf_counter()
                            target.execute(query, params).fetchall()
                            into[label].append(time.perf_counter() - started)
            if other is not None:
                other.close()
    finally:
        if keep:
            print(f"kept database {name}")
        else:
            with psycopg.connect(args.database_url, autocommit=True) as admin:
                admin.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )

    load = os.getloadavg()
    print(
        f"\nhybrid search latency: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
        f"{args.records} records "
        + (
            f"(reused {name}), "
            if args.database
            else f"(loaded in {loaded:.0f} s, HNSW + GIN built in {built:.0f} s), "
        )
        + (f"{args.chunks} chunks per body, " if args.chunks > 1 else "")
        + f"k = {args.k}, {len(texts)} queries x {args.rounds} rounds, interleaved"
    )
    for title, measured in ((name, times), (args.versus, versus)):
        if not measured:
            continue
        if args.versus:
            print(f" {title}:")
        base = statistics.median(measured["vector"])
        for label, values in measured.items():
            p50 = statistics.median(values)
            p95 = statistics.quantiles(values, n=20)[-1]
            print(
                f"  {label:13} p50 {p50 * 1000:7.1f} ms  p95 {p95 * 1000:7.1f} ms"
                f"  {p50 / base:5.2f}x vector"
                + (
                    f"  {p50 / statistics.median(versus[label]):5.2f}x {args.versus}"
                    if measured is times and versus
                    else ""
                )
            )


if __name__ == "__main__":
    main()
