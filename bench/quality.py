"""Retrieval quality of idxr-pg's searches on a generated corpus with graded labels (issue 16).

The corpus (bench/quality_corpus.py, deterministic): maintenance reports whose bodies are
longer than the model's window, with paraphrased queries (topic), rare exact-term queries
(part numbers) and name queries; the ``late`` column judges the paraphrase queries on the
reports whose topic comes after the window only (where truncation cuts it). The reports are
indexed through the real pipeline (a backfill of a real table with the real default model),
once per long-text setting (chunked by default, truncated, and each ``--chunking`` size),
then every query runs through the SQL search functions with the query embedded as
`idxr_pg.search` does.

Methods (entity level: one ranked list of reports per query):

- ``vector (idxr, truncated)``: idxr.search_entities, an entity's best field, long bodies
  truncated to the window (``long_texts: truncate``);
- ``vector (idxr, chunked)``: the same with the default chunking (each chunk a vector; an
  entity as near as its nearest chunk); ``vector (idxr, chunked T/O)``: chunks of T tokens
  overlapping by O (``--chunking``);
- ``vector exact (numpy)``: the chunked kind's stored vectors ranked exactly outside the
  database, the ceiling for the HNSW index (``..., truncated``: the truncated kind's);
- ``lexical <config>``: idxr.text_search_entities, for each text search configuration;
- ``hybrid <config>``: idxr.hybrid_search_entities (default weights), k = 100, and
  ``hybrid <config>, k=10`` (nDCG@10 and MRR@10 of the top 10 as an application asks for it);
- ``doc vector exact (numpy)``: one vector per report over "title\\nbody" (model-truncated),
  ranked exactly: the entity-level baseline of issue 16;
- ``RRF lexical + doc vector``: reciprocal rank fusion (60) of the lexical list with it.

Reported: nDCG@10, Recall@100 and MRR@10 over all queries and per query kind, and the
p50 latency of the SQL calls (vector vs hybrid) on this small index.

    flock /tmp/idxr-bench.lock .venv/bin/python bench/quality.py [--docs-per-topic 15]
        [--backend torch --precision float32]   # or onnx/int8: issue 14's quality check
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("IDXR_ALLOW_SUPERUSER", "1")  # the bench connects as postgres

import numpy as np  # noqa: E402
import psycopg  # noqa: E402
from benchdb import add_database_url, with_dbname  # noqa: E402
from psycopg import sql  # noqa: E402

from bench.quality_corpus import Corpus, Query, generate, late_queries  # noqa: E402
from idxr_pg.config import parse_config  # noqa: E402
from idxr_pg.db import migrations  # noqa: E402
from idxr_pg.db.connection import connect  # noqa: E402
from idxr_pg.embedding import EmbeddingService, EmbedRequest, load_embedder  # noqa: E402
from idxr_pg.runtime.backfill import Backfill, BackfillOptions  # noqa: E402

KIND = "report"  # the default configuration: long bodies chunked
CUT = "report_cut"  # the same reports, long bodies truncated (long_texts: truncate)
WHOLE = "report_whole"  # the same reports, with the composite record "{title}\n{body}"
DEPTH = 100
RRF_K = 60

TABLE_DDL = """
CREATE SCHEMA bench;
CREATE TABLE bench.reports (id text PRIMARY KEY, title text NOT NULL, body text NOT NULL);
"""


# --------------------------------------------------------------------------- metrics


def ndcg_at(ranked: Sequence[str], gains: dict[str, int], k: int = 10) -> float:
    dcg = sum(gains.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted(gains.values(), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def recall_at(ranked: Sequence[str], gains: dict[str, int], k: int = 100) -> float:
    relevant = {d for d, g in gains.items() if g > 0}
    return len(relevant & set(ranked[:k])) / len(relevant) if relevant else 0.0


def mrr_at(ranked: Sequence[str], gains: dict[str, int], k: int = 10) -> float:
    for i, d in enumerate(ranked[:k]):
        if gains.get(d, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


def rrf(*lists: Sequence[str], k: int = RRF_K) -> list[str]:
    scores: dict[str, float] = {}
    for ranked in lists:
        for i, d in enumerate(ranked):
            scores[d] = scores.get(d, 0.0) + 1.0 / (k + i + 1)
    return sorted(scores, key=lambda d: (-scores[d], d))


# --------------------------------------------------------------------------- runs


def exact_ranking(matrix: np.ndarray, owners: list[str], query: np.ndarray) -> list[str]:
    """Entities by their nearest vector (cosine), exactly."""
    similarity = matrix @ (query / np.linalg.norm(query))
    best: dict[str, float] = {}
    for owner, s in zip(owners, similarity, strict=True):
        if s > best.get(owner, -2.0):
            best[owner] = float(s)
    return sorted(best, key=lambda d: (-best[d], d))[:DEPTH]


def normalise(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def sweep_kind(tokens: int, overlap: int) -> str:
    return f"report_c{tokens}_{overlap}"


def index_corpus(
    url: str,
    corpus: Corpus,
    embedder,
    text_search: str,
    sweep: list[tuple[int, int]],
    composite: bool,
) -> float:
    entity = {
        "name": KIND,
        "model": "bench.quality_corpus:Report",
        "table": "bench.reports",
        "key": "id",
        "text_search": text_search,
    }
    entities = [
        entity,
        {**entity, "name": CUT, "chunking": [{"long_texts": "truncate"}]},
        *([{**entity, "name": WHOLE, "composite": "{title}\n{body}"}] if composite else []),
    ] + [
        {**entity, "name": sweep_kind(t, o), "chunking": [{"tokens": t, "overlap": o}]}
        for t, o in sweep
    ]
    config = parse_config(
        {"entities": entities, "embedding": {"model": embedder.name}},
        "bench",
    )
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(TABLE_DDL)
        with conn.cursor().copy("COPY bench.reports (id, title, body) FROM STDIN") as copy:
            for d in corpus.documents:
                copy.write_row((d.doc_id, d.title, d.body))
    started = time.perf_counter()
    for kind in [e["name"] for e in entities]:
        Backfill(
            url,
            config,
            kind,
            BackfillOptions(batch_size=64, progress_interval=3600, tty=False),
            embedder=embedder,
        ).run()
    return time.perf_counter() - started


def timed(fn: Callable[[], list[str]], times: list[float]) -> list[str]:
    started = time.perf_counter()
    result = fn()
    times.append(time.perf_counter() - started)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs-per-topic", type=int, default=15)
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument(
        "--configs",
        default="simple,english",
        help="text search configurations to compare (comma-separated)",
    )
    add_database_url(parser)
    parser.add_argument(
        "--weights",
        action="append",
        default=[],
        metavar="JSON",
        help="extra hybrid weights to compare, e.g. '{\"lexical\": 0.5}' (repeat)",
    )
    parser.add_argument(
        "--chunking",
        default="",
        metavar="T/O,...",
        help="more chunk sizes to compare: tokens/overlap pairs, e.g. '128/32,256/0'",
    )
    parser.add_argument(
        "--no-composite",
        action="store_true",
        help="leave out the kind with the composite record (a shorter run, e.g. for a sweep)",
    )
    parser.add_argument(
        "--keep-database", action="store_true", help="leave the bench database for inspection"
    )
    parser.add_argument(
        "--backend",
        choices=("auto", "torch", "onnx"),
        default="auto",
        help="embedding.backend of every vector (index and queries), e.g. to compare ONNX int8 "
        "with torch float32 (issue 14)",
    )
    parser.add_argument(
        "--precision",
        choices=("auto", "float32", "bfloat16", "int8"),
        default="auto",
        help="embedding.precision, with --backend",
    )
    args = parser.parse_args()
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    sweep = [
        (int(t), int(o))
        for t, o in (pair.split("/") for pair in args.chunking.split(",") if pair.strip())
    ]

    corpus = generate(args.docs_per_topic, args.seed)
    from idxr_pg.config import EmbeddingSettings

    settings = EmbeddingSettings(backend=args.backend, precision=args.precision)
    embedder = load_embedder(settings)
    service = EmbeddingService(embedder, settings)
    name = f"idxr_bench_quality_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = with_dbname(args.database_url, name)
    runs: dict[str, dict[str, list[str]]] = {}
    latency: dict[str, list[float]] = {}
    try:
        migrations.upgrade(url)
        migrations.set_embedding_dimensions(url, embedder.dimensions)
        composite = not args.no_composite
        index_seconds = index_corpus(url, corpus, embedder, configs[0], sweep, composite)
        query_vectors = [
            e.vector
            for e in service.embed([EmbedRequest(q.query_id, q.text) for q in corpus.queries])
        ]
        tokenizer_tokens = embedder.count_tokens([d.body for d in corpus.documents])
        doc_vectors = normalise(
            np.asarray(embedder.embed([f"{d.title}\n{d.body}" for d in corpus.documents]))
        )
        doc_ids = [d.doc_id for d in corpus.documents]
        with connect(url, autocommit=True) as conn:

            def stored_vectors(kind: str) -> tuple[np.ndarray, list[str]]:
                stored = conn.execute(
                    "SELECT entity_id, embedding FROM idxr.search_index"
                    " WHERE entity_kind = %s AND embedding IS NOT NULL",
                    [kind],
                ).fetchall()
                vectors = np.asarray([r[1].to_numpy() for r in stored], dtype=np.float32)
                return normalise(vectors), [r[0] for r in stored]

            truncated = conn.execute(
                "SELECT count(*) FILTER (WHERE truncation IS NOT NULL), count(*),"
                " (SELECT count(*) FROM idxr.search_index WHERE entity_kind = %s AND chunk > 0)"
                " FROM idxr.search_index"
                " WHERE entity_kind = %s AND subpath(path, 1) = 'body' AND chunk = 0",
                [KIND, CUT],
            ).fetchone()
            matrix, owners = stored_vectors(KIND)
            cut_matrix, cut_owners = stored_vectors(CUT)

            def entity_ids(query: str, params: list) -> list[str]:
                return [r[0] for r in conn.execute(query, params).fetchall()]

            sweep_labels = {sweep_kind(t, o): f"vector (idxr, chunked {t}/{o})" for t, o in sweep}
            for label in (
                "vector (idxr, truncated)",
                "vector (idxr, chunked)",
                *sweep_labels.values(),
                *(["vector (idxr) + composite, fused"] if composite else []),
                "vector exact (numpy)",
                "vector exact (numpy), truncated",
                "doc vector exact (numpy)",
            ):
                runs[label] = {}
            latency["vector"], latency["vector, chunked"] = [], []
            for q, v in zip(corpus.queries, query_vectors, strict=True):
                runs["vector (idxr, truncated)"][q.query_id] = timed(
                    lambda v=v: entity_ids(
                        "SELECT entity_id FROM idxr.search_entities(%s, NULL, %s, %s)",
                        [v, CUT, DEPTH],
                    ),
                    latency["vector"],
                )
                runs["vector (idxr, chunked)"][q.query_id] = timed(
                    lambda v=v: entity_ids(
                        "SELECT entity_id FROM idxr.search_entities(%s, NULL, %s, %s)",
                        [v, KIND, DEPTH],
                    ),
                    latency["vector, chunked"],
                )
                for kind, label in sweep_labels.items():
                    runs[label][q.query_id] = entity_ids(
                        "SELECT entity_id FROM idxr.search_entities(%s, NULL, %s, %s)",
                        [v, kind, DEPTH],
                    )
                if composite:
                    runs["vector (idxr) + composite, fused"][q.query_id] = entity_ids(
                        "SELECT entity_id FROM idxr.search_entities(%s, NULL, %s, %s)",
                        [v, WHOLE, DEPTH],
                    )
                runs["vector exact (numpy)"][q.query_id] = exact_ranking(matrix, owners, v)
                runs["vector exact (numpy), truncated"][q.query_id] = exact_ranking(
                    cut_matrix, cut_owners, v
                )
                order = np.argsort(-(doc_vectors @ (v / np.linalg.norm(v))), kind="stable")
                runs["doc vector exact (numpy)"][q.query_id] = [doc_ids[i] for i in order[:DEPTH]]
            for config in configs:
                for kind in (KIND, CUT, WHOLE)[: 3 if composite else 2]:
                    conn.execute("SELECT idxr.set_text_search_config(%s, %s)", [kind, config])
                conn.execute("ANALYZE idxr.search_index")
                lexical, hybrid, fused = (
                    f"lexical {config}",
                    f"hybrid {config}",
                    f"RRF lexical {config} + doc vector",
                )
                runs[lexical], runs[hybrid], runs[fused] = {}, {}, {}
                latency[lexical], latency[hybrid] = [], []
                for q, v in zip(corpus.queries, query_vectors, strict=True):
                    runs[lexical][q.query_id] = timed(
                        lambda q=q: entity_ids(
                            "SELECT entity_id FROM idxr.text_search_entities(%s, NULL, %s, %s)",
                            [q.text, KIND, DEPTH],
                        ),
                        latency[lexical],
                    )
                    runs[hybrid][q.query_id] = timed(
                        lambda q=q, v=v: entity_ids(
                            "SELECT entity_id FROM idxr.hybrid_search_entities(%s, %s, NULL, %s, %s)",
                            [q.text, v, KIND, DEPTH],
                        ),
                        latency[hybrid],
                    )
                    # The top 10 as an application asks for it (k = 10: the lists are read
                    # less deep than with k = 100); its R@100 is bounded by the 10 rows.
                    runs.setdefault(f"hybrid {config}, k=10", {})[q.query_id] = entity_ids(
                        "SELECT entity_id FROM idxr.hybrid_search_entities(%s, %s, NULL, %s, %s)",
                        [q.text, v, KIND, 10],
                    )
                    runs.setdefault(f"hybrid {config}, truncated", {})[q.query_id] = entity_ids(
                        "SELECT entity_id FROM idxr.hybrid_search_entities(%s, %s, NULL, %s, %s)",
                        [q.text, v, CUT, DEPTH],
                    )
                    if composite:
                        runs.setdefault(f"hybrid {config} + composite record", {})[q.query_id] = (
                            entity_ids(
                                "SELECT entity_id FROM idxr.hybrid_search_entities(%s, %s, NULL, %s, %s)",
                                [q.text, v, WHOLE, DEPTH],
                            )
                        )
                    for extra in args.weights:
                        label = f"hybrid {config} {extra}"
                        runs.setdefault(label, {})[q.query_id] = entity_ids(
                            "SELECT entity_id FROM idxr.hybrid_search_entities("
                            "%s, %s, NULL, %s, %s, NULL, %s::jsonb)",
                            [q.text, v, KIND, DEPTH, extra],
                        )
                    runs[fused][q.query_id] = rrf(
                        runs[lexical][q.query_id], runs["doc vector exact (numpy)"][q.query_id]
                    )[:DEPTH]
    finally:
        if args.keep_database:
            print(f"kept database {name}")
        else:
            drop_database(args.database_url, name)

    report(corpus, runs, latency, embedder, index_seconds, truncated, tokenizer_tokens)


def drop_database(server_url: str, name: str) -> None:
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def report(corpus, runs, latency, embedder, index_seconds, truncated, tokens) -> None:
    load = os.getloadavg()
    late = late_queries(corpus)
    kinds = [*sorted({q.kind for q in corpus.queries}), "late"]
    print(
        f"\nretrieval quality: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs,"
        f" load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {embedder.name}"
        f" ({embedder.max_tokens} tokens; {getattr(embedder, 'backend', '?')}"
        f" {getattr(embedder, 'precision', '?')})"
    )
    long_bodies = sum(1 for t in tokens if t > embedder.max_tokens)
    print(
        f"{len(corpus.documents)} reports (bodies: median {statistics.median(tokens):.0f} tokens,"
        f" {long_bodies} over the window; {truncated[0]}/{truncated[1]} stored truncated by"
        f" {CUT}, {truncated[2]} more chunk rows in {KIND}),"
        f" {len(corpus.queries)} queries ("
        + ", ".join(f"{sum(q.kind == k for q in corpus.queries)} {k}" for k in kinds)
        + f"); indexed in {index_seconds:.1f} s"
    )
    header = f"{'method':36} {'nDCG@10':>8} {'R@100':>6} {'MRR@10':>7}  " + "  ".join(
        f"{k + ' nDCG':>15}" for k in kinds
    )
    print(header)
    print("-" * len(header))
    for label, ranked in runs.items():

        def mean(metric, subset: list[Query], ranked=ranked) -> float:
            return statistics.fmean(metric(ranked[q.query_id], q.relevant) for q in subset)

        everything = corpus.queries
        line = (
            f"{label:36} {mean(ndcg_at, everything):8.3f} {mean(recall_at, everything):6.3f}"
            f" {mean(mrr_at, everything):7.3f}  "
        )
        line += "  ".join(
            f"{mean(ndcg_at, [q for q in [*everything, *late] if q.kind == k]):15.3f}"
            for k in kinds
        )
        print(line)
    print("\nSQL call latency on this index (p50 ms, same run):")
    base = statistics.median(latency["vector"])
    for label, times in latency.items():
        p50 = statistics.median(times)
        print(f"  {label:30} {p50 * 1000:7.1f} ms  {p50 / base:5.2f}x vector")


if __name__ == "__main__":
    main()
