"""Issue 18: `idxr-pg pause` / `resume` and off-peak windows. While a kind is paused, or
outside its window, captured changes accumulate and nothing is claimed or embedded."""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from idxr_pg.cli import main
from idxr_pg.config import load_config
from idxr_pg.runtime.worker import Worker
from tests.integration.worker_runner import worker_thread
from tests.integration.worker_support import (
    ITEMS_DDL,
    Item,
    actual_index,
    execute,
    expected_index,
    install_triggers,
    item_entity,
    queue_depth,
    wait_until,
    write_config,
)

ALL_ITEMS = "SELECT id, to_jsonb(i) FROM items i"


def setup(url: str, tmp_path: Path, **entity) -> Path:
    execute(url, ITEMS_DDL)
    path = write_config(
        tmp_path / "idxr.yaml",
        [item_entity(**entity)],
        model="deterministic-test",
        worker={"poll_interval": 0.2},
    )
    install_triggers(url, load_config(path))
    return path


def cli(url: str, config: Path, *args: str, exit_code: int = 0):
    result = CliRunner().invoke(
        main, ["--database-url", url, "--config", str(config), *args], catch_exceptions=False
    )
    assert result.exit_code == exit_code, result.output
    return result


def insert(url: str, ids: range) -> None:
    execute(
        url,
        "INSERT INTO items (id, title) SELECT g, 'item number ' || g FROM unnest(%s::int[]) g",
        [list(ids)],
    )


def paused_in_view(url: str) -> tuple[bool, datetime | None] | None:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT paused, paused_since FROM idxr.status WHERE entity_kind = 'item'"
        ).fetchone()


def status_json(url: str, config: Path) -> dict:
    data = json.loads(cli(url, config, "status", "--json").stdout)
    return next(kind for kind in data["kinds"] if kind["entity_kind"] == "item")


def test_pause_accumulates_changes_and_resume_indexes_them(isolated_database_url, tmp_path):
    url = isolated_database_url
    config_path = setup(url, tmp_path)
    config = load_config(config_path)

    assert "paused item" in cli(url, config_path, "pause", "item").output
    assert "already paused" in cli(url, config_path, "pause", "item").output
    paused, since = paused_in_view(url)
    assert paused and since is not None

    with worker_thread(url, config) as runner:
        insert(url, range(1, 4))
        wait_until(lambda: queue_depth(url, "item") == 3, 10, what="the changes to be queued")
        time.sleep(1.5)  # several poll intervals, NOTIFY included
        insert(url, range(4, 6))
        time.sleep(1.0)
        assert queue_depth(url, "item") == 5  # writes keep accumulating
        assert actual_index(url, "item") == set()
        assert runner.worker.totals.batches == 0 and runner.worker.totals.texts_embedded == 0

        kind = status_json(url, config_path)
        assert kind["paused"] is True and kind["paused_since"] is not None
        assert kind["queue_depth"] == 5
        text = cli(url, config_path, "status").output
        assert "paused:" in text and "idxr-pg resume item" in text

        assert "resumed item" in cli(url, config_path, "resume", "item").output
        runner.settle(url, batches_after=0)
        assert actual_index(url, "item") == expected_index(url, "item", Item, ALL_ITEMS)
        assert len({entity for entity, *_ in actual_index(url, "item")}) == 5

    assert paused_in_view(url) == (False, None)
    assert status_json(url, config_path)["paused"] is False
    assert "paused:" not in cli(url, config_path, "status").output
    assert "was not paused" in cli(url, config_path, "resume", "item").output


def test_once_and_refresh_leave_a_paused_kind_queued(isolated_database_url, tmp_path, caplog):
    url = isolated_database_url
    config_path = setup(url, tmp_path)
    insert(url, range(1, 3))
    cli(url, config_path, "pause", "item")

    cli(url, config_path, "worker", "--once")
    assert queue_depth(url, "item") == 2 and actual_index(url, "item") == set()

    worker_log = logging.getLogger("idxr_pg.runtime.worker")
    worker_log.addHandler(caplog.handler)  # the CLI runs above replaced the root's handlers
    try:
        totals = Worker(url, load_config(config_path)).drain(["item"])  # what `refresh` runs
    finally:
        worker_log.removeHandler(caplog.handler)
    assert totals.entities == 0 and queue_depth(url, "item") == 2
    assert "item is paused (`idxr-pg resume item` resumes it)" in caplog.text
    cli(url, config_path, "refresh", "item")
    assert queue_depth(url, "item") == 2

    cli(url, config_path, "resume", "item")
    cli(url, config_path, "worker", "--once")
    assert queue_depth(url, "item") == 0
    assert actual_index(url, "item") == expected_index(url, "item", Item, ALL_ITEMS)


def test_pause_refuses_an_unknown_kind(isolated_database_url, tmp_path):
    url = isolated_database_url
    config_path = setup(url, tmp_path)
    result = cli(url, config_path, "pause", "nope", exit_code=1)
    assert "unknown entity kind 'nope' (known: item)" in result.output


def window_around(now: datetime, start_hours: float, end_hours: float) -> str:
    start, end = now + timedelta(hours=start_hours), now + timedelta(hours=end_hours)
    return f"{start:%H:%M}-{end:%H:%M}"


def test_a_window_that_excludes_now_keeps_the_kind_unprocessed(isolated_database_url, tmp_path):
    url = isolated_database_url
    window = window_around(datetime.now(UTC), 2, 3)  # opens in two hours
    config_path = setup(url, tmp_path, window=window)
    insert(url, range(1, 4))

    cli(url, config_path, "worker", "--once")
    assert queue_depth(url, "item") == 3 and actual_index(url, "item") == set()
    with worker_thread(url, load_config(config_path)) as runner:
        time.sleep(1.0)
        assert runner.worker.totals.batches == 0
    assert queue_depth(url, "item") == 3
    kind = status_json(url, config_path)
    assert kind["window"] == window and kind["paused"] is False
    assert f"window:         {window} UTC" in cli(url, config_path, "status").output


@pytest.mark.parametrize("hours", [(-1, 1), (-23, 0.5)], ids=["around-now", "crossing-midnight"])
def test_a_window_that_includes_now_processes_normally(isolated_database_url, tmp_path, hours):
    url = isolated_database_url
    now = datetime.now(UTC)
    window = window_around(now, *hours)
    if hours == (-23, 0.5):
        assert window.split("-")[0] > window.split("-")[1] or now.hour == 23  # wraps past 00:00
    config_path = setup(url, tmp_path, window=window)
    insert(url, range(1, 4))
    cli(url, config_path, "worker", "--once")
    assert queue_depth(url, "item") == 0
    assert actual_index(url, "item") == expected_index(url, "item", Item, ALL_ITEMS)
