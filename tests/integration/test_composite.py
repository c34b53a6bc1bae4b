"""The composite record of an entity (issue 16): a template over its fields, embedded as one
more record at the kind's root path, re-embedded only when its text changes, and fused with
the best field in entity search. Real model, real capture triggers, a worker."""

from __future__ import annotations

import pytest

from idxr_pg.config import ConfigError, parse_config
from idxr_pg.db.connection import connect
from idxr_pg.indexing.registry import RegistryError, resolve_kinds
from tests.integration.worker_runner import worker_thread
from tests.integration.worker_support import (
    ARTICLES_DDL,
    article_entity,
    execute,
    install_triggers,
    make_config,
)

pytestmark = pytest.mark.model

TEMPLATE = "{title}\n{body}"


@pytest.fixture
def database(isolated_database_url, tmp_path):
    url = isolated_database_url
    execute(url, ARTICLES_DDL)
    config = make_config(
        tmp_path,
        [article_entity(composite=TEMPLATE)],
        worker={"poll_interval": 0.2, "batch_size": 16},
    )
    install_triggers(url, config)
    return url, config


def stored(url: str) -> dict[tuple[str, str], tuple[str, bool]]:
    with connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT entity_id, path::text, value, embedding IS NOT NULL FROM idxr.search_index"
            " WHERE entity_kind = 'article'"
        ).fetchall()
    return {(e, p): (v, has) for e, p, v, has in rows}


def test_composite_record_is_indexed_and_re_embedded_only_when_its_text_changes(database):
    url, config = database
    execute(
        url,
        "INSERT INTO articles (id, title, body, status) VALUES"
        " (1, 'Heat pumps explained', 'They move heat instead of making it.', 'published'),"
        " (2, 'Rain water barrels', 'Collect the roof run-off for the garden.', 'published')",
    )
    with worker_thread(url, config) as runner:
        runner.settle(url)
        first = runner.worker.totals.texts_embedded
        index = stored(url)
        assert index[("1", "article")] == (
            "Heat pumps explained\nThey move heat instead of making it.",
            True,
        )
        assert index[("2", "article")][1] is True
        with connect(url, autocommit=True) as conn:
            assert conn.execute(
                "SELECT composite FROM idxr.entity_kinds WHERE name = 'article'"
            ).fetchone() == (TEMPLATE,)

        # A field outside the template: the composite text is the same, nothing is embedded.
        batches = runner.worker.totals.batches
        execute(url, "UPDATE articles SET views = 5 WHERE id = 1")
        runner.settle(url, batches_after=batches)
        assert runner.worker.totals.texts_embedded == first

        # The body: the body and the composite are new texts, the title is not.
        batches = runner.worker.totals.batches
        execute(url, "UPDATE articles SET body = 'Heat pumps move warmth uphill.' WHERE id = 1")
        runner.settle(url, batches_after=batches)
        assert runner.worker.totals.texts_embedded == first + 2
        assert (
            stored(url)[("1", "article")][0]
            == "Heat pumps explained\nHeat pumps move warmth uphill."
        )


def test_entity_search_fuses_the_composite_with_the_best_field(database):
    url, config = database
    execute(
        url,
        "INSERT INTO articles (id, title, body, status) VALUES"
        " (1, 'Heat pumps explained', 'They move heat instead of making it.', 'published'),"
        " (2, 'Rain water barrels', 'Collect the roof run-off for the garden.', 'published'),"
        " (3, 'Garden tools', 'Spades, rakes and a wheelbarrow for the allotment.', 'draft')",
    )
    with worker_thread(url, config) as runner:
        runner.settle(url)
    from idxr_pg.search import _embed_query, _embedder

    vector = _embed_query(_embedder(config.embedding), config.embedding, "saving rain for plants")
    with connect(url, autocommit=True) as conn:
        hits = conn.execute(
            "SELECT entity_id, path::text, distance FROM idxr.search_entities(%s, NULL, 'article', 3)",
            [vector],
        ).fetchall()
        expected = conn.execute(
            """SELECT entity_id,
                      (min(embedding <=> %(v)s) FILTER (WHERE nlevel(path) = 1)
                       + min(embedding <=> %(v)s) FILTER (WHERE nlevel(path) > 1)) / 2 AS d
                 FROM idxr.search_index
                WHERE entity_kind = 'article' AND embedding IS NOT NULL
                GROUP BY entity_id ORDER BY d""",
            {"v": vector},
        ).fetchall()
        # A path filter that leaves the root record out: nearest field alone.
        bodies = conn.execute(
            "SELECT entity_id, distance FROM idxr.search_entities(%s, 'article.body', 'article', 3)",
            [vector],
        ).fetchall()
        body_distances = conn.execute(
            "SELECT entity_id, embedding <=> %s FROM idxr.search_index"
            " WHERE entity_kind = 'article' AND path = 'article.body' ORDER BY 2",
            [vector],
        ).fetchall()
    assert [h[0] for h in hits] == [e for e, _ in expected]
    assert hits[0][0] == "2"
    assert all(path != "article" for _, path, _ in hits)  # the row shows a real field
    assert [h[2] for h in hits] == pytest.approx([d for _, d in expected])
    assert [e for e, _ in bodies] == [e for e, _ in body_distances]
    assert [d for _, d in bodies] == pytest.approx([d for _, d in body_distances])


def test_bad_composite_templates_are_refused(tmp_path, isolated_database_url):
    with pytest.raises(ConfigError, match="composite template"):
        parse_config(
            {
                "entities": [
                    {**article_entity(), "composite": "{title!r}"},
                ]
            },
            "test",
        )
    execute(isolated_database_url, ARTICLES_DDL)
    config = make_config(tmp_path, [article_entity(composite="{title}\n{summary}")])
    with (
        connect(isolated_database_url, autocommit=True) as conn,
        pytest.raises(RegistryError, match="names 'summary', which is not a field"),
    ):
        resolve_kinds(conn, config)
