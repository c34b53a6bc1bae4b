"""Invariant 5: a bad entity is retried with backoff, then dead-lettered with a YAML payload,
without blocking its batch; `idxr-pg errors list|show|retry` let an operator see and redo it."""

from __future__ import annotations

import json

import psycopg
import yaml
from click.testing import CliRunner

from idxr_pg.cli import main
from idxr_pg.indexing.failures import Backoff, record_failure
from tests.integration.worker_runner import worker_thread
from tests.integration.worker_support import (
    ARTICLES_DDL,
    article_entity,
    execute,
    fetch_index,
    install_triggers,
    make_config,
    queue_depth,
    wait_until,
)


def cli(url: str, config_path, *args: str):
    return CliRunner().invoke(
        main, ["--database-url", url, "--config", str(config_path), *args], catch_exceptions=False
    )


def dead_letters(url: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT id, entity_kind, entity_id, stage, attempts, retried_at, payload"
            " FROM idxr.dead_letters ORDER BY id"
        ).fetchall()


def entity_ids(url: str) -> set[str]:
    return {entity for entity, _ in fetch_index(url, "article")}


def test_a_row_failing_validation_is_dead_lettered_and_retried_after_the_fix(
    isolated_database_url, tmp_path
):
    url = isolated_database_url
    execute(url, ARTICLES_DDL)
    config = make_config(
        tmp_path,
        [article_entity()],
        model="deterministic-test",
        worker={
            "poll_interval": 0.1,
            "max_attempts": 3,
            "backoff_base_seconds": 0.05,
            "backoff_max_seconds": 0.2,
        },
    )
    config_path = tmp_path / "idxr.yaml"
    install_triggers(url, config)
    with worker_thread(url, config) as runner:
        execute(
            url,
            "INSERT INTO articles (id, title, body, status) VALUES"
            " (1, 'Good one', 'fine', 'draft'), (2, 'Also good', 'fine too', 'draft'),"
            " (3, 'LOUD TITLE', 'shouting', 'draft'), (4, 'Quiet one', 'calm', 'draft')",
        )
        wait_until(lambda: len(dead_letters(url)) == 1, 60, what="a dead letter")
        runner.settle(url)
        # The rest of the batch was indexed; the bad entity has no rows and no queue row left.
        assert entity_ids(url) == {"1", "2", "4"}
        assert queue_depth(url) == 0
        ((dead_id, kind, entity, stage, attempts, retried_at, payload),) = dead_letters(url)
        assert (kind, entity, stage, attempts, retried_at) == ("article", "3", "validate", 3, None)
        data = yaml.safe_load(payload)
        assert data["error_type"].endswith("ValidationError")
        assert "title must not be all capitals" in data["error_message"]
        assert data["document"]["title"] == "LOUD TITLE" and data["attempts"] == 3
        assert "Traceback" in data["traceback"]
        assert runner.worker.totals.dead_lettered == 1

        # An indexed entity that turns bad keeps what was indexed for it.
        before = {k: v["xmin"] for k, v in fetch_index(url, "article").items() if k[0] == "2"}
        execute(url, "UPDATE articles SET title = 'NOW LOUD' WHERE id = 2")
        wait_until(lambda: len(dead_letters(url)) == 2, 60, what="a second dead letter")
        runner.settle(url)
        after = {k: v["xmin"] for k, v in fetch_index(url, "article").items() if k[0] == "2"}
        assert after == before

        # The operator's view.
        listed = cli(url, config_path, "errors", "list", "--json")
        assert listed.exit_code == 0
        rows = json.loads(listed.output)
        assert [(r["entity_id"], r["stage"], r["attempts"]) for r in rows] == [
            ("2", "validate", 3),
            ("3", "validate", 3),
        ]
        table = cli(url, config_path, "errors", "list")
        assert "ValidationError" in table.output and "validate" in table.output
        shown = cli(url, config_path, "errors", "show", str(dead_id))
        assert shown.exit_code == 0 and yaml.safe_load(shown.output) == data

        # Fix the row where the triggers cannot see it (e.g. a bulk load with triggers off):
        # nothing is queued until the operator retries.
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SET session_replication_role = replica")
            conn.execute("UPDATE articles SET title = 'Loud title' WHERE id = 3")
        assert queue_depth(url) == 0 and "3" not in entity_ids(url)

        retried = cli(url, config_path, "errors", "retry", str(dead_id))
        assert retried.exit_code == 0 and "re-queued article:3" in retried.output
        wait_until(lambda: "3" in entity_ids(url), 60, what="the retried entity indexed")
        runner.settle(url)
    assert fetch_index(url, "article")[("3", "article.title")]["value"] == "Loud title"
    assert [r[5] is not None for r in dead_letters(url)] == [True, False]
    pending = json.loads(cli(url, config_path, "errors", "list", "--json").output)
    assert [r["entity_id"] for r in pending] == ["2"]
    everything = json.loads(cli(url, config_path, "errors", "list", "--all", "--json").output)
    assert len(everything) == 2


def test_errors_commands_report_bad_usage_clearly(isolated_database_url, tmp_path):
    config_path = tmp_path / "idxr.yaml"
    config_path.write_text("entities: []\n")
    url = isolated_database_url
    missing = cli(url, config_path, "errors", "show", "999")
    assert missing.exit_code == 1 and "no dead letter with id 999" in missing.output
    neither = cli(url, config_path, "errors", "retry")
    assert neither.exit_code == 2 and "give dead letter IDs or --all" in neither.output
    nothing = cli(url, config_path, "errors", "retry", "--all")
    assert nothing.exit_code == 0 and "nothing to retry" in nothing.output
    empty = cli(url, config_path, "errors", "list")
    assert empty.exit_code == 0 and "no dead letters" in empty.output


def _queue(url: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT entity_id, operation, attempts, not_before > now(), first_failed_at IS NOT NULL,"
            " last_error FROM idxr.queue ORDER BY id"
        ).fetchall()


def test_record_failure_without_queue_rows_tracks_attempts_then_dead_letters(
    isolated_database_url,
):
    """The backfill's path (no claimed rows): a retry row is created, bumped, then parked."""
    url = isolated_database_url
    backoff = Backoff(60.0, 600.0)
    error = ValueError("bad document")
    with psycopg.connect(url, autocommit=True) as conn:
        with conn.transaction():
            first = record_failure(
                conn, "thing", "7", "validate", error, {"a": 1}, max_attempts=3, backoff=backoff
            )
        assert (first.action, first.attempts, first.delay) == ("retry", 1, 60.0)
        assert _queue(url) == [("7", "retry", 1, True, True, "validate: ValueError: bad document")]
        # A fresh change of the same entity (attempts 0) is pending work: left alone.
        conn.execute(
            "INSERT INTO idxr.queue (entity_kind, entity_id, operation) VALUES ('thing', '7', 'UPDATE')"
        )
        with conn.transaction():
            second = record_failure(
                conn, "thing", "7", "validate", error, {"a": 1}, max_attempts=3, backoff=backoff
            )
        assert (second.action, second.attempts, second.delay) == ("retry", 2, 120.0)
        with conn.transaction():
            third = record_failure(
                conn, "thing", "7", "validate", error, {"a": 1}, max_attempts=3, backoff=backoff
            )
        assert third.action == "dead" and third.attempts == 3
        assert [row[:3] for row in _queue(url)] == [("7", "UPDATE", 0)]
        (payload,) = conn.execute(
            "SELECT payload FROM idxr.dead_letters WHERE id = %s", [third.dead_letter_id]
        ).fetchone()
    assert yaml.safe_load(payload)["document"] == {"a": 1}


def test_record_failure_on_claimed_rows_counts_from_their_highest_attempt(isolated_database_url):
    url = isolated_database_url
    with psycopg.connect(url, autocommit=True) as conn:
        ids = [
            conn.execute(
                "INSERT INTO idxr.queue (entity_kind, entity_id, attempts, claimed_by)"
                " VALUES ('thing', '1', %s, %s) RETURNING id",
                [attempts, claimer],
            ).fetchone()[0]
            for attempts, claimer in ((2, "w"), (0, "w"), (0, None))
        ]
        with conn.transaction():
            outcome = record_failure(
                conn,
                "thing",
                "1",
                "embed",
                RuntimeError("model down"),
                max_attempts=5,
                backoff=Backoff(1.0, 600.0),
                queue_ids=ids[:2],
            )
    assert (outcome.action, outcome.attempts, outcome.delay) == ("retry", 3, 4.0)
    assert [row[2] for row in _queue(url)] == [3, 3, 0]  # the unclaimed row is untouched
    with psycopg.connect(url) as conn:  # backed off: no longer claimed, out of queue_pending
        claimers = conn.execute("SELECT claimed_by FROM idxr.queue ORDER BY id").fetchall()
    assert claimers == [(None,), (None,), (None,)]
