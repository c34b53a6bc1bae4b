"""Index versions at run time: building one, keeping it up to date, switching to it.

- `VersionBuild` (``idxr-pg versions create KIND --model M``): a new version of a kind, state
  ``building``, filled by streaming every source key through the kind's pipeline with the new
  model, writing `idxr_pg.db.versions.VersionRows` instead of ``idxr.search_index``. It is a job
  (``idxr.jobs``, type ``version_build``): the checkpoint moves in each batch's write
  transaction, a killed build is resumed by running the same command again, and search keeps
  reading the active version throughout. It holds the kind's backfill lock (one backfill or
  build of a kind at a time).
- Application writes during the build: the worker marks every entity it writes for the kind's
  building and retired versions (``idxr.version_pending``, in its write transaction) and
  re-runs the building version's marks itself after the batch (`drain`); the build drains the
  marks left at its end, and `switch` drains the target's before it switches, so a version is
  exact when it becomes active (a retired one too: its marks wait for a rollback).
- `switch` (``versions activate`` / ``rollback``): holds the kind's workers off (their version
  lock, taken shared per batch), catches the target up, then `idxr_pg.db.versions.activate`
  in one transaction.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import psycopg

from idxr_pg.config import DEFAULT_BACKFILL_BATCH_SIZE, IdxrConfig
from idxr_pg.db import hnsw, jobs, leases, source
from idxr_pg.db import kinds as kinds_db
from idxr_pg.db import versions as versions_db
from idxr_pg.db.connection import connect, conninfo
from idxr_pg.db.jobs import Job
from idxr_pg.db.versions import IndexVersion, VersionError, VersionRows
from idxr_pg.embedding import Embedder, EmbeddingCache, EmbeddingService, load_embedder
from idxr_pg.indexing import schema_state
from idxr_pg.indexing.pipeline import BatchResult, Pipeline
from idxr_pg.indexing.registry import RegisteredKind, resolve_kinds
from idxr_pg.records.counts import Counts
from idxr_pg.runtime.assembly import Assembly, assemble, version_embedder
from idxr_pg.runtime.primary import refuse_read_only
from idxr_pg.runtime.progress import make_progress

__all__ = [
    "BUILD_JOB",
    "BuildOptions",
    "VersionBuild",
    "drain",
    "switch",
    "version_pipeline",
]

log = logging.getLogger(__name__)

BUILD_JOB = "version_build"
"""The ``idxr.jobs.job_type`` of a version build."""


@dataclass(frozen=True)
class BuildOptions:
    batch_size: int = DEFAULT_BACKFILL_BATCH_SIZE
    page_size: int = 500
    progress_interval: float = 10.0
    tty: bool | None = None


def version_pipeline(
    kind: RegisteredKind, version: IndexVersion, service: EmbeddingService
) -> Pipeline:
    """The kind's pipeline writing ``version``'s rows (not the active index)."""
    return Pipeline(kind, service, rows=VersionRows(version.version))


def drain(
    conn: psycopg.Connection,
    pipeline: Pipeline,
    version: int,
    *,
    owner: str,
    lease_seconds: float,
    batch_size: int = 64,
) -> Counts:
    """Re-run the entities marked for ``version`` through ``pipeline`` until none is left or
    only entities leased elsewhere remain (they stay marked). Returns what was done."""
    kind = pipeline.kind.name
    total = Counts()
    while True:
        with conn.transaction():
            marks = versions_db.pending(conn, kind, version, batch_size)
        if not marks:
            return total
        leased = leases.acquire(conn, kind, [i for i, _ in marks], owner, lease_seconds)

        result = pipeline.index(conn, leased, finalize=_clear_marks(kind, version, marks))
        total = total + result.counts
        if result.skipped == len(marks):
            return total  # every one is leased by someone else: try again later


def _clear_marks(
    kind: str, version: int, marks: list[tuple[str, int]]
) -> Callable[[psycopg.Connection, BatchResult], None]:
    """The drain's finalize: an entity done or failed (a failure is the version's own,
    counted in its coverage) loses its mark; one leased elsewhere keeps it for a later pass."""

    def finalize(conn: psycopg.Connection, result: BatchResult) -> None:
        settled = set(result.done_ids) | {f.entity_id for f in result.failures}
        versions_db.clear_pending(conn, kind, version, [m for m in marks if m[0] in settled])

    return finalize


class _Models:
    """Embedding services per model, sharing one cache (loaded on first use)."""

    def __init__(self, config: IdxrConfig, assembly: Assembly) -> None:
        self.config = config
        self.assembly = assembly
        self._services: dict[tuple[str, int], EmbeddingService] = {}

    def service(self, version: IndexVersion) -> EmbeddingService:
        key = (version.model_name, version.dimensions)
        found = self._services.get(key)
        if found is None:
            embedder = version_embedder(self.config.embedding, version, self.assembly.embedder)
            if embedder is self.assembly.embedder:
                found = self.assembly.service
            else:
                found = EmbeddingService(embedder, self.config.embedding, self.assembly.cache)
            self._services[key] = found
        return found


class VersionFollower:
    """The worker's side of index versions, per kind: the pipeline of the active version
    (rebuilt when another version became active) and the building version's drain."""

    def __init__(self, config: IdxrConfig, assembly: Assembly, owner: str) -> None:
        self.assembly = assembly
        self.owner = owner
        self._models = _Models(config, assembly)
        self._active: dict[str, int | None] = {}
        self._building: dict[tuple[str, int], Pipeline] = {}

    def active_pipeline(self, conn: psycopg.Connection, name: str) -> Pipeline:
        """The kind's pipeline for its active version (call with the kind's shared lock)."""
        with conn.transaction():
            active = versions_db.active_version(conn, name)
        number = active.version if active else None
        if name in self._active and self._active[name] != number and active is not None:
            kind = self.assembly.kinds[name]
            self.assembly.pipelines[name] = Pipeline(kind, self._models.service(active))
            log.info(
                "%s: index version %d is active now; indexing with model %s",
                name,
                number,
                active.model_name,
                extra={"entity_kind": name, "version": number},
            )
        self._active[name] = number
        return self.assembly.pipelines[name]

    def drain_building(self, conn: psycopg.Connection, name: str) -> Counts:
        """Re-run the entities marked for the kind's building version (if any)."""
        with conn.transaction():
            building = versions_db.building_version(conn, name)
        if building is None:
            return Counts()
        key = (name, building.version)
        pipeline = self._building.get(key)
        if pipeline is None:
            kind = self.assembly.kinds[name]
            pipeline = version_pipeline(kind, building, self._models.service(building))
            self._building = {key: pipeline}
        return drain(
            conn,
            pipeline,
            building.version,
            owner=self.owner,
            lease_seconds=self.assembly.settings.lease_seconds,
            batch_size=self.assembly.settings.batch_size,
        )


class VersionBuild:
    """One run of ``idxr-pg versions create KIND --model M`` (see the module doc)."""

    def __init__(
        self,
        database_url: str,
        config: IdxrConfig,
        kind_name: str,
        model: str,
        options: BuildOptions | None = None,
        *,
        embedder: Embedder | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        self.database_url = database_url
        self.config = config
        self.kind_name = config.entity(kind_name).name
        self.model = model
        self.options = options or BuildOptions()
        self.should_stop = should_stop
        self._embedder = embedder
        self.owner = f"version:{kind_name}"

    def _conninfo(self, role: str) -> str:
        return conninfo(self.database_url, f"idxr-version {self.kind_name} {role}")

    def run(self) -> IndexVersion:
        """Build (or resume) the version to its end; returns it (state building, complete).
        Raises `VersionError` when it cannot start, `BuildInterrupted` when stopped."""
        name = self.kind_name
        with connect(self._conninfo("control"), autocommit=True) as control:
            refuse_read_only(control, f"build a version of {name!r}")
            if not jobs.try_lock_kind(control, name):
                raise VersionError(
                    f"a backfill or version build of {name!r} is running; wait for it to end"
                )
            jobs.reconcile_abandoned(control, BUILD_JOB)
            assembly = assemble(
                control,
                self.config,
                [name],
                cache_conninfo=self._conninfo("cache"),
                action="build an index version",
            )
            try:
                return self._run(control, assembly)
            finally:
                assembly.close()

    def _embedder_for_model(self) -> Embedder:
        if self._embedder is not None:
            return self._embedder
        settings = self.config.embedding.model_copy(
            update={"model": self.model, "dimensions": None}
        )
        return load_embedder(settings)

    def _version(
        self, control: psycopg.Connection, kind: RegisteredKind, embedder: Embedder
    ) -> tuple[IndexVersion, Job | None]:
        """The building version to fill (created now, or the one a killed build left) and
        the job to resume (None: start at the first key)."""
        name = kind.name
        building = versions_db.building_version(control, name)
        if building is not None:
            if building.model_name != embedder.name or building.dimensions != embedder.dimensions:
                raise self._other_build(building)
            previous = jobs.latest_job(control, name, BUILD_JOB)
            resumable = (
                previous
                if previous is not None
                and previous.options.get("version") == building.version
                and previous.state in jobs.RESUMABLE_STATES
                else None
            )
            return building, resumable
        with control.transaction():
            kinds_db.upsert_embedding_model(
                control, embedder.name, embedder.version, embedder.dimensions, embedder.max_tokens
            )
            number = versions_db.create_version(
                control,
                name,
                model=embedder.name,
                source=self.model,
                model_version=str(embedder.version or ""),
                dimensions=embedder.dimensions,
                backend=getattr(embedder, "backend", None),
                precision=getattr(embedder, "precision", None),
                fingerprint=schema_state.current_schema(kind)[0],
            )
        if hnsw.can_drop_embedding_index(control):
            hnsw.ensure_index(control, embedder.dimensions)
        else:
            log.warning(
                "this role does not own idxr.search_index: the HNSW index of %d-dimensional "
                "vectors is created by the next `idxr-pg migrate` (until then the version's "
                "search, once active, is exact)",
                embedder.dimensions,
            )
        created = versions_db.get_version(control, name, number)
        assert created is not None
        return created, None

    def _other_build(self, building: IndexVersion) -> VersionError:
        name = self.kind_name
        return VersionError(
            f"entity kind {name!r} already has version {building.version} being built "
            f"with model {building.model_source!r}: resume it with `idxr-pg versions "
            f"create {name} --model {building.model_source}`, or drop it first "
            f"(`idxr-pg versions drop {name} {building.version}`)"
        )

    def _run(self, control: psycopg.Connection, assembly: Assembly) -> IndexVersion:
        name = self.kind_name
        kind = assembly.kinds[name]
        building = versions_db.building_version(control, name)
        if building is not None and building.model_source != self.model:
            raise self._other_build(building)
        embedder = self._embedder_for_model()
        version, previous = self._version(control, kind, embedder)
        service = (
            assembly.service
            if embedder is assembly.embedder
            else EmbeddingService(embedder, self.config.embedding, assembly.cache)
        )
        pipeline = version_pipeline(kind, version, service)
        total = source.count_keys(control, kind)
        checkpoint = previous.checkpoint if previous else None
        base = previous.counts if previous else Counts()
        job = jobs.create_job(
            control,
            name,
            options={"version": version.version, "model": self.model},
            total=total,
            checkpoint=checkpoint,
            counts=base,
            resumed_from=previous.id if previous else None,
            job_type=BUILD_JOB,
        )
        with control.transaction():
            versions_db.set_build_job(control, name, version.version, job.id)
        log.info(
            "building version %d of %s with model %s (%d dimensions): job #%d, %d rows%s",
            version.version,
            name,
            embedder.name,
            embedder.dimensions,
            job.id,
            total,
            f", resuming job #{previous.id} after key {checkpoint!r}" if previous else "",
            extra={"entity_kind": name, "job_id": job.id, "version": version.version},
        )
        progress = make_progress(
            f"version {version.version} of {name}",
            total=total,
            done=base.entities,
            extra={"entity_kind": name, "job_id": job.id},
            tty=self.options.tty,
            interval=self.options.progress_interval,
        )
        started = time.monotonic()
        counts = base
        try:
            with (
                connect(self._conninfo("work"), autocommit=True) as work,
                connect(self._conninfo("keys"), autocommit=True, vector=False) as keys,
            ):
                pages = source.iter_key_pages(
                    keys, kind, after=checkpoint, page_size=self.options.page_size
                )
                for page in pages:
                    for start in range(0, len(page), self.options.batch_size):
                        if self.should_stop():
                            raise _Stopped
                        batch = page[start : start + self.options.batch_size]
                        counts = counts + self._batch(
                            work, pipeline, job, batch, started, base, counts
                        )
                        progress.update(counts, total, _rate(counts, base, started))
                drained = drain(
                    work,
                    pipeline,
                    version.version,
                    owner=self.owner,
                    lease_seconds=assembly.settings.lease_seconds,
                    batch_size=self.options.batch_size,
                )
                counts = counts + drained.replace(entities=0)
        except _Stopped:
            progress.close()
            jobs.finish_job(control, job.id, jobs.INTERRUPTED, rate=_rate(counts, base, started))
            raise BuildInterrupted(name, version, self.model) from None
        except BaseException as exc:
            progress.close()
            # If this fails too, the next build marks the job interrupted (its lock is gone).
            with contextlib.suppress(psycopg.Error):
                jobs.finish_job(control, job.id, jobs.FAILED, error=f"{type(exc).__name__}: {exc}")
            raise
        progress.close()
        jobs.finish_job(control, job.id, jobs.SUCCEEDED, rate=_rate(counts, base, started))
        seconds = sum(
            j.duration_seconds
            for j in jobs.list_jobs(control, entity_kind=name, limit=1000)
            if j.job_type == BUILD_JOB and j.options.get("version") == version.version
        )
        # Coverage against the rows there are now (writes went on during the build); an
        # entity a worker held when the build passed it is completed by the worker's drain.
        entities = versions_db.version_entities(control, name, version.version)
        rows_now = source.count_keys(control, kind)
        with control.transaction():
            versions_db.finish_build(
                control,
                name,
                version.version,
                texts=counts.texts_embedded,
                seconds=seconds,
                coverage=min(1.0, entities / rows_now) if rows_now else 1.0,
            )
        done = versions_db.get_version(control, name, version.version)
        assert done is not None
        log.info(
            "version %d of %s built: %d entities, %d texts embedded, %.1fs; activate it with "
            "`idxr-pg versions activate %s %d`",
            version.version,
            name,
            entities,
            counts.texts_embedded,
            seconds,
            name,
            version.version,
            extra={"entity_kind": name, "job_id": job.id, "version": version.version},
        )
        return done

    def _batch(
        self,
        work: psycopg.Connection,
        pipeline: Pipeline,
        job: Job,
        ids: list[str],
        started: float,
        base: Counts,
        counts: Counts,
    ) -> Counts:
        leased = leases.acquire(
            work, self.kind_name, ids, self.owner, self.config.worker.lease_seconds
        )
        rate = _rate(counts, base, started)

        def finalize(conn: psycopg.Connection, result: BatchResult) -> None:
            jobs.advance_job(conn, job.id, result.counts, checkpoint=ids[-1], rate=rate)

        return pipeline.index(work, leased, finalize=finalize).counts


def _rate(counts: Counts, base: Counts, started: float) -> float | None:
    elapsed = time.monotonic() - started
    done = counts.entities - base.entities
    return done / elapsed if elapsed > 0 and done > 0 else None


class _Stopped(Exception):
    pass


class BuildInterrupted(VersionError):
    """Stopped on request; running the same command again resumes after the checkpoint."""

    def __init__(self, kind: str, version: IndexVersion, model: str) -> None:
        super().__init__(
            f"build of version {version.version} of {kind!r} interrupted; resume it with "
            f"`idxr-pg versions create {kind} --model {model}`"
        )


def switch(
    database_url: str,
    config: IdxrConfig,
    kind_name: str,
    version: int,
    *,
    embedder: Embedder | None = None,
) -> tuple[int | None, IndexVersion]:
    """Make ``version`` active (after re-running its marked entities); returns the version it
    replaced and the one now active. A building version must have finished its build."""
    name = config.entity(kind_name).name
    url = conninfo(database_url, f"idxr-version {name} switch")
    with connect(url, autocommit=True) as conn:
        refuse_read_only(conn, f"switch the index version of {name!r}")
        target = versions_db.get_version(conn, name, version)
        if target is None:
            known = ", ".join(str(v.version) for v in versions_db.list_versions(conn, name))
            raise VersionError(
                f"entity kind {name!r} has no version {version} (versions: {known or 'none'})"
            )
        if target.state == versions_db.ACTIVE:
            raise VersionError(f"version {version} of {name!r} is already active")
        if target.state == versions_db.BUILDING and target.build_state != jobs.SUCCEEDED:
            raise VersionError(
                f"version {version} of {name!r} has not finished building (build "
                f"{target.build_state or 'not started'}): run `idxr-pg versions create {name} "
                f"--model {target.model_source}` to finish it"
            )
        if not jobs.try_lock_kind(conn, name):
            raise VersionError(
                f"a backfill or version build of {name!r} is running; switch after it ends"
            )
        cache: EmbeddingCache | None = None
        try:
            # Hold the kind's workers off (their batch in flight ends first): no entity of
            # the kind is written or marked until the switch commits, so catching the target
            # up leaves nothing behind. Application writes go on (into the queue).
            versions_db.lock_kind_exclusive(conn, name)
            if versions_db.pending(conn, name, version, 1):
                cache = EmbeddingCache(conninfo(database_url, f"idxr-version {name} cache"))
                pipeline = _switch_pipeline(conn, config, target, cache, embedder)
                drain(
                    conn,
                    pipeline,
                    version,
                    owner=f"version:{name}",
                    lease_seconds=config.worker.lease_seconds,
                )
            with conn.transaction():
                previous = versions_db.activate(conn, name, version)
            active = versions_db.get_version(conn, name, version)
            assert active is not None
            return previous, active
        finally:
            if not (conn.closed or conn.broken):
                versions_db.unlock_kind_exclusive(conn, name)
                jobs.unlock_kind(conn, name)
            if cache is not None:
                cache.close()


def _switch_pipeline(
    conn: psycopg.Connection,
    config: IdxrConfig,
    target: IndexVersion,
    cache: EmbeddingCache,
    embedder: Embedder | None,
) -> Pipeline:
    """The pipeline that catches ``target`` up before the switch (its own model)."""
    kind = resolve_kinds(conn, config, [target.entity_kind])[target.entity_kind]
    model = embedder or version_embedder(config.embedding, target)
    return version_pipeline(kind, target, EmbeddingService(model, config.embedding, cache))
