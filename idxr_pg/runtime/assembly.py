"""Assembly: the one place that builds what indexing runs on, for the worker and the backfill.

`assemble` resolves and registers the entity kinds, loads the embedding model (unless one is
given), opens the embedding cache and the `EmbeddingService`, and makes one `Pipeline` per
kind. A kind whose active index version (`idxr_pg.db.versions`) has another model than the
configured one is embedded by that version's model (`version_embedder`). The failure policy (``max_attempts`` and `Backoff` from the worker settings) comes with
it, so both callers record failures the same way (`Assembly.record_failures`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import psycopg

from idxr_pg.config import EmbeddingSettings, IdxrConfig, WorkerSettings
from idxr_pg.db import versions as versions_db
from idxr_pg.db.versions import IndexVersion
from idxr_pg.embedding import Embedder, EmbeddingCache, EmbeddingService, load_embedder
from idxr_pg.indexing import failures
from idxr_pg.indexing.failures import Backoff, FailureOutcome
from idxr_pg.indexing.pipeline import BatchResult, Pipeline
from idxr_pg.indexing.registry import RegisteredKind, register, resolve_kinds
from idxr_pg.records.shape import ShapeChange
from idxr_pg.runtime.superuser import refuse_superuser

__all__ = ["Assembly", "assemble", "version_embedder"]


@dataclass
class Assembly:
    """The embedder, kinds, cache, service and pipelines of one worker or backfill run."""

    embedder: Embedder
    kinds: dict[str, RegisteredKind]
    cache: EmbeddingCache
    service: EmbeddingService
    pipelines: dict[str, Pipeline]
    settings: WorkerSettings
    backoff: Backoff
    schema_changes: dict[str, ShapeChange] = field(default_factory=dict)
    """Kinds whose model changed since their index was built (stale), with what changed."""

    def record_failures(
        self,
        conn: psycopg.Connection,
        result: BatchResult,
        queue_ids: Mapping[str, Sequence[int]] | None = None,
    ) -> list[FailureOutcome]:
        """Record a batch's failures (retry with backoff, then dead letter) in its write
        transaction; ``queue_ids``: the worker's claimed rows per entity."""
        kind = self.kinds[result.kind]
        return failures.record_failures(
            conn,
            kind.name,
            result.failures,
            max_attempts=self.settings.max_attempts,
            backoff=self.backoff,
            queue_ids=queue_ids,
            source_table=kind.source_table,
        )

    def close(self) -> None:
        self.cache.close()


def version_embedder(
    settings: EmbeddingSettings, version: IndexVersion, default: Embedder | None = None
) -> Embedder:
    """The embedder of an index version: ``default`` when it is that model (same name and
    size), else the version's model loaded with the configured backend and precision."""
    if (
        default is not None
        and default.name == version.model_name
        and default.dimensions == version.dimensions
    ):
        return default
    return load_embedder(
        settings.model_copy(update={"model": version.model_source, "dimensions": None})
    )


def assemble(
    conn: psycopg.Connection,
    config: IdxrConfig,
    kind_names: Iterable[str],
    *,
    cache_conninfo: str,
    settings: WorkerSettings | None = None,
    embedder: Embedder | None = None,
    action: str = "index",  # for the superuser refusal: "refusing to <action> as role ..."
) -> Assembly:
    """Resolve and register ``kind_names`` on ``conn``, then build the rest (see module doc).

    The kinds are resolved before the model loads, so a wrong table or key fails fast. The
    cache keeps a connection of its own (``cache_conninfo``); `Assembly.close` closes it.
    A superuser connection is refused first (`refuse_superuser`; ``action`` names the run).
    """
    refuse_superuser(conn, action)
    settings = settings or config.worker
    kinds = resolve_kinds(conn, config, kind_names)
    embedder = embedder or load_embedder(config.embedding)
    embedders = {
        name: version_embedder(config.embedding, active, embedder)
        for name in kinds
        if (active := versions_db.active_version(conn, name)) is not None
    }
    others = {name: e for name, e in embedders.items() if e is not embedder}
    changes = register(
        conn, kinds.values(), embedder, model_source=config.embedding.model, embedders=others
    )
    cache = EmbeddingCache(cache_conninfo)
    service = EmbeddingService(embedder, config.embedding, cache)
    services: dict[int, EmbeddingService] = {id(embedder): service}
    for other in others.values():
        services.setdefault(id(other), EmbeddingService(other, config.embedding, cache))
    return Assembly(
        embedder=embedder,
        kinds=kinds,
        cache=cache,
        service=service,
        pipelines={
            name: Pipeline(kind, services[id(others.get(name, embedder))])
            for name, kind in kinds.items()
        },
        settings=settings,
        backoff=Backoff(settings.backoff_base_seconds, settings.backoff_max_seconds),
        schema_changes=changes,
    )
