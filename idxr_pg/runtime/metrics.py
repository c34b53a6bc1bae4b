"""Prometheus metrics of one worker: ``idxr-pg worker --metrics-port PORT`` serves /metrics.

Two sources, each read where it is true:

- **Work done** (counters, label ``kind``; the batch-duration histogram): fed by the worker's
  `Worker.on_batch` hook with each batch's `Counts` and its seconds, the same value it adds to
  its totals, so the metrics and the worker's summary never disagree.
- **The queue** (gauges per kind: depth, queued entities, age of the oldest change): read from
  the ``idxr.stale`` view on each scrape, by a custom collector on its own connection, with a
  short statement timeout. Read at scrape time rather than refreshed by the worker loop because
  the lag matters most when the worker is stuck (a long batch, a hung model, a lost
  connection): a loop-refreshed gauge would freeze at its last good value exactly then. If the
  query fails, ``idxr_queue_up`` is 0 and the queue gauges are left out of that scrape.
- **Embedding seconds**: `TimedEmbedder` wraps the worker's embedder and times each model call.

The metrics live in their own `CollectorRegistry` (one per worker), never the process-global
one, so several workers (or tests) in one process do not collide.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np
import psycopg
from prometheus_client import CollectorRegistry, Counter, Histogram, Info, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from idxr_pg.db.connection import connect, conninfo, reopened
from idxr_pg.db.status import queue_gauges
from idxr_pg.embedding import Embedder
from idxr_pg.records.counts import Counts

__all__ = ["QueueCollector", "TimedEmbedder", "WorkerMetrics", "package_version"]

log = logging.getLogger(__name__)

SCRAPE_TIMEOUT_SECONDS = 2.0  # statement timeout of the queue query of one scrape
# Batch durations: a batch of 64 entities takes from milliseconds (unchanged) to minutes
# (a cold model on CPU over long texts).
BATCH_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# Outcomes of an entity, the fields of `Counts` that add up to ``entities``.
OUTCOMES = ("indexed", "unchanged", "deleted", "skipped", "failed")


def package_version() -> str:
    try:
        return version("idxr-pg")
    except PackageNotFoundError:  # a source checkout that is not installed
        return "unknown"


class TimedEmbedder:
    """An `Embedder` that adds the seconds of each model call (``embed``, ``embed_token_ids``)
    to a counter; every other attribute (name, version, cache key, dimensions...) is the
    wrapped embedder's."""

    def __init__(self, inner: Embedder, seconds: Counter, calls: Counter) -> None:
        self._inner = inner
        self._seconds = seconds
        self._calls = calls

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self._timed(self._inner.embed, texts)

    def embed_token_ids(self, ids: Sequence[Sequence[int]]) -> np.ndarray:
        return self._timed(self._inner.embed_token_ids, ids)  # type: ignore[attr-defined]

    def _timed(self, call: Any, argument: Any) -> np.ndarray:
        started = time.perf_counter()
        try:
            return call(argument)
        finally:
            self._seconds.inc(time.perf_counter() - started)
            self._calls.inc()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class QueueCollector(Collector):
    """Queue gauges per kind, read from the database on each scrape (see the module doc)."""

    def __init__(
        self,
        database_url: str,
        kinds: Sequence[str],
        *,
        application_name: str = "idxr-worker metrics",
        timeout_seconds: float = SCRAPE_TIMEOUT_SECONDS,
    ) -> None:
        self.database_url = database_url
        self.kinds = list(kinds)
        self.application_name = application_name
        self.timeout_seconds = timeout_seconds
        self._conn: psycopg.Connection | None = None
        self._lock = threading.Lock()  # one scrape at a time on the one connection

    def describe(self) -> list[Any]:
        return []  # the families depend on the database; don't query it at registration

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily(
            "idxr_queue_up", "1 if the last scrape could read the queue from idxr.stale, else 0"
        )
        try:
            rows = self._read()
        except Exception as exc:
            log.warning("metrics: cannot read the queue: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        depth = GaugeMetricFamily(
            "idxr_queue_depth", "Queued changes not yet processed", labels=["kind"]
        )
        entities = GaugeMetricFamily(
            "idxr_queue_entities", "Distinct entities with queued changes", labels=["kind"]
        )
        lag = GaugeMetricFamily(
            "idxr_queue_oldest_change_age_seconds",
            "Age of the oldest queued change (0 when the queue is empty): the indexing lag",
            labels=["kind"],
        )
        by_kind = {row.entity_kind: row for row in rows}
        for name in sorted(set(self.kinds) | set(by_kind)):
            row = by_kind.get(name)
            depth.add_metric([name], row.queued_changes if row else 0)
            entities.add_metric([name], row.queued_entities if row else 0)
            lag.add_metric([name], max(0.0, row.lag_seconds) if row else 0.0)
        yield depth
        yield entities
        yield lag

    def _read(self) -> list[Any]:
        with self._lock:
            self._conn = reopened(
                self._conn,
                lambda: connect(
                    conninfo(self.database_url, self.application_name),
                    autocommit=True,
                    vector=False,
                ),
            )
            try:
                return queue_gauges(self._conn, self.timeout_seconds)
            except Exception:
                self._conn.close()  # a fresh connection next scrape
                self._conn = None
                raise

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class WorkerMetrics:
    """The metrics of one worker, in a registry of their own; `serve` starts /metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.info = Info("idxr_worker", "The worker behind these metrics", registry=r)
        self.entities = Counter(
            "idxr_entities_processed",
            "Entities processed, by outcome (indexed, unchanged, deleted, skipped, failed)",
            ["kind", "outcome"],
            registry=r,
        )
        self.dead_letters = Counter(
            "idxr_dead_letters",
            "Failed entities parked as dead letters (retries exhausted)",
            ["kind"],
            registry=r,
        )
        self.texts = Counter(
            "idxr_texts_embedded",
            "Distinct texts the model embedded (embedding-cache misses)",
            ["kind"],
            registry=r,
        )
        self.cache_hits = Counter(
            "idxr_embedding_cache_hits", "Texts served by the embedding cache", ["kind"], registry=r
        )
        self.records_written = Counter(
            "idxr_records_written", "Index rows inserted or updated", ["kind"], registry=r
        )
        self.records_deleted = Counter(
            "idxr_records_deleted", "Index rows removed", ["kind"], registry=r
        )
        self.batch_seconds = Histogram(
            "idxr_batch_duration_seconds",
            "Seconds of one batch: claim, load, embed, write",
            ["kind"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.embedding_seconds = Counter(
            "idxr_embedding_seconds", "Seconds spent in model calls", registry=r
        )
        self.embedding_calls = Counter("idxr_embedding_calls", "Model calls", registry=r)
        self.queue: QueueCollector | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def set_worker(self, worker_id: str, host: str) -> None:
        self.info.info({"worker_id": worker_id, "host": host, "version": package_version()})

    def watch_queue(self, database_url: str, kinds: Sequence[str], worker_id: str) -> None:
        """Add the queue gauges of ``kinds`` (read from the database on each scrape)."""
        self.queue = QueueCollector(
            database_url, kinds, application_name=f"idxr-worker metrics {worker_id}"
        )
        self.registry.register(self.queue)

    def timed(self, embedder: Embedder) -> TimedEmbedder:
        """``embedder`` with its model calls counted in ``idxr_embedding_seconds_total``."""
        return TimedEmbedder(embedder, self.embedding_seconds, self.embedding_calls)

    def observe_batch(self, kind: str, counts: Counts, seconds: float) -> None:
        """One batch's counts and duration (the worker's `on_batch` hook)."""
        for outcome in OUTCOMES:
            self.entities.labels(kind, outcome).inc(getattr(counts, outcome))
        self.dead_letters.labels(kind).inc(counts.dead_lettered)
        self.texts.labels(kind).inc(counts.texts_embedded)
        self.cache_hits.labels(kind).inc(counts.cache_hits)
        self.records_written.labels(kind).inc(counts.records_written)
        self.records_deleted.labels(kind).inc(counts.records_deleted)
        self.batch_seconds.labels(kind).observe(seconds)

    def prime(self, kinds: Sequence[str]) -> None:
        """Export every counter of ``kinds`` at 0 from the start (rate() needs a first value)."""
        per_kind = (
            self.dead_letters,
            self.texts,
            self.cache_hits,
            self.records_written,
            self.records_deleted,
            self.batch_seconds,
        )
        for kind in kinds:
            for outcome in OUTCOMES:
                self.entities.labels(kind, outcome)
            for family in per_kind:
                family.labels(kind)

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve /metrics on ``host:port`` in a daemon thread; returns the port bound."""
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        return int(self._server.server_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self.queue is not None:
            self.queue.close()
