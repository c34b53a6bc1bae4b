"""Chunked long fields (issue 16): a body longer than the chunk size is split on the model
tokenizer's boundaries, each chunk embedded; a change re-embeds only the chunks whose text is
new (counted); search returns the field once with the chunk that matched; the rows written
before chunking existed keep working and a reindex chunks them. Real model, real capture
triggers, a worker."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from idxr_pg.cli import main
from idxr_pg.config import IdxrConfig, parse_config
from idxr_pg.db import migrations
from idxr_pg.db.connection import connect
from idxr_pg.records.record import ValueType, content_hash
from idxr_pg.runtime.backfill import Backfill, BackfillOptions
from idxr_pg.runtime.plan import plan_reindex
from idxr_pg.search import search
from tests.integration.worker_runner import worker_thread
from tests.integration.worker_support import (
    ARTICLES_DDL,
    article_entity,
    execute,
    install_triggers,
    make_config,
)

pytestmark = pytest.mark.model

CHUNKING = [{"paths": "article.body", "tokens": 64, "overlap": 16}]

SENTENCES = [
    "The harbour crane lifted containers from the ship at dawn.",
    "A baker in the old town sells rye bread with caraway seeds.",
    "Volunteers repaired the footbridge over the river after the flood.",
    "The school choir rehearsed a new song for the winter concert.",
    "Farmers harvested the apples early because frost was forecast.",
    "The museum opened an exhibition of medieval maps and globes.",
    "Cyclists complained about potholes on the road to the lake.",
    "A retired teacher started a chess club in the public library.",
    "The city council voted to plant two hundred trees along the avenue.",
    "Fishermen reported unusually large shoals of herring this spring.",
    "The railway station got new benches and a covered bicycle rack.",
    "A family of otters was seen near the mill pond last week.",
    "The hospital extended its visiting hours on weekends.",
    "Students built a small weather station on the school roof.",
    "The football club repainted the stands in green and white.",
    "An astronomer gave a talk about the rings of Saturn at the observatory.",
]
LATE = "A violinist tuned her instrument backstage before the opera premiere."


def body(sentences: list[str]) -> str:
    return " ".join(sentences)


@pytest.fixture
def database(isolated_database_url, tmp_path):
    url = isolated_database_url
    execute(url, ARTICLES_DDL)
    config = make_config(
        tmp_path,
        [article_entity(chunking=CHUNKING)],
        worker={"poll_interval": 0.2, "batch_size": 16},
    )
    install_triggers(url, config)
    return url, config


def body_rows(url: str, entity_id: str = "1") -> list[tuple]:
    """(chunk, value, chunk_start, chunk_end, has vector) of the body's rows, by chunk."""
    with connect(url, autocommit=True) as conn:
        return conn.execute(
            "SELECT chunk, value, chunk_start, chunk_end, embedding IS NOT NULL"
            " FROM idxr.search_index WHERE entity_kind = 'article' AND entity_id = %s"
            " AND path = 'article.body' ORDER BY chunk",
            [entity_id],
        ).fetchall()


def chunk_texts(rows: list[tuple]) -> list[str]:
    whole = rows[0][1]
    return [whole[start:end] for _, _, start, end, _ in rows]


def test_a_long_body_is_chunked_and_a_change_re_embeds_only_new_chunks(database):
    url, config = database
    text = body([*SENTENCES, LATE])
    execute(
        url,
        "INSERT INTO articles (id, title, body, status) VALUES (1, 'Town news', %s, 'published')",
        [text],
    )
    with worker_thread(url, config) as runner:
        runner.settle(url)
        rows = body_rows(url)
        chunks = len(rows)
        assert chunks >= 4  # ~250 word pieces in chunks of 64 tokens
        assert [r[0] for r in rows] == list(range(chunks))
        assert rows[0][1] == text and all(r[1] == "" for r in rows[1:])  # one copy of the text
        assert all(r[4] for r in rows)  # every chunk has its vector
        assert rows[0][2] == 0 and rows[-1][3] == len(text)  # the chunks cover the text
        for before, after in zip(rows, rows[1:], strict=False):
            assert after[2] < before[3]  # consecutive chunks overlap
        # one model text per vector: title, status and every chunk of the body
        first = runner.worker.totals.texts_embedded
        with connect(url, autocommit=True) as conn:
            vectors = conn.execute(
                "SELECT count(embedding) FROM idxr.search_index WHERE entity_kind = 'article'"
            ).fetchone()[0]
        assert first == vectors == 2 + chunks

        # Unchanged body (another column changed): nothing is embedded.
        batches = runner.worker.totals.batches
        execute(url, "UPDATE articles SET views = 5 WHERE id = 1")
        runner.settle(url, batches_after=batches)
        assert runner.worker.totals.texts_embedded == first

        # One sentence near the end changes: only the chunks whose text is new are embedded.
        old_texts = set(chunk_texts(rows))
        changed = body([*SENTENCES[:-1], "Fog delayed the ferry to the island.", LATE])
        batches = runner.worker.totals.batches
        execute(url, "UPDATE articles SET body = %s WHERE id = 1", [changed])
        runner.settle(url, batches_after=batches)
        rows = body_rows(url)
        new_texts = [t for t in chunk_texts(rows) if t not in old_texts]
        embedded = runner.worker.totals.texts_embedded - first
        assert 1 <= embedded == len(new_texts) < len(rows)

        # A shorter body: the chunk rows beyond its chunks go.
        batches = runner.worker.totals.batches
        execute(url, "UPDATE articles SET body = %s WHERE id = 1", [body(SENTENCES[:6])])
        runner.settle(url, batches_after=batches)
        shorter = body_rows(url)
        assert 1 < len(shorter) < len(rows)
        assert [r[0] for r in shorter] == list(range(len(shorter)))


def test_search_returns_a_chunked_field_once_with_the_chunk_that_matched(database):
    url, config = database
    execute(
        url,
        "INSERT INTO articles (id, title, body, status) VALUES"
        " (1, 'Town news', %s, 'published'), (2, 'Transport', %s, 'published')",
        [body([*SENTENCES, LATE]), "Bus timetables change on the first of March."],
    )
    with worker_thread(url, config) as runner:
        runner.settle(url)
    query = "violinist tuning before the opera premiere"
    hits = search(query, kind="article", k=50, database_url=url, config=config)
    fields = [(h.entity_id, h.path) for h in hits]
    assert len(fields) == len(set(fields))  # each field once, however many chunks it has
    best = hits[0]
    assert (best.entity_id, best.path) == ("1", "article.body")
    assert best.chunk is not None and best.chunk > 0  # the sentence is late in the body
    assert LATE in best.chunk_text and best.value == body([*SENTENCES, LATE])
    assert hits[-1].chunk is None  # short fields are not chunked

    for hit in (
        search(query, kind="article", k=3, entities=True, database_url=url, config=config)[0],
        search(query, kind="article", k=3, hybrid=True, database_url=url, config=config)[0],
    ):
        assert (hit.entity_id, hit.path, hit.chunk) == ("1", "article.body", best.chunk)
        assert LATE in hit.chunk_text
    # The command line: the chunk in the path column and its text; JSON has both.
    runner = CliRunner(env={"COLUMNS": "200"})
    args = ["--database-url", url, "search", query, "--kind", "article", "-k", "1"]
    shown = runner.invoke(main, args, catch_exceptions=False)
    assert shown.exit_code == 0 and f"article.body (chunk {best.chunk})" in shown.output
    data = json.loads(runner.invoke(main, [*args, "--json"], catch_exceptions=False).output)
    assert (data[0]["chunk"], data[0]["chunk_text"]) == (best.chunk, best.chunk_text)
    # Filters and lexical search see the field's row, never a chunk row.
    lexical = search("violinist", kind="article", lexical=True, database_url=url, config=config)
    assert [(h.entity_id, h.path, h.value) for h in lexical] == [
        ("1", "article.body", body([*SENTENCES, LATE]))
    ]
    with connect(url, autocommit=True) as conn:
        assert conn.execute(
            "SELECT entity_id, path::text, chunked FROM idxr.search_fields"
            " WHERE path <@ 'article.body' ORDER BY 1"
        ).fetchall() == [("1", "article.body", True), ("2", "article.body", False)]
        # A chunk row's empty value is no body equal to '' (filters read chunk 0 only).
        assert conn.execute(
            "SELECT count(*) FROM idxr.search((SELECT embedding FROM idxr.search_index"
            " WHERE entity_id = '2' AND path = 'article.body'), NULL, 'article', 5,"
            ' \'[{"path": "article.body", "value": ""}]\')'
        ).fetchone() == (0,)


def test_rows_truncated_before_chunking_keep_working_and_a_reindex_chunks_them(
    empty_database_url,
):
    url = empty_database_url
    migrations.upgrade(url, "0006")
    execute(url, ARTICLES_DDL)
    text = body([*SENTENCES, LATE])
    execute(
        url,
        "INSERT INTO articles (id, title, body, status) VALUES (1, 'Town news', %s, 'draft')",
        [text],
    )
    path = "article.body"
    execute(
        url,
        "INSERT INTO idxr.search_index (entity_kind, entity_id, path, value, value_type,"
        " content_hash, embedding, truncation) VALUES ('article', '1', %s, %s, 'string', %s,"
        " NULL, 'end')",
        [path, text, content_hash(path, text, ValueType.STRING)],
    )
    migrations.upgrade(url, "head")
    with connect(url, autocommit=True) as conn:
        assert conn.execute(
            "SELECT chunk, value = %s, truncation FROM idxr.search_index", [text]
        ).fetchall() == [(0, True, "end")]
    config: IdxrConfig = parse_config(
        {"entities": [article_entity(chunking=CHUNKING, watch=[])]}, "test"
    )
    plan = plan_reindex(url, config, "article")
    job = Backfill(url, config, "article", BackfillOptions(tty=False, progress_interval=3600)).run()
    rows = body_rows(url)
    # The plan counted the body's chunks (and the title and status), as the reindex embedded.
    assert plan.texts_to_embed == job.counts.texts_embedded == len(rows) + 2
    assert len(rows) > 1 and rows[0][1] == text
    with connect(url, autocommit=True) as conn:
        assert conn.execute(
            "SELECT truncation FROM idxr.search_index WHERE path = %s AND chunk = 0", [path]
        ).fetchone() == (None,)
