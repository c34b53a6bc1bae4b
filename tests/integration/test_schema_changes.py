"""Schema changes (issue 15): a changed entity model is detected (status, worker/backfill
start), `idxr-pg plan` predicts exactly what `idxr-pg reindex` then does, the reindex writes
and embeds only what changed (real model), and config drift of the capture triggers is named.

The model variants are modules of their own (tests/integration/schema_models), imported by
"module:Class" as the config does."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from click.testing import CliRunner

from idxr_pg.cli import main
from idxr_pg.config import EmbeddingSettings

KIND = "article"
MODELS = "tests.integration.schema_models"
REAL = "all-MiniLM-L6-v2"
ROWS = 12

DDL = """
CREATE TABLE public.articles (
    id      integer PRIMARY KEY,
    title   text NOT NULL,
    body    text NOT NULL,
    summary text,
    tag     text
);
"""


def sql(url: str, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(statement, params)
        return cur.fetchall() if cur.description else []


def make_articles(url: str, token: str) -> None:
    """Rows whose texts are unique to this run (``token``), so no other test cached them.
    Rows 1-8 get a summary, two of them the same one; 9-12 none."""
    sql(url, DDL)
    sql(
        url,
        """
        INSERT INTO public.articles (id, title, body, summary)
        SELECT g, 'title ' || g || ' ' || %(t)s, 'the body of article ' || g || ' ' || %(t)s,
               CASE WHEN g <= 8 THEN 'summary ' || least(g, 7) || ' ' || %(t)s END
          FROM generate_series(1, %(n)s) AS g
        """,
        {"t": token, "n": ROWS},
    )


def write_config(
    path: Path,
    module: str,
    *,
    model: str = REAL,
    columns: list[str] | None = None,
    **entity: Any,
) -> Path:
    data: dict[str, Any] = {
        "entities": [
            {
                "name": KIND,
                "model": f"{MODELS}.{module}:Article",
                "table": "public.articles",
                "key": "id",
                **({"columns": columns} if columns else {}),
                **entity,
            }
        ],
        "embedding": {"model": model},
        "backfill": {"batch_size": 100},  # one batch: the job's cache hits are per batch
    }
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def cli(url: str, config: Path, *args: str, exit_code: int = 0) -> Any:
    result = CliRunner().invoke(
        main, ["--database-url", url, "--config", str(config), *args], catch_exceptions=False
    )
    assert result.exit_code == exit_code, result.output
    return result


def cli_json(url: str, config: Path, *args: str) -> Any:
    return json.loads(cli(url, config, *args, "--json").stdout)


def index_rows(url: str) -> dict[tuple[str, str], tuple[str, Any, int]]:
    """(entity_id, path) -> (content_hash, updated_at, xmin)."""
    rows = sql(
        url,
        "SELECT entity_id, path::text, content_hash, updated_at, xmin::text::bigint "
        "FROM idxr.search_index WHERE entity_kind = %s",
        [KIND],
    )
    return {(r[0], r[1]): (r[2], r[3], r[4]) for r in rows}


def kind_status(url: str, config: Path) -> dict[str, Any]:
    (kind,) = [k for k in cli_json(url, config, "status")["kinds"] if k["entity_kind"] == KIND]
    return kind


@pytest.fixture
def url(isolated_database_url: str) -> str:
    return isolated_database_url


@pytest.fixture
def embedded_texts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every text the (per-process) real model embeds from here on."""
    from idxr_pg.embedding import load_embedder
    from idxr_pg.embedding.service import EmbeddingService

    embedder = load_embedder(EmbeddingSettings(model=REAL))
    seen: list[str] = []
    real = EmbeddingService._model_call

    # The service's one model call, whichever way it reaches the model (texts, or the token
    # ids it counted already).
    def counting(service: EmbeddingService, texts: list[str], ids: Any) -> Any:
        if service.embedder is embedder:
            seen.extend(texts)
        return real(service, texts, ids)

    monkeypatch.setattr(EmbeddingService, "_model_call", counting)
    return seen


def seed_cache(url: str, text: str) -> None:
    """Put one text's vector in the embedding cache, as an earlier run would have."""
    from idxr_pg.embedding import EmbeddingCache, EmbeddingService, EmbedRequest, load_embedder

    settings = EmbeddingSettings(model=REAL)
    with EmbeddingCache(url) as cache:
        EmbeddingService(load_embedder(settings), settings, cache).embed(
            [EmbedRequest("seed", text)]
        )


def assert_plan_matches(plan: dict[str, Any], job: dict[str, Any]) -> None:
    """Plan accuracy: what the plan predicted is what the reindex job did."""
    assert job["state"] == "succeeded" and job["failed"] == 0
    assert job["records_written"] == plan["records"]["write"]
    assert job["records_deleted"] == plan["records"]["remove"]
    assert job["embedded"] == plan["texts"]["to_embed"]
    assert job["cache_hits"] == plan["texts"]["cached"]
    assert job["unchanged"] == plan["entities"]["unchanged"]
    assert job["deleted"] == plan["entities"]["remove"]


# --------------------------------------------------------------------------- added field


@pytest.mark.model
def test_added_field_reindex_writes_and_embeds_only_the_new_field(
    url: str, tmp_path: Path, embedded_texts: list[str]
):
    token = uuid.uuid4().hex[:10]
    make_articles(url, token)
    config = write_config(tmp_path / "idxr.yaml", "base")
    first = cli_json(url, config, "backfill", KIND)
    assert first["state"] == "succeeded" and first["embedded"] == 2 * ROWS
    assert kind_status(url, config)["schema_stale"] is False
    before = index_rows(url)
    assert {path for _, path in before} == {"article.id", "article.title", "article.body"}

    # The application adds a field to its model; one of its texts is already cached.
    config = write_config(tmp_path / "idxr.yaml", "added")
    seed_cache(url, f"article.summary: summary 1 {token}")
    status = kind_status(url, config)
    assert status["schema_stale"] is True
    assert status["schema_change"] == "added article.summary"
    text = cli(url, config, "status").output
    assert "STALE: added article.summary" in text and "idxr-pg reindex article" in text
    assert sql(url, "SELECT schema_change->'added' FROM idxr.entity_kinds") == [
        (["article.summary"],)
    ]

    plan = cli_json(url, config, "plan", KIND)
    assert index_rows(url) == before  # the plan wrote nothing
    assert plan["stale"] is True and plan["schema_change"]["added"] == ["article.summary"]
    assert plan["entities"] == {
        "add": 0,
        "update": 8,
        "remove": 0,
        "unchanged": ROWS - 8,
        "failing": 0,
        "reembed": 8,
    }
    assert plan["records"] == {"add": 8, "update": 0, "remove": 0, "write": 8}
    # 8 summaries, 7 distinct (6 and 7 share one), summary 1 cached: 6 to embed
    assert plan["texts"] == {"records": 8, "distinct": 7, "cached": 1, "to_embed": 6}
    assert plan["rate_source"].startswith("measured now: 6 of the texts to embed")
    assert plan["eta_seconds"] > 0

    embedded_texts.clear()
    job = cli_json(url, config, "reindex", KIND)
    assert_plan_matches(plan, job)
    assert job["options"]["reindex"] is True
    # only the new field's texts reached the model, each once, and not the cached one
    assert sorted(embedded_texts) == sorted(
        {f"article.summary: summary {min(g, 7)} {token}" for g in range(2, 9)}
    )
    after = index_rows(url)
    assert {k: v for k, v in after.items() if k in before} == before  # no other row rewritten
    assert sorted(k for k in after if k not in before) == sorted(
        (str(g), "article.summary") for g in range(1, 9)
    )
    status = kind_status(url, config)
    assert status["schema_stale"] is False and status["schema_change"] is None
    # a second reindex has nothing to do
    assert "is up to date" in cli(url, config, "reindex", KIND).output


# --------------------------------------------------------------------------- renamed field


@pytest.mark.model
def test_renamed_field_reembeds_exactly_the_renamed_paths(
    url: str, tmp_path: Path, embedded_texts: list[str]
):
    token = uuid.uuid4().hex[:10]
    make_articles(url, token)
    config = write_config(tmp_path / "idxr.yaml", "base")
    cli_json(url, config, "backfill", KIND)
    before = index_rows(url)

    config = write_config(tmp_path / "idxr.yaml", "renamed")
    status = kind_status(url, config)
    assert status["schema_change"] == "renamed article.body -> article.text"
    plan = cli_json(url, config, "plan", KIND)
    assert plan["renames"] == [
        {
            "old": "article.body",
            "new": "article.text",
            "same_values": ROWS,
            "other_values": 0,
            "confirmed": True,
        }
    ]
    assert plan["records"] == {"add": ROWS, "update": 0, "remove": ROWS, "write": ROWS}
    assert plan["texts"]["to_embed"] == ROWS and plan["texts"]["cached"] == 0
    assert "rename article.body -> article.text: confirmed by the data" in (
        cli(url, config, "plan", KIND).output
    )

    embedded_texts.clear()
    job = cli_json(url, config, "reindex", KIND)
    assert_plan_matches(plan, job)
    assert sorted(embedded_texts) == sorted(
        f"article.text: the body of article {g} {token}" for g in range(1, ROWS + 1)
    )
    after = index_rows(url)
    untouched = {k: v for k, v in before.items() if k[1] != "article.body"}
    assert {k: v for k, v in after.items() if k in untouched} == untouched
    assert not [k for k in after if k[1] == "article.body"]
    assert sorted(k for k in after if k[1] == "article.text") == sorted(
        (str(g), "article.text") for g in range(1, ROWS + 1)
    )
    assert kind_status(url, config)["schema_stale"] is False


# --------------------------------------------------------------------------- automatic


def test_on_schema_change_reindex_runs_at_worker_start(url: str, tmp_path: Path):
    make_articles(url, "auto")
    config = write_config(tmp_path / "idxr.yaml", "base", model="deterministic-test")
    cli_json(url, config, "backfill", KIND)
    warned = write_config(tmp_path / "idxr.yaml", "added", model="deterministic-test")
    started = cli(url, warned, "worker", "--once").output
    assert "entity kind 'article' is stale" in started and "(added article.summary)" in started
    assert kind_status(url, warned)["schema_stale"] is True  # warn: nothing reindexed
    assert not [k for k in index_rows(url) if k[1] == "article.summary"]

    auto = write_config(
        tmp_path / "idxr.yaml", "added", model="deterministic-test", on_schema_change="reindex"
    )
    reindexed = cli(url, auto, "worker", "--once").output
    assert "on_schema_change is reindex" in reindexed
    assert kind_status(url, auto)["schema_stale"] is False
    assert len([k for k in index_rows(url) if k[1] == "article.summary"]) == 8


def test_backfill_start_reports_the_change_and_a_complete_run_records_the_shape(
    url: str, tmp_path: Path
):
    make_articles(url, "bf")
    config = write_config(tmp_path / "idxr.yaml", "base", model="deterministic-test")
    cli_json(url, config, "backfill", KIND)
    renamed = write_config(tmp_path / "idxr.yaml", "renamed", model="deterministic-test")
    output = cli(url, renamed, "backfill", KIND).output
    assert "(renamed article.body -> article.text)" in output
    assert kind_status(url, renamed)["schema_stale"] is False  # every entity went through
    (shape,) = sql(url, "SELECT schema_shape->'fields' FROM idxr.entity_kinds")[0]
    assert shape["article.text"] == "string" and "article.body" not in shape


def test_a_reindex_with_a_failed_entity_leaves_the_kind_stale(url: str, tmp_path: Path):
    make_articles(url, "picky")
    config = write_config(tmp_path / "idxr.yaml", "base", model="deterministic-test")
    cli_json(url, config, "backfill", KIND)
    picky = write_config(tmp_path / "idxr.yaml", "picky", model="deterministic-test")
    plan = cli_json(url, picky, "plan", KIND)
    assert plan["entities"]["failing"] == 1 and plan["entities"]["update"] == 7
    result = cli(url, picky, "reindex", KIND)
    assert "1 entities failed" in result.output
    assert "warning: article is still stale (added article.summary)" in result.output
    assert kind_status(url, picky)["schema_stale"] is True
    rows = index_rows(url)
    assert ("3", "article.body") in rows  # the failed entity keeps what it had
    assert len([k for k in rows if k[1] == "article.summary"]) == 7


def test_plan_and_reindex_refuse_an_unknown_kind(url: str, tmp_path: Path):
    make_articles(url, "x")
    config = write_config(tmp_path / "idxr.yaml", "base", model="deterministic-test")
    for command in ("plan", "reindex"):
        result = CliRunner().invoke(
            main, ["--database-url", url, "--config", str(config), command, "nope"]
        )
        assert result.exit_code == 1
        assert "unknown entity kind 'nope'" in result.output


# --------------------------------------------------------------------------- config drift


def test_config_drift_names_the_changed_watch_columns(url: str, tmp_path: Path):
    make_articles(url, "drift")
    sql(url, "CREATE TABLE public.tags (article_id integer, tag text, weight integer)")
    watch = [{"table": "public.tags", "key": "article_id", "columns": ["tag"]}]
    config = write_config(
        tmp_path / "idxr.yaml",
        "base",
        model="deterministic-test",
        columns=["title", "body"],
        watch=watch,
    )
    cli(url, config, "triggers", "install")
    assert "drift" not in cli(url, config, "triggers", "list").output
    assert kind_status(url, config)["config_drift"] == []

    watch[0]["columns"] = ["tag", "weight"]
    changed = write_config(
        tmp_path / "idxr.yaml",
        "base",
        model="deterministic-test",
        columns=["title", "body", "summary"],
        watch=watch,
    )
    listed = cli(url, changed, "triggers", "list").output
    assert (
        "drift: entity 'article', table public.articles: table: columns [title, body] "
        "installed, [title, body, summary] configured (+summary): run `idxr-pg triggers install`"
    ) in listed
    assert (
        "drift: entity 'article', table public.tags: watch[0]: columns [tag] installed, "
        "[tag, weight] configured (+weight)"
    ) in listed
    drift = kind_status(url, changed)["config_drift"]
    assert sorted(d["table"] for d in drift) == ["public.articles", "public.tags"]
    assert "+weight" in cli(url, changed, "status").output

    cli(url, changed, "triggers", "install")
    assert "drift" not in cli(url, changed, "triggers", "list").output
    assert kind_status(url, changed)["config_drift"] == []
