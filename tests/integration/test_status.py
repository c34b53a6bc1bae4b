"""`idxr-pg status`, `stale` and `jobs` (human and --json), and the idxr.status / idxr.stale views."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from idxr_pg.cli import main
from idxr_pg.db import jobs
from idxr_pg.db.connection import connect
from idxr_pg.db.jobs import job_counts as JobCounts

CONFIG = """
embedding:
  model: deterministic-test
worker:
  poll_interval: 1
entities:
  - name: alpha
    model: tests.nowhere:Alpha
    table: public.alphas
    key: id
    refresh: every 5m
  - name: beta
    model: tests.nowhere:Beta
    table: public.betas
    key: id
    refresh: manual
"""


def cli(url: str, config: Path, *args: str):
    result = CliRunner().invoke(
        main, ["--database-url", url, "--config", str(config), *args], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "idxr.yaml"
    path.write_text(CONFIG)
    return path


@pytest.fixture
def populated(isolated_database_url: str) -> str:
    """alpha: registered, 2 entities / 3 records (2 embedded), 3 queued changes to 2 entities
    (one retrying, one not ready), 1 open + 1 retried dead letter. gamma: only queued.
    Workers: one live, one with an old heartbeat."""
    with connect(isolated_database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO idxr.embedding_models (name, dimensions, max_tokens) "
            "VALUES ('deterministic-test', 384, 256)"
        )
        conn.execute(
            "INSERT INTO idxr.entity_kinds (name, model_name, source_table, refresh_policy, "
            "last_refresh_at, last_embedded_at) VALUES ('alpha', 'deterministic-test', "
            "'public.alphas', 'every 5m', now() - interval '1 hour', now() - interval '2 hours')"
        )
        vector = "[" + ",".join(["0.05"] * 384) + "]"
        for entity_id, path, embedded in [
            ("1", "alpha.name", True),
            ("1", "alpha.size", False),
            ("2", "alpha.name", True),
        ]:
            conn.execute(
                "INSERT INTO idxr.search_index (entity_kind, entity_id, path, value, value_type, "
                "content_hash, embedding) VALUES ('alpha', %s, %s, 'v', 'string', 'h', %s)",
                [entity_id, path, vector if embedded else None],
            )
        conn.execute(
            "INSERT INTO idxr.queue (entity_kind, entity_id, enqueued_at, claimed_by) VALUES "
            "('alpha', '1', now() - interval '10 minutes', 'a-worker'), ('alpha', '1', now(), NULL), "
            "('gamma', '9', now() - interval '1 minute', NULL)"
        )
        conn.execute(
            "INSERT INTO idxr.queue (entity_kind, entity_id, enqueued_at, not_before, attempts) "
            "VALUES ('alpha', '3', now() - interval '5 minutes', now() + interval '1 hour', 2)"
        )
        for retried in (None, "now()"):
            conn.execute(
                "INSERT INTO idxr.dead_letters (entity_kind, entity_id, stage, error_type, "
                "error_message, attempts, first_failed_at, last_failed_at, payload, retried_at) "
                f"VALUES ('alpha', '7', 'validate', 'ValueError', 'bad', 5, now(), now(), 'x', "
                f"{retried or 'NULL'})"
            )
        conn.execute(
            "INSERT INTO idxr.workers (worker_id, host, pid, entity_kinds, processed, heartbeat_at) "
            "VALUES ('live-worker', 'h1', 11, '{alpha}', 42, now()), "
            "('dead-worker', 'h2', 12, '{alpha}', 1, now() - interval '1 hour')"
        )
    return isolated_database_url


def test_status_view_counts_per_kind(populated: str):
    with psycopg.connect(populated) as conn:
        rows = conn.execute(
            "SELECT entity_kind, indexed_entities, indexed_records, embedded_records, "
            "queue_depth, queued_entities, retrying_changes, dead_letters, refresh_policy, "
            "lag > interval '9 minutes', stale_since < now() - interval '9 minutes' "
            "FROM idxr.status ORDER BY entity_kind"
        ).fetchall()
    assert rows == [
        ("alpha", 2, 3, 2, 3, 2, 1, 1, "every 5m", True, True),
        ("gamma", 0, 0, 0, 1, 1, 0, 0, "on_change", False, False),
    ]


def test_stale_view_lists_kinds_with_queued_changes(populated: str):
    with psycopg.connect(populated) as conn:
        rows = conn.execute(
            "SELECT entity_kind, refresh_policy, extract(epoch FROM refresh_interval), "
            "queued_changes, queued_entities, ready_changes FROM idxr.stale ORDER BY entity_kind"
        ).fetchall()
        conn.execute("DELETE FROM idxr.queue WHERE entity_kind = 'gamma'")
        after = conn.execute("SELECT entity_kind FROM idxr.stale").fetchall()
    assert rows == [("alpha", "every 5m", 300, 3, 2, 2), ("gamma", "on_change", None, 1, 1, 1)]
    assert after == [("alpha",)]


def test_status_human_output(populated: str, config_file: Path):
    out = cli(populated, config_file, "status")
    alpha = out.split("\nbeta")[0]
    assert alpha.startswith("alpha\n")
    assert "source table:   public.alphas" in alpha
    assert "model:          deterministic-test" in alpha
    assert "refresh:        every 5m" in alpha
    assert "indexed:        2 entities, 3 records (2 embedded)" in alpha
    assert "queue:          3 changes to 2 entities (1 retrying), lag 10m" in alpha
    assert "dead letters:   1" in alpha
    assert "last embedded:" in alpha and "(2h00m ago)" in alpha
    # configured but not in the database: listed with zeros
    assert "beta  [configured, not yet in the database]" in out
    beta = out.split("\nbeta")[1].split("\ngamma")[0]
    assert "indexed:        0 entities, 0 records (0 embedded)" in beta
    assert "refresh:        manual" in beta
    assert "queue:          empty (up to date)" in beta
    # in the database but not configured
    assert "gamma  [not in the config]" in out
    # live workers only
    assert "workers: 1 (live within 30s)" in out
    assert "live-worker" in out and "dead-worker" not in out
    # the HNSW index of the one vector size in use, as a fresh install builds it
    index_line = out.split("search indexes:\n")[1].splitlines()[0]
    assert index_line.startswith("  384 dims: halfvec, m 16, ef_construction 64, ")
    assert index_line.endswith(" MiB")


def test_status_says_when_a_size_has_no_index(isolated_database_url: str, config_file: Path):
    with psycopg.connect(isolated_database_url, autocommit=True) as conn:
        conn.execute("DROP INDEX idxr.search_index_embedding_hnsw_384")
    out = cli(isolated_database_url, config_file, "status")
    assert "  384 dims: no HNSW index (searches of this size scan exactly)" in out
    data = json.loads(cli(isolated_database_url, config_file, "status", "--json"))
    assert data["search_indexes"] == [{"dimensions": 384, "indexes": []}]


def test_status_json_output(populated: str, config_file: Path):
    data = json.loads(cli(populated, config_file, "status", "--json"))
    kinds = {kind["entity_kind"]: kind for kind in data["kinds"]}
    assert list(kinds) == ["alpha", "beta", "gamma"]
    alpha = kinds["alpha"]
    assert {k: alpha[k] for k in ("indexed_entities", "indexed_records", "embedded_records")} == {
        "indexed_entities": 2,
        "indexed_records": 3,
        "embedded_records": 2,
    }
    assert alpha["queue_depth"] == 3 and alpha["queued_entities"] == 2
    assert alpha["dead_letters"] == 1
    assert alpha["refresh_policy"] == "every 5m"
    assert alpha["model"] == "deterministic-test"
    assert 590 < alpha["lag_seconds"] < 3600
    assert alpha["stale_since"] is not None and alpha["last_embedded_at"] is not None
    assert alpha["configured"] and alpha["in_database"]
    beta = kinds["beta"]
    assert beta["in_database"] is False and beta["configured"] is True
    assert beta["indexed_entities"] == beta["queue_depth"] == beta["dead_letters"] == 0
    assert beta["stale_since"] is None and beta["lag_seconds"] is None
    assert beta["refresh_policy"] == "manual" and beta["source_table"] == "public.betas"
    assert kinds["gamma"]["configured"] is False
    assert [w["worker_id"] for w in data["workers"]] == ["live-worker"]
    worker = data["workers"][0]
    assert worker["processed"] == 42 and worker["entity_kinds"] == ["alpha"]
    assert worker["last_heartbeat_at"] is not None
    [index] = data["search_indexes"]
    assert index["dimensions"] == 384
    [state] = index["indexes"]
    assert state["name"] == "search_index_embedding_hnsw_384"
    assert (state["storage"], state["m"], state["ef_construction"], state["valid"]) == (
        "halfvec",
        16,
        64,
        True,
    )
    assert state["bytes"] > 0


def test_stale_human_and_json(populated: str, config_file: Path):
    out = cli(populated, config_file, "stale")
    lines = out.splitlines()
    assert lines[0].split() == [
        "KIND", "REFRESH", "CHANGES", "ENTITIES", "READY", "STALE", "SINCE", "LAG", "LAST", "REFRESH"
    ]  # fmt: skip
    assert lines[1].split()[:5] == ["alpha", "every", "5m", "3", "2"]
    assert lines[2].split()[:5] == ["gamma", "on_change", "1", "1", "1"]
    data = json.loads(cli(populated, config_file, "stale", "--json"))
    assert [(k["entity_kind"], k["queued_changes"], k["ready_changes"]) for k in data] == [
        ("alpha", 3, 2),
        ("gamma", 1, 1),
    ]
    assert data[0]["refresh_interval_seconds"] == 300
    assert data[0]["lag_seconds"] > 590


def test_stale_when_nothing_is_queued(isolated_database_url: str, config_file: Path):
    assert (
        cli(isolated_database_url, config_file, "stale")
        == "nothing is stale: every queue is empty\n"
    )
    assert json.loads(cli(isolated_database_url, config_file, "stale", "--json")) == []


def test_jobs_human_and_json(isolated_database_url: str, config_file: Path):
    url = isolated_database_url
    holder = connect(url, autocommit=True)  # plays the live backfill: holds alpha's lock
    try:
        with connect(url, autocommit=True) as conn:
            assert jobs.try_lock_kind(holder, "alpha")
            done = jobs.create_job(conn, "alpha", options={"force": True}, total=100)
            jobs.advance_job(conn, done.id, JobCounts(done=100, embedded=250, records_written=300),
                             checkpoint="100", rate=50.0)  # fmt: skip
            jobs.finish_job(conn, done.id, jobs.SUCCEEDED)
            failed = jobs.create_job(conn, "beta", options={}, total=10)
            jobs.advance_job(conn, failed.id, JobCounts(done=4, failed=1), checkpoint="4", rate=2.0)
            jobs.finish_job(conn, failed.id, jobs.FAILED, error="OperationalError: lost")
            running = jobs.create_job(conn, "alpha", options={}, total=1000)
            jobs.advance_job(conn, running.id, JobCounts(done=250, embedded=10), checkpoint="250",
                             rate=25.0)  # fmt: skip
            # a run whose process died (beta's lock is free): reported as interrupted
            dead = jobs.create_job(conn, "beta", options={}, total=10, resumed_from=failed.id)

        out = cli(url, config_file, "jobs")
        lines = out.splitlines()
        assert lines[0].split()[:5] == ["ID", "KIND", "TYPE", "STATE", "PROGRESS"]
        by_id = {int(line.split()[0]): line for line in lines[1:]}
        assert list(by_id) == [dead.id, running.id, failed.id, done.id]
        assert "interrupted" in by_id[dead.id]
        assert f"resumed from #{failed.id}" in by_id[dead.id]
        assert "the process ended without finishing" in by_id[dead.id]
        assert "running" in by_id[running.id] and "250/1,000 (25.0%)" in by_id[running.id]
        assert "25.0/s" in by_id[running.id] and "ETA 30s" in by_id[running.id]
        assert "failed" in by_id[failed.id] and "error: OperationalError: lost" in by_id[failed.id]
        assert f"resumed by #{dead.id}" in by_id[failed.id]
        assert "succeeded" in by_id[done.id] and "100/100 (100.0%)" in by_id[done.id]
        assert "250" in by_id[done.id] and "took " in by_id[done.id] and "force" in by_id[done.id]

        data = json.loads(cli(url, config_file, "jobs", "--json", "--kind", "alpha"))
        assert [job["id"] for job in data] == [running.id, done.id]
        live, finished = data
        assert live["state"] == "running" and live["done"] == 250 and live["total"] == 1000
        assert live["eta_seconds"] == 30.0 and live["rate"] == 25.0
        assert live["checkpoint"] == "250"
        assert finished["state"] == "succeeded" and finished["embedded"] == 250
        assert finished["records_written"] == 300 and finished["eta_seconds"] is None
        assert finished["duration_seconds"] >= 0 and finished["finished_at"] is not None
        assert finished["options"] == {"force": True}

        assert len(json.loads(cli(url, config_file, "jobs", "--json", "--limit", "1"))) == 1
    finally:
        holder.close()
    # once the holder is gone, its running job is interrupted too
    data = json.loads(cli(url, config_file, "jobs", "--json", "--kind", "alpha"))
    assert data[0]["state"] == "interrupted"


def test_jobs_when_there_are_none(isolated_database_url: str, config_file: Path):
    assert cli(isolated_database_url, config_file, "jobs") == "no jobs yet\n"
    assert json.loads(cli(isolated_database_url, config_file, "jobs", "--json")) == []


@pytest.mark.parametrize("command", ["status", "stale", "jobs"])
def test_without_the_idxr_schema_the_message_says_run_migrate(
    empty_database_url: str, config_file: Path, command: str
):
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    result = CliRunner().invoke(
        main, ["--database-url", empty_database_url, "--config", str(config_file), command]
    )
    assert result.exit_code == 1
    assert "idxr schema" in result.output and "run `idxr-pg migrate`" in result.output


def test_status_names_a_storage_switch_in_progress():
    from idxr_pg.cli.status_commands import _index_lines
    from idxr_pg.db.hnsw import IndexState

    current = IndexState("search_index_embedding_hnsw_768", "vector", 16, 64, True, 3 * 1048576)
    target = IndexState("search_index_embedding_hnsw_768_next", "halfvec", 16, 64, False, 0)
    assert _index_lines({768: [current, target]}) == [
        "768 dims: vector, m 16, ef_construction 64, 3.0 MiB; switching to halfvec, m 16, "
        "ef_construction 64 (building)"
    ]
