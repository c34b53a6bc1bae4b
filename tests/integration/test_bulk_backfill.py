"""Bulk mode of `idxr-pg backfill` (issue 14): the HNSW index is dropped while an initial load
runs and built once at its end; search stays exact meanwhile; SIGKILL + --resume leaves the
index present and exact."""

from __future__ import annotations

import json
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest

from idxr_pg.config import EmbeddingSettings, load_config
from idxr_pg.db import hnsw
from idxr_pg.db.hnsw_memory import build_memory, graph_megabytes
from idxr_pg.embedding import load_embedder
from idxr_pg.runtime.backfill import Backfill, BackfillError, BackfillOptions
from tests.integration.test_backfill import (
    KIND,
    SLOW_DOCUMENT,
    cli,
    expected_index,
    index_set,
    job_row,
    make_docs,
    spawn,
    sql,
    wait_for_progress,
    write_config,
)


@pytest.fixture
def url(isolated_database_url: str) -> str:
    return isolated_database_url


def index_present(url: str) -> bool:
    with psycopg.connect(url) as conn:
        return hnsw.embedding_index_exists(conn)


class ProbingEmbedder:
    """The deterministic embedder, recording at each call whether the HNSW index exists (a
    wrapper: the loaded embedder is shared by the whole test process)."""

    def __init__(self, url: str, seen: list[bool]) -> None:
        self._inner = load_embedder(EmbeddingSettings(model="deterministic-test"))
        self._url = url
        self._seen = seen

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def embed(self, texts: Any) -> Any:
        self._seen.append(index_present(self._url))
        return self._inner.embed(texts)


def run_backfill(url: str, config_path: Path, seen: list[bool], **options) -> Any:
    config = load_config(config_path)
    runner = Backfill(
        url,
        config,
        KIND,
        BackfillOptions(batch_size=25, **options),
        embedder=ProbingEmbedder(url, seen),  # type: ignore[arg-type]
    )
    return runner.run()


def search_ids(url: str, query: list[float], *, exact: bool) -> list[tuple[str, str]]:
    vector = "[" + ",".join(f"{x:.7f}" for x in query) + "]"
    with psycopg.connect(url) as conn:
        if exact:
            conn.execute("SET enable_indexscan = off")
            rows = conn.execute(
                "SELECT entity_id, path::text FROM idxr.search_index WHERE embedding IS NOT NULL "
                "ORDER BY embedding <=> %s::vector, entity_id, path LIMIT 10",
                [vector],
            ).fetchall()
        else:
            rows = conn.execute(
                "SELECT entity_id, path::text FROM idxr.search(%s::vector, NULL, %s, 10)",
                [vector, KIND],
            ).fetchall()
    return [(r[0], r[1]) for r in rows]


def a_query(url: str) -> list[float]:
    """A stored vector, nudged: its own row must come first."""
    (text,) = sql(
        url,
        "SELECT embedding::text FROM idxr.search_index WHERE entity_id = '7' "
        "AND embedding IS NOT NULL ORDER BY path LIMIT 1",
    )[0]
    vec = np.array(json.loads(text)) + 0.01
    return list(vec / np.linalg.norm(vec))


def test_bulk_mode_on_an_empty_index_drops_it_during_the_load_and_builds_it_after(
    url: str, tmp_path: Path
):
    make_docs(url, 200)
    config = write_config(tmp_path / "idxr.yaml")
    assert index_present(url)
    seen: list[bool] = []
    job = run_backfill(url, config, seen)
    assert job.state == "succeeded"
    assert job.options["bulk"] is True
    assert seen and not any(seen), "the HNSW index was present during the bulk load"
    assert index_present(url)
    assert index_set(url) == expected_index(url)
    query = a_query(url)
    hits = search_ids(url, query, exact=False)
    assert hits == search_ids(url, query, exact=True)[: len(hits)]
    assert hits[0][0] == "7"
    # The build's memory (`auto`, the default) was sized to the vectors it indexed.
    ((vectors,),) = sql(url, "SELECT count(*) FROM idxr.search_index WHERE embedding IS NOT NULL")
    with psycopg.connect(url) as conn:
        assert build_memory(conn, "auto") == f"{graph_megabytes(vectors, 384)}MB"
        assert build_memory(conn, "300MB") == "300MB"


def test_bulk_mode_is_not_taken_when_vectors_exist_unless_asked(url: str, tmp_path: Path):
    make_docs(url, 100)
    config = write_config(tmp_path / "idxr.yaml")
    run_backfill(url, config, [], bulk=False)  # vectors now exist, index kept
    sql(url, "UPDATE public.docs SET title = title || ' changed' WHERE id <= 60")

    seen: list[bool] = []
    job = run_backfill(url, config, seen)
    assert job.options["bulk"] is False
    assert seen and all(seen), "the index was dropped although vectors exist"

    sql(url, "UPDATE public.docs SET title = title || ' again' WHERE id <= 60")
    seen = []
    job = run_backfill(url, config, seen, bulk=True)
    assert job.options["bulk"] is True
    assert seen and not any(seen)
    assert index_present(url)
    assert index_set(url) == expected_index(url)


def test_no_bulk_keeps_the_index_on_an_empty_index(url: str, tmp_path: Path):
    make_docs(url, 60)
    config = write_config(tmp_path / "idxr.yaml")
    seen: list[bool] = []
    job = run_backfill(url, config, seen, bulk=False)
    assert job.options["bulk"] is False
    assert seen and all(seen)


def test_bulk_is_refused_to_a_role_that_does_not_own_the_index(url: str, tmp_path: Path):
    make_docs(url, 10)
    config = write_config(tmp_path / "idxr.yaml")
    role = f"idxr_bulk_{uuid.uuid4().hex[:8]}"
    sql(url, f"CREATE ROLE {role} LOGIN IN ROLE idxr_worker")
    sql(url, f"GRANT SELECT ON public.docs TO {role}")
    params = psycopg.conninfo.conninfo_to_dict(url)
    params["user"] = role
    role_url = psycopg.conninfo.make_conninfo(**params)
    try:
        with psycopg.connect(role_url) as conn:
            assert not hnsw.can_drop_embedding_index(conn)
        with pytest.raises(BackfillError, match="does not own idxr.search_index"):
            run_backfill(role_url, config, [], bulk=True)
        # automatic bulk mode is simply not taken by such a role: the index stays
        job = run_backfill(role_url, config, seen := [])
        assert job.options["bulk"] is False and seen and all(seen)
    finally:
        sql(url, f"DROP OWNED BY {role}")
        sql(url, f"DROP ROLE {role}")


@pytest.mark.slow
def test_sigkill_during_a_bulk_backfill_then_resume_leaves_the_index_present_and_exact(
    url: str, tmp_path: Path
):
    count = 400
    make_docs(url, count)
    config = write_config(tmp_path / "idxr.yaml", document=SLOW_DOCUMENT)
    proc = spawn(url, config, "backfill", KIND, "--batch-size", "20")
    wait_for_progress(url, proc, at_least=60)
    assert not index_present(url)
    status = cli(url, config, "status").stdout
    assert "bulk mode:      on" in status
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    killed_id = job_row(url)[0]
    assert not index_present(url)
    assert "bulk mode:      on" in cli(url, config, "status").stdout

    resumed = json.loads(cli(url, config, "backfill", KIND, "--resume", "--json").stdout)
    assert resumed["state"] == "succeeded"
    assert resumed["resumed_from"] == killed_id
    assert resumed["options"]["bulk"] is True
    assert resumed["done"] == count
    assert index_present(url)
    jobs_rows = sql(url, "SELECT id, state, checkpoint, done, skipped FROM idxr.jobs ORDER BY id")
    assert index_set(url) == expected_index(url), (resumed["failed"], jobs_rows)
    assert "bulk mode" not in cli(url, config, "status").stdout


def test_resume_with_no_bulk_builds_the_missing_index_first(url: str, tmp_path: Path):
    make_docs(url, 50)
    config = write_config(tmp_path / "idxr.yaml")
    with psycopg.connect(url, autocommit=True) as conn:
        hnsw.drop_embedding_index(conn)
    seen: list[bool] = []
    job = run_backfill(url, config, seen, bulk=False)
    assert job.options["bulk"] is False
    assert seen and all(seen)
    assert index_present(url)


def test_the_cli_flags_choose_bulk_mode_and_jobs_note_it(url: str, tmp_path: Path):
    make_docs(url, 30)
    config = write_config(tmp_path / "idxr.yaml")
    first = json.loads(cli(url, config, "backfill", KIND, "--no-bulk", "--json").stdout)
    assert first["options"]["bulk"] is False
    sql(url, "UPDATE public.docs SET title = title || ' changed'")
    forced = json.loads(
        cli(
            url, config, "backfill", KIND, "--bulk", "--maintenance-work-mem", "64MB", "--json"
        ).stdout
    )
    assert forced["options"]["bulk"] is True and forced["state"] == "succeeded"
    assert index_present(url)
    assert index_set(url) == expected_index(url)
    assert "bulk" in cli(url, config, "jobs").stdout
    assert "bulk mode" not in cli(url, config, "status").stdout


def test_two_index_builds_take_turns(url: str, tmp_path: Path):
    """Two bulk loads ending together build the one HNSW index once: the build holds an
    advisory lock, so a second build waits for it and then finds the index."""
    from idxr_pg.db.advisory import HNSW_BUILD_KEY

    make_docs(url, 30)
    run_backfill(url, write_config(tmp_path / "idxr.yaml"), [], bulk=True)
    with (
        psycopg.connect(url, autocommit=True) as holder,
        psycopg.connect(url, autocommit=True) as builder,
    ):
        hnsw.drop_embedding_index(holder)
        holder.execute("SELECT pg_advisory_lock(%s, %s)", HNSW_BUILD_KEY)  # a build under way
        builder.execute("SET lock_timeout = '100ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            hnsw.build_embedding_index(builder, maintenance_work_mem="64MB", parallel_workers=0)
        assert not index_present(url)
        holder.execute("SELECT pg_advisory_unlock(%s, %s)", HNSW_BUILD_KEY)
        assert hnsw.build_embedding_index(builder, maintenance_work_mem="64MB", parallel_workers=0)
        assert not hnsw.build_embedding_index(  # the index is there: nothing to build
            holder, maintenance_work_mem="64MB", parallel_workers=0
        )
    assert index_present(url)


def test_sigkill_during_the_index_build_then_resume_builds_it(url: str, tmp_path: Path):
    """The kill lands inside the build's CREATE INDEX (held waiting on a table lock, so the
    moment is certain): the build's transaction never commits, and --resume builds it."""
    make_docs(url, 100)
    config = write_config(tmp_path / "idxr.yaml", document=SLOW_DOCUMENT)
    proc = spawn(url, config, "backfill", KIND, "--batch-size", "20")
    wait_for_progress(url, proc, at_least=20)  # the index was dropped: loading has begun
    with psycopg.connect(url) as holder:
        # ROW EXCLUSIVE lets the load's writes through but not CREATE INDEX (SHARE)
        holder.execute("LOCK TABLE idxr.search_index IN ROW EXCLUSIVE MODE")
        waiting: list[Any] = []
        for _ in range(600):
            with psycopg.connect(url, autocommit=True) as probe:
                waiting = probe.execute(
                    "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND query LIKE '%%ensure_embedding_indexes%%'"
                ).fetchall()
            if waiting or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert waiting, "the backfill never reached the index build"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        killed_id = job_row(url)[0]
        holder.rollback()
    assert not index_present(url)

    resumed = json.loads(cli(url, config, "backfill", KIND, "--resume", "--json").stdout)
    assert resumed["state"] == "succeeded" and resumed["resumed_from"] == killed_id
    assert resumed["done"] == 100
    assert index_present(url)
    assert index_set(url) == expected_index(url)
