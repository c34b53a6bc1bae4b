"""Hardening (issue 12), runtime robustness: resume right after a SIGKILL, deep JSON isolated
to its entity, dead processes marked, final connection errors not retried."""

from __future__ import annotations

import json
import signal
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
    execute,
    fetch_index,
    install_triggers,
    make_config,
    queue_depth,
    wait_until,
)


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
