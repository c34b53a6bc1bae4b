"""`idxr-pg backfill`: checkpoints, SIGKILL + --resume, SIGTERM, no work for unchanged rows,
--force, the deleted-entity sweep, failures handed to the retry queue, and the real model."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
import yaml
from click.testing import CliRunner
from pydantic import BaseModel

from idxr_pg.cli import main
from idxr_pg.config import EmbeddingSettings
from idxr_pg.db import jobs
from idxr_pg.db.connection import connect
from idxr_pg.records.traverse import flatten
from tests.integration.worker_support import IDXR, ROOT, subprocess_env

KIND = "doc"


class Doc(BaseModel):
    """The entity of these tests (imported by the backfill subprocesses by dotted path)."""

    id: int
    title: str
    body: str | None = None
    n: int


DDL = """
CREATE TABLE public.docs (
    id    integer PRIMARY KEY,
    title text,
    body  text,
    n     integer NOT NULL
);
"""
# Every text is distinct, so "texts embedded" counts are exact per entity.
ROWS = """
INSERT INTO public.docs (id, title, body, n)
SELECT g, 'title of document ' || g,
       CASE WHEN g %% 4 = 0 THEN NULL ELSE 'the body text of document number ' || g END, g %% 10
FROM generate_series(%(first)s::integer, %(last)s::integer) AS g
"""
# A document loader that takes ~2 ms per row, so a backfill lasts long enough to be killed.
# (The sleep sits in the select list, so it runs only for the rows asked for.)
SLOW_DOCUMENT = (
    "SELECT d.id, CASE WHEN pg_sleep(0.002) IS NULL THEN NULL ELSE to_jsonb(d) END "
    "FROM public.docs AS d WHERE d.id = ANY(%(keys)s::integer[])"
)


def write_config(
    path: Path, *, model: str = "deterministic-test", document: str | None = None
) -> Path:
    entity: dict[str, Any] = {
        "name": KIND,
        "model": f"{__name__}:Doc",
        "table": "public.docs",
        "key": "id",
    }
    if document:
        entity["document"] = document
    data = {"entities": [entity], "embedding": {"model": model}, "backfill": {"batch_size": 25}}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def sql(url: str, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(statement, params)
        return cur.fetchall() if cur.description else []


def make_docs(url: str, count: int) -> None:
    sql(url, DDL)
    sql(url, ROWS, {"first": 1, "last": count})


def expected_index(url: str) -> set[tuple[str, str, str]]:
    """(entity_id, path, content_hash) of the flattening of every current source row."""
    out = set()
    for key, document in sql(url, "SELECT id, to_jsonb(d) FROM public.docs AS d"):
        for record in flatten(Doc.model_validate(document), KIND):
            out.add((str(key), record.path, record.content_hash))
    return out


def embeddable_texts(url: str, where: str = "TRUE") -> int:
    """How many embeddable records the rows matching ``where`` flatten to."""
    total = 0
    for (document,) in sql(url, f"SELECT to_jsonb(d) FROM public.docs AS d WHERE {where}"):
        total += sum(r.embeddable for r in flatten(Doc.model_validate(document), KIND))
    return total


def index_rows(url: str) -> dict[tuple[str, str], tuple[str, Any, int, bool]]:
    """(entity_id, path) -> (content_hash, updated_at, xmin, has_embedding)."""
    rows = sql(
        url,
        "SELECT entity_id, path::text, content_hash, updated_at, xmin::text::bigint, "
        "embedding IS NOT NULL FROM idxr.search_index WHERE entity_kind = %s",
        [KIND],
    )
    return {(r[0], r[1]): (r[2], r[3], r[4], r[5]) for r in rows}


def index_set(url: str) -> set[tuple[str, str, str]]:
    return {(e, p, v[0]) for (e, p), v in index_rows(url).items()}


def cli(url: str, config: Path, *args: str, exit_code: int = 0) -> Any:
    result = CliRunner().invoke(
        main, ["--database-url", url, "--config", str(config), *args], catch_exceptions=False
    )
    assert result.exit_code == exit_code, result.output
    return result


def backfill_json(url: str, config: Path, *args: str) -> dict[str, Any]:
    result = cli(url, config, "backfill", KIND, "--json", *args)
    return json.loads(result.stdout)


def spawn(url: str, config: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [IDXR, "--database-url", url, "--config", str(config), *args],
        cwd=ROOT,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def job_row(url: str) -> tuple[int, str, str | None, int] | None:
    rows = sql(
        url,
        "SELECT id, state, checkpoint, done FROM idxr.jobs WHERE entity_kind = %s "
        "ORDER BY id DESC LIMIT 1",
        [KIND],
    )
    return rows[0] if rows else None


def wait_for_backends_to_go(url: str) -> None:
    """After a kill, PostgreSQL notices the closed sockets a moment later: wait for that."""
    deadline = time.monotonic() + 30
    query = (
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    while sql(url, query)[0][0]:
        assert time.monotonic() < deadline, "the killed backfill's sessions did not end"
        time.sleep(0.05)


def wait_for_progress(url: str, proc: subprocess.Popen[str], at_least: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        row = job_row(url)
        if row is not None and row[3] >= at_least:
            return
        if proc.poll() is not None:
            raise AssertionError(f"backfill ended early: {proc.communicate()}")
        time.sleep(0.05)
    raise AssertionError("the backfill made no progress")


@pytest.fixture
def url(isolated_database_url: str) -> str:
    return isolated_database_url


# --------------------------------------------------------------------------- in-process runs


def test_backfill_indexes_every_row_and_a_second_run_does_nothing(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from idxr_pg.embedding import load_embedder

    make_docs(url, 120)
    config = write_config(tmp_path / "idxr.yaml")
    # count the model calls of the (per-process) embedder the in-process backfill uses
    embedder = load_embedder(EmbeddingSettings(model="deterministic-test"))
    calls: list[int] = []
    real_embed = embedder.embed

    def counting_embed(texts):
        calls.append(len(texts))
        return real_embed(texts)

    monkeypatch.setattr(embedder, "embed", counting_embed)

    first = backfill_json(url, config)
    assert first["state"] == "succeeded"
    assert first["total"] == first["done"] == 120
    assert first["checkpoint"] == "120"
    assert index_set(url) == expected_index(url)
    assert first["records_written"] == len(expected_index(url))
    assert first["embedded"] + first["cache_hits"] == embeddable_texts(url)
    assert first["embedded"] > 0 and first["unchanged"] == 0
    assert sum(calls) == first["embedded"]
    calls.clear()
    before = index_rows(url)
    cache_before = sql(url, "SELECT count(*) FROM idxr.embedding_cache")

    second = backfill_json(url, config)
    assert second["state"] == "succeeded" and second["done"] == 120
    # zero embedding calls and zero row writes, and the job says so
    assert second["embedded"] == 0 and second["cache_hits"] == 0
    assert second["records_written"] == 0 and second["records_deleted"] == 0
    assert second["unchanged"] == 120 and second["deleted"] == 0 and second["failed"] == 0
    assert calls == []  # the model was not called at all
    assert index_rows(url) == before  # same updated_at and xmin: no row was rewritten
    assert sql(url, "SELECT count(*) FROM idxr.embedding_cache") == cache_before
    stored = sql(
        url, "SELECT embedded, records_written FROM idxr.jobs WHERE id = %s", [second["id"]]
    )
    assert stored == [(0, 0)]


def test_force_rewrites_every_record(url: str, tmp_path: Path):
    make_docs(url, 40)
    config = write_config(tmp_path / "idxr.yaml")
    backfill_json(url, config)
    before = index_rows(url)

    forced = backfill_json(url, config, "--force")
    assert forced["options"]["force"] is True
    assert forced["options"]["batch_size"] == 25  # the config's backfill.batch_size
    assert forced["records_written"] == len(before)
    # every embeddable text is embedded again (the cache answers for this same model)
    assert forced["embedded"] + forced["cache_hits"] == embeddable_texts(url)
    after = index_rows(url)
    assert {k: v[0] for k, v in after.items()} == {k: v[0] for k, v in before.items()}
    assert all(after[k][1] > before[k][1] for k in before)


def test_full_backfill_removes_entities_whose_rows_are_gone(url: str, tmp_path: Path):
    make_docs(url, 60)
    config = write_config(tmp_path / "idxr.yaml")
    backfill_json(url, config)
    # no capture triggers here: only the backfill can notice these changes
    sql(url, "DELETE FROM public.docs WHERE id IN (3, 30, 59, 60)")
    sql(url, "UPDATE public.docs SET title = 'a brand new title' WHERE id = 7")
    sql(url, ROWS, {"first": 61, "last": 62})

    job = backfill_json(url, config)
    assert job["deleted"] == 4
    assert job["records_deleted"] >= 4 * 3
    assert job["done"] == job["total"] == 58
    assert job["embedded"] == 1 + embeddable_texts(url, "id > 60")
    assert index_set(url) == expected_index(url)
    assert not {e for e, _, _ in index_set(url)} & {"3", "30", "59", "60"}


def test_failing_rows_are_handed_to_the_retry_queue(url: str, tmp_path: Path):
    make_docs(url, 30)
    sql(url, "UPDATE public.docs SET title = NULL WHERE id IN (5, 17)")  # fails validation
    config = write_config(tmp_path / "idxr.yaml")
    result = cli(url, config, "backfill", KIND)
    assert "backfill of doc succeeded" in result.stdout
    assert "2 failed" in result.stdout
    assert "warning: 2 entities failed" in result.stderr
    job = json.loads(cli(url, config, "jobs", "--json").stdout)[0]
    assert job["failed"] == 2 and job["done"] == 30 and job["state"] == "succeeded"
    queued = sql(
        url,
        "SELECT entity_id, attempts, operation, last_error LIKE 'validate:%%' FROM idxr.queue "
        "WHERE entity_kind = %s ORDER BY entity_id",
        [KIND],
    )
    assert queued == [("17", 1, "retry", True), ("5", 1, "retry", True)]
    assert {e for e, _, _ in index_set(url)} == {str(i) for i in range(1, 31)} - {"5", "17"}


def test_resume_and_concurrency_errors(url: str, tmp_path: Path):
    make_docs(url, 10)
    config = write_config(tmp_path / "idxr.yaml")
    nothing = cli(url, config, "backfill", KIND, "--resume", exit_code=1)
    assert "nothing to resume: no backfill of 'doc' has run yet" in nothing.output
    backfill_json(url, config)
    finished = cli(url, config, "backfill", KIND, "--resume", exit_code=1)
    assert "nothing to resume: the latest backfill of 'doc'" in finished.output
    assert "is succeeded" in finished.output

    holder = connect(url, autocommit=True)
    try:
        assert jobs.try_lock_kind(holder, KIND)
        busy = cli(url, config, "backfill", KIND, exit_code=1)
        assert "another backfill of 'doc' is running" in busy.output
    finally:
        holder.close()

    unknown = cli(url, config, "backfill", "nope", exit_code=1)
    assert "unknown entity kind 'nope'" in unknown.output


# --------------------------------------------------------------------------- processes


@pytest.mark.slow
def test_sigkill_then_resume_equals_a_clean_run_without_embedding_twice(url: str, tmp_path: Path):
    count = 1000
    make_docs(url, count)
    config = write_config(tmp_path / "idxr.yaml", document=SLOW_DOCUMENT)
    proc = spawn(url, config, "backfill", KIND, "--batch-size", "20")
    wait_for_progress(url, proc, at_least=200)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    wait_for_backends_to_go(url)

    # the killed run is still marked running until someone notices its lock is gone
    killed_id, state, checkpoint, done = job_row(url)
    assert state == "running" and checkpoint is not None and 200 <= done < count
    listed = json.loads(cli(url, config, "jobs", "--json").stdout)[0]
    assert listed["id"] == killed_id and listed["state"] == "interrupted"
    assert "ended without finishing" in listed["error"]
    killed = listed
    # the checkpoint is exact: everything up to it is indexed (the in-flight batch was not
    # committed, so nothing beyond it)
    at_kill = index_rows(url)
    indexed_ids = {int(e) for e, _ in at_kill}
    assert indexed_ids == set(range(1, int(checkpoint) + 1))
    assert killed["done"] == int(checkpoint)

    resumed = json.loads(cli(url, config, "backfill", KIND, "--resume", "--json").stdout)
    assert resumed["state"] == "succeeded"
    assert resumed["resumed_from"] == killed_id
    assert resumed["done"] == count  # counts continue the killed job's
    # nothing done before the kill was embedded or written again ...
    after = index_rows(url)
    assert all(after[key] == row for key, row in at_kill.items())
    # ... and the resumed part embedded exactly the texts after the checkpoint (the killed
    # in-flight batch may have reached the embedding cache before dying)
    new_texts = embeddable_texts(url, f"id > {int(checkpoint)}")
    assert (resumed["embedded"] - killed["embedded"]) + (
        resumed["cache_hits"] - killed["cache_hits"]
    ) == new_texts
    assert resumed["embedded"] + resumed["cache_hits"] == embeddable_texts(url)
    resumed_index = index_set(url)
    assert resumed_index == expected_index(url)

    # a clean, uninterrupted run over an empty index produces the same index
    sql(url, "DELETE FROM idxr.search_index WHERE entity_kind = %s", [KIND])
    clean = backfill_json(url, config)
    assert clean["resumed_from"] is None and clean["done"] == count
    assert index_set(url) == resumed_index
    assert clean["records_written"] == resumed["records_written"]

    chain = json.loads(cli(url, config, "jobs", "--json", "--kind", KIND).stdout)
    by_id = {job["id"]: job for job in chain}
    assert by_id[killed_id]["resumed_by"] == resumed["id"]


@pytest.mark.slow
def test_sigterm_stops_after_the_batch_and_logs_progress_as_json(url: str, tmp_path: Path):
    count = 600
    make_docs(url, count)
    config = write_config(tmp_path / "idxr.yaml", document=SLOW_DOCUMENT)
    proc = spawn(
        url,
        config,
        "--log-format",
        "json",
        "backfill",
        KIND,
        "--batch-size",
        "20",
        "--progress-interval",
        "0.2",
    )
    wait_for_progress(url, proc, at_least=100)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "resume with: idxr-pg backfill doc --resume" in stderr

    job_id, state, checkpoint, done = job_row(url)
    assert state == "interrupted" and done == int(checkpoint) < count
    assert {int(e) for e, _, _ in index_set(url)} == set(range(1, int(checkpoint) + 1))

    logs = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    started = [r for r in logs if r["message"].startswith("backfill of doc started")]
    assert started and started[0]["entity_kind"] == KIND and started[0]["total"] == count
    progress = [r for r in logs if r["logger"] == "idxr_pg.progress"]
    assert progress, stderr
    assert all(r["entity_kind"] == KIND and r["job_id"] == job_id for r in progress)
    assert all(0 < r["done"] <= count and r["total"] == count for r in progress)
    assert "rate" in progress[-1] and "embedded" in progress[-1]
    assert any(r["message"].startswith("SIGTERM received") for r in logs)

    resumed = json.loads(cli(url, config, "backfill", KIND, "--resume", "--json").stdout)
    assert resumed["state"] == "succeeded" and resumed["done"] == count
    assert index_set(url) == expected_index(url)


# --------------------------------------------------------------------------- the real model


@pytest.mark.model
def test_backfill_with_the_default_model(url: str, tmp_path: Path):
    from idxr_pg.embedding import load_embedder

    make_docs(url, 6)
    sql(url, "UPDATE public.docs SET title = 'Solar panels halve the power bill' WHERE id = 1")
    config = write_config(tmp_path / "idxr.yaml", model="all-MiniLM-L6-v2")
    job = backfill_json(url, config)
    assert job["state"] == "succeeded" and job["done"] == 6
    assert job["embedded"] == embeddable_texts(url)
    assert index_set(url) == expected_index(url)
    assert sql(url, "SELECT model_name FROM idxr.entity_kinds WHERE name = %s", [KIND]) == [
        ("all-MiniLM-L6-v2",)
    ]
    embedder = load_embedder(EmbeddingSettings())
    (stored,) = sql(
        url,
        "SELECT embedding::text FROM idxr.search_index WHERE entity_kind = %s "
        "AND entity_id = '1' AND path = 'doc.title'",
        [KIND],
    )[0]
    vector = np.array(json.loads(stored), dtype=np.float32)
    fresh = embedder.embed(["doc.title: Solar panels halve the power bill"])[0]
    assert float(vector @ fresh) > 0.99

    again = backfill_json(url, config)
    assert again["embedded"] == again["records_written"] == 0 and again["unchanged"] == 6
