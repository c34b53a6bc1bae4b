"""End to end with the real model and the real capture triggers: plain SQL writes on the
application's tables, a running worker, and idxr.search_index following them."""

from __future__ import annotations

import pytest

from tests.integration.worker_runner import worker_thread
from tests.integration.worker_support import (
    ALL_ARTICLES,
    ARTICLES_DDL,
    Article,
    actual_index,
    article_entity,
    execute,
    expected_index,
    fetch_index,
    install_triggers,
    make_config,
    wait_until,
)

pytestmark = pytest.mark.model


@pytest.fixture
def database(isolated_database_url, tmp_path):
    url = isolated_database_url
    execute(url, ARTICLES_DDL)
    config = make_config(
        tmp_path,
        [article_entity()],
        worker={"poll_interval": 30.0, "batch_size": 16},  # wake-ups come from NOTIFY
    )
    install_triggers(url, config)
    return url, config


def entity_ids(url: str) -> set[str]:
    return {entity for entity, _ in fetch_index(url, "article")}


def test_inserts_updates_deletes_and_truncate_follow_the_source(database):
    url, config = database
    with worker_thread(url, config) as runner:
        execute(
            url,
            "INSERT INTO articles (id, title, body, status) VALUES"
            " (1, 'Heat pumps explained', 'They move heat instead of making it.', 'published'),"
            " (2, 'Rain water barrels', 'Collect the roof run-off for the garden.', 'draft')",
        )
        runner.settle(url, batches_after=0)
        assert entity_ids(url) == {"1", "2"}
        assert actual_index(url, "article") == expected_index(url, "article", Article, ALL_ARTICLES)

        # UPDATE one text field: only that path's row changes, one text is embedded.
        before = fetch_index(url, "article")
        batches, embedded = runner.worker.totals.batches, runner.worker.totals.texts_embedded
        execute(
            url, "UPDATE articles SET body = 'A heat pump is a fridge run backwards.' WHERE id = 1"
        )
        runner.settle(url, batches_after=batches)
        after = fetch_index(url, "article")
        assert runner.worker.totals.texts_embedded - embedded == 1
        changed = {key for key in after if after[key]["xmin"] != before[key]["xmin"]}
        assert changed == {("1", "article.body")}
        old, new = before[("1", "article.body")], after[("1", "article.body")]
        assert new["value"] == "A heat pump is a fridge run backwards."
        assert new["content_hash"] != old["content_hash"]
        assert new["updated_at"] > old["updated_at"]
        assert list(new["embedding"].to_numpy()) != list(old["embedding"].to_numpy())
        assert all(
            after[k]["updated_at"] == before[k]["updated_at"] for k in after if k not in changed
        )

        # An UPDATE that changes nothing the entity reads: no queue row, nothing rewritten.
        execute(url, "UPDATE articles SET views = views WHERE id = 2")

        # DELETE: the entity's rows are gone.
        batches = runner.worker.totals.batches
        execute(url, "DELETE FROM articles WHERE id = 2")
        runner.settle(url, batches_after=batches)
        assert entity_ids(url) == {"1"}

        # TRUNCATE: every row of the kind is gone.
        execute(url, "INSERT INTO articles (id, title, status) VALUES (3, 'Compost', 'draft')")
        wait_until(lambda: entity_ids(url) == {"1", "3"}, 60, what="article 3 indexed")
        batches = runner.worker.totals.batches
        execute(url, "TRUNCATE articles CASCADE")
        runner.settle(url, batches_after=batches)
        assert fetch_index(url, "article") == {}


def test_a_watched_child_table_change_reindexes_the_parent(database):
    url, config = database
    with worker_thread(url, config) as runner:
        execute(
            url,
            "INSERT INTO articles (id, title, status) VALUES (7, 'Bees in the city', 'published')",
        )
        runner.settle(url, batches_after=0)
        before = fetch_index(url, "article")
        assert not any(path.startswith("article.tags") for _, path in before)

        batches = runner.worker.totals.batches
        execute(url, "INSERT INTO tags (article_id, name, weight) VALUES (7, 'pollinators', 5)")
        runner.settle(url, batches_after=batches)
        rows = fetch_index(url, "article")
        assert rows[("7", "article.tags.0.name")]["value"] == "pollinators"
        assert rows[("7", "article.tags.0.name")]["embedding"] is not None
        assert rows[("7", "article.title")]["xmin"] == before[("7", "article.title")]["xmin"]

        batches = runner.worker.totals.batches
        execute(url, "UPDATE tags SET name = 'wild bees' WHERE article_id = 7")
        runner.settle(url, batches_after=batches)
        assert fetch_index(url, "article")[("7", "article.tags.0.name")]["value"] == "wild bees"

        batches = runner.worker.totals.batches
        execute(url, "DELETE FROM tags WHERE article_id = 7")
        runner.settle(url, batches_after=batches)
        assert not any(path.startswith("article.tags") for _, path in fetch_index(url, "article"))
        assert actual_index(url, "article") == expected_index(url, "article", Article, ALL_ARTICLES)
