"""Hardening (issue 12), runtime robustness: resume right after a SIGKILL, deep JSON isolated
to its entity, dead processes marked, final connection errors not retried."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from pydantic import BaseModel

from tests.integration.test_backfill import (
    KIND,
    SLOW_DOCUMENT,
    cli,
    expected_index,
    index_set,
    job_row,
    make_docs,
    spawn,
    wait_for_progress,
    write_config,
)
from tests.integration.worker_runner import worker_thread
from tests.integration.worker_support import (
    IDXR,
    ITEMS_DDL,
    ROOT,
    execute,
    fetch_index,
    install_triggers,
    item_entity,
    make_config,
    queue_depth,
    subprocess_env,
    wait_until,
)
from tests.integration.worker_support import write_config as write_worker_config


class Nest(BaseModel):
    """An entity with free-form JSON (imported by dotted path in the configs below)."""

    id: int
    title: str
    data: Any = None


NESTS_DDL = "CREATE TABLE public.nests (id integer PRIMARY KEY, title text NOT NULL, data jsonb)"


def nest_entity() -> dict[str, Any]:
    return {
        "name": "nest",
        "model": f"{__name__}:Nest",
        "table": "public.nests",
        "key": "id",
    }


def deep_json(levels: int) -> str:
    return '{"a":' * levels + '"leaf"' + "}" * levels


def dead_letters(url: str) -> dict[str, tuple[str, int, str]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT entity_id, stage, attempts, payload FROM idxr.dead_letters ORDER BY id"
        ).fetchall()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


@pytest.fixture
def url(isolated_database_url: str) -> str:
    return isolated_database_url


# --------------------------------------------------------------------------- item 1


@pytest.mark.slow
def test_resume_at_once_after_sigkill_gives_the_exact_index(url: str, tmp_path: Path):
    count = 400
    make_docs(url, count)
    config = write_config(tmp_path / "idxr.yaml", document=SLOW_DOCUMENT)
    proc = spawn(url, config, "backfill", KIND, "--batch-size", "20")
    wait_for_progress(url, proc, at_least=60)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    killed_id = job_row(url)[0]

    # at once: no `jobs`/`status` call, no waiting for the killed sessions to end
    resumed = json.loads(cli(url, config, "backfill", KIND, "--resume", "--json").stdout)
    assert resumed["state"] == "succeeded"
    assert resumed["resumed_from"] == killed_id
    assert resumed["done"] == count
    assert index_set(url) == expected_index(url)


# --------------------------------------------------------------------------- item 5


def test_deep_json_fails_alone_and_is_parked_with_a_readable_payload(url: str, tmp_path: Path):
    execute(url, NESTS_DDL)
    config = make_config(
        tmp_path,
        [nest_entity()],
        model="deterministic-test",
        worker={
            "poll_interval": 0.1,
            "max_attempts": 2,
            "backoff_base_seconds": 0.05,
            "backoff_max_seconds": 0.1,
        },
    )
    install_triggers(url, config)
    with worker_thread(url, config) as runner:
        # one statement, so the four land in one batch: 3 cannot even be decoded (RecursionError
        # in json), 4 decodes but fails to flatten and is too deep for a naive YAML dump
        execute(
            url,
            "INSERT INTO public.nests (id, title, data) VALUES "
            "(1, 'first good one', '{\"x\": 1}'), (2, 'second good one', NULL), "
            "(3, 'too deep to decode', %(d1200)s::jsonb), (4, 'deep', %(d500)s::jsonb)",
            {"d1200": deep_json(1200), "d500": deep_json(500)},
        )
        wait_until(lambda: len(dead_letters(url)) == 2, 60, what="two dead letters")
        runner.settle(url)
        assert runner.thread.is_alive() and runner.error is None
        assert {entity for entity, _ in fetch_index(url, "nest")} == {"1", "2"}
        assert queue_depth(url) == 0
        parked = dead_letters(url)
        assert set(parked) == {"3", "4"}
        assert parked["3"][:2] == ("load", 2)
        assert parked["4"][:2] == ("flatten", 2)
        for entity_id, (_, _, payload) in parked.items():
            data = yaml.safe_load(payload)
            assert data["entity_id"] == entity_id and data["attempts"] == 2
            assert len(payload) < 64_000
        assert "RecursionError" in yaml.safe_load(parked["3"][2])["error_type"]
        # the worker keeps running: a later change is indexed
        execute(url, "UPDATE public.nests SET title = 'changed' WHERE id = 1")
        wait_until(
            lambda: fetch_index(url, "nest")[("1", "nest.title")]["value"] == "changed",
            30,
            what="the later change indexed",
        )


# --------------------------------------------------------------------------- item 12


def _worker_config(tmp_path: Path) -> Path:
    return write_worker_config(
        tmp_path / "worker.yaml", [item_entity()], model="deterministic-test"
    )


def _spawn_worker(url: str, config: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [IDXR, "--database-url", url, "--config", str(config), *args],
        cwd=ROOT,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_sigkilled_worker_is_marked_lost_once_its_heartbeat_is_old(url: str, tmp_path: Path):
    execute(url, ITEMS_DDL)
    config = _worker_config(tmp_path)
    proc = _spawn_worker(url, config, "worker", "--poll-interval", "0.1")
    try:
        wait_until(lambda: _worker_states(url) == ["running"], 60, what="the worker to join")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert _worker_states(url) == ["running"]  # nobody said otherwise yet
    # time passes: its last heartbeat is now older than any live window
    execute(url, "UPDATE idxr.workers SET heartbeat_at = now() - interval '1 hour'")
    out = cli(url, config, "status").output
    assert "workers: none" in out
    assert _worker_states(url) == ["lost"]
    # a worker that comes back (same id) is running again
    execute(url, "UPDATE idxr.workers SET state = 'running', heartbeat_at = now()")
    cli(url, config, "status")
    assert _worker_states(url) == ["running"]


def _worker_states(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT state FROM idxr.workers ORDER BY worker_id")]


@pytest.mark.slow
def test_terminated_backends_end_a_backfill_with_one_clear_line(url: str, tmp_path: Path):
    count = 400
    make_docs(url, count)
    config = write_config(tmp_path / "idxr.yaml", document=SLOW_DOCUMENT)
    proc = spawn(url, config, "backfill", KIND, "--batch-size", "20")
    wait_for_progress(url, proc, at_least=60)
    execute(
        url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name LIKE 'idxr-backfill%%'",
    )
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1, stderr
    assert "Traceback" not in stderr and "could not mark" not in stderr
    assert "checkpoint None" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    job_id, state, checkpoint, _ = job_row(url)
    assert state == "failed" and checkpoint is not None
    assert f"job #{job_id}, checkpoint {checkpoint!r}" in errors[0]
    assert "--resume" in errors[0]
    resumed = json.loads(cli(url, config, "backfill", KIND, "--resume", "--json").stdout)
    assert resumed["state"] == "succeeded" and resumed["done"] == count
    assert index_set(url) == expected_index(url)


def test_uninstall_while_a_worker_runs_stops_it_with_one_message(url: str, tmp_path: Path):
    execute(url, ITEMS_DDL)
    config = _worker_config(tmp_path)
    proc = _spawn_worker(url, config, "worker", "--poll-interval", "0.1")
    try:
        wait_until(lambda: _worker_states(url) == ["running"], 60, what="the worker to join")
        cli(url, config, "uninstall", "--yes")
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, stderr
    assert "Traceback" not in stderr
    assert stderr.count("reconnecting") <= 1 and "retrying" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "idxr schema" in errors[0], stderr


@pytest.mark.parametrize(
    ("target", "command"),
    [
        ("dbname", ("worker", "--once")),
        ("dbname", ("refresh", "item")),
        ("user", ("worker", "--once")),
        ("user", ("refresh", "item")),
    ],
)
def test_a_missing_database_or_role_is_final_not_retried(
    pg_server_url: str, tmp_path: Path, target: str, command: tuple[str, ...]
):
    params = psycopg.conninfo.conninfo_to_dict(pg_server_url)
    params[target] = "idxr_no_such_" + target
    bad_url = psycopg.conninfo.make_conninfo(**params)
    config = _worker_config(tmp_path)
    started = time.monotonic()
    proc = _spawn_worker(bad_url, config, *command)
    try:
        _, stderr = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, stderr = proc.communicate()
        raise AssertionError(f"still retrying after 30 s: {stderr[-2000:]}") from None
    assert proc.returncode == 1, stderr
    assert time.monotonic() - started < 15
    assert "Traceback" not in stderr and "retrying" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "does not exist" in errors[0], stderr
