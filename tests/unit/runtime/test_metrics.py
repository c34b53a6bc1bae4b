"""The worker's Prometheus metrics without a database: batch counts, embedding time, the
queue collector's failure path, and the HTTP endpoint."""

from __future__ import annotations

import socket
import urllib.request

import numpy as np
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from idxr_pg.embedding import DeterministicEmbedder
from idxr_pg.records.counts import Counts
from idxr_pg.runtime.metrics import QueueCollector, WorkerMetrics


def samples(metrics: WorkerMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(metrics: WorkerMetrics, name: str, **labels: str) -> float:
    return samples(metrics)[(name, tuple(sorted(labels.items())))]


def test_batches_add_up_per_kind_and_outcome():
    m = WorkerMetrics()
    m.prime(["item", "note"])
    m.observe_batch(
        "item",
        Counts(
            batches=1,
            entities=3,
            indexed=2,
            failed=1,
            dead_lettered=1,
            texts_embedded=4,
            cache_hits=2,
            records_written=9,
            records_deleted=1,
        ),
        0.2,
    )
    m.observe_batch("item", Counts(batches=1, entities=1, unchanged=1, cache_hits=1), 3.0)
    assert value(m, "idxr_entities_processed_total", kind="item", outcome="indexed") == 2
    assert value(m, "idxr_entities_processed_total", kind="item", outcome="unchanged") == 1
    assert value(m, "idxr_entities_processed_total", kind="item", outcome="failed") == 1
    assert value(m, "idxr_dead_letters_total", kind="item") == 1
    assert value(m, "idxr_texts_embedded_total", kind="item") == 4
    assert value(m, "idxr_embedding_cache_hits_total", kind="item") == 3
    assert value(m, "idxr_records_written_total", kind="item") == 9
    assert value(m, "idxr_records_deleted_total", kind="item") == 1
    assert value(m, "idxr_batch_duration_seconds_count", kind="item") == 2
    assert value(m, "idxr_batch_duration_seconds_sum", kind="item") == 3.2
    assert value(m, "idxr_batch_duration_seconds_bucket", kind="item", le="0.25") == 1
    # primed: the other kind is exported at zero before its first batch
    assert value(m, "idxr_entities_processed_total", kind="note", outcome="indexed") == 0
    assert value(m, "idxr_batch_duration_seconds_count", kind="note") == 0


def test_worker_info_names_worker_host_and_version():
    m = WorkerMetrics()
    m.set_worker("host:1:abc", "host")
    [(key, v)] = [(k, v) for k, v in samples(m).items() if k[0] == "idxr_worker_info"]
    labels = dict(key[1])
    assert v == 1 and labels["worker_id"] == "host:1:abc" and labels["host"] == "host"
    assert labels["version"]


def test_timed_embedder_counts_model_calls_and_delegates_the_rest():
    m = WorkerMetrics()
    inner = DeterministicEmbedder()
    timed = m.timed(inner)
    assert (timed.name, timed.version, timed.dimensions) == (
        inner.name,
        inner.version,
        inner.dimensions,
    )
    vectors = timed.embed(["a", "b"])
    assert np.array_equal(vectors, inner.embed(["a", "b"]))
    timed.embed(["c"])
    assert value(m, "idxr_embedding_calls_total") == 2
    assert value(m, "idxr_embedding_seconds_total") > 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_database_reports_queue_down_and_still_serves():
    m = WorkerMetrics()
    m.queue = QueueCollector(f"postgresql://postgres@127.0.0.1:{_free_port()}/x", ["item"])
    m.registry.register(m.queue)
    m.observe_batch("item", Counts(batches=1, entities=1, indexed=1), 0.1)
    port = m.serve(_free_port())
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=20) as r:
            text = r.read().decode()
    finally:
        m.close()
    assert "idxr_queue_up 0.0" in text
    assert "idxr_queue_depth" not in text  # no made-up zeros when the queue cannot be read
    assert 'idxr_entities_processed_total{kind="item",outcome="indexed"} 1.0' in text
