"""Shared pieces of the pipeline and worker tests: models, tables, configs, expectations."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath
from typing import Any

import psycopg
import yaml
from pydantic import BaseModel, field_validator, model_validator

from idxr_pg.capture import triggers as capture
from idxr_pg.config import IdxrConfig, load_config
from idxr_pg.db.connection import connect
from idxr_pg.records.traverse import flatten

ROOT = Path(__file__).resolve().parents[2]
IDXR = str(Path(sys.executable).with_name("idxr-pg"))


# --------------------------------------------------------------------------- models


class Tag(BaseModel):
    name: str
    weight: int | None = None


class Article(BaseModel):
    id: int
    title: str
    body: str | None = None
    status: str
    views: int = 0
    tags: list[Tag] = []
    unstorable: PurePosixPath | None = None  # set only by `_unstorable` below

    @field_validator("title")
    @classmethod
    def _no_shouting(cls, value: str) -> str:
        # A validation rule the tests break on purpose.
        if value.isupper() and len(value) > 3:
            raise ValueError("title must not be all capitals")
        return value

    @model_validator(mode="after")
    def _unstorable(self) -> Article:
        # "<NUL>" in the title produces a value PostgreSQL cannot store, to exercise a
        # write-stage failure (NUL itself is stripped by the record builder): a lone surrogate
        # has no UTF-8 form. A path is a non-embeddable string, so no model call sees it.
        if "<NUL>" in self.title:
            self.unstorable = PurePosixPath("broken\ud800name")
        return self


class Item(BaseModel):
    id: int
    title: str
    body: str | None = None
    n: int


ARTICLES_DDL = """
CREATE TABLE public.articles (
    id     integer PRIMARY KEY,
    title  text NOT NULL,
    body   text,
    status text NOT NULL DEFAULT 'draft',
    views  integer NOT NULL DEFAULT 0
);
CREATE TABLE public.tags (
    id         serial PRIMARY KEY,
    article_id integer NOT NULL REFERENCES public.articles (id) ON DELETE CASCADE,
    name       text NOT NULL,
    weight     integer
);
"""

ARTICLE_DOCUMENT = """
SELECT a.id,
       to_jsonb(a) || jsonb_build_object('tags', COALESCE(
           (SELECT jsonb_agg(jsonb_build_object('name', t.name, 'weight', t.weight) ORDER BY t.id)
              FROM public.tags t WHERE t.article_id = a.id),
           '[]'::jsonb))
FROM public.articles a
WHERE a.id = ANY(%(keys)s::integer[])
"""
# The same document query over every article (no key filter), for expected-index checks.
ALL_ARTICLES = ARTICLE_DOCUMENT.replace("WHERE a.id = ANY(%(keys)s::integer[])", "")

ITEMS_DDL = """
CREATE TABLE public.items (
    id    integer PRIMARY KEY,
    title text NOT NULL,
    body  text,
    n     integer NOT NULL DEFAULT 0
);
"""


def article_entity(**overrides: Any) -> dict[str, Any]:
    entity = {
        "name": "article",
        "model": "tests.integration.worker_support:Article",
        "table": "public.articles",
        "key": "id",
        "document": ARTICLE_DOCUMENT,
        "watch": [{"table": "public.tags", "key": "article_id"}],
    }
    entity.update(overrides)
    return entity


def item_entity(**overrides: Any) -> dict[str, Any]:
    entity = {
        "name": "item",
        "model": "tests.integration.worker_support:Item",
        "table": "public.items",
        "key": "id",
    }
    entity.update(overrides)
    return entity


# --------------------------------------------------------------------------- config


def write_config(
    path: Path,
    entities: Iterable[dict[str, Any]],
    *,
    model: str = "all-MiniLM-L6-v2",
    worker: dict[str, Any] | None = None,
    backfill: dict[str, Any] | None = None,
) -> Path:
    data: dict[str, Any] = {"entities": list(entities), "embedding": {"model": model}}
    if worker:
        data["worker"] = worker
    if backfill:
        data["backfill"] = backfill
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def make_config(tmp_path: Path, entities: Iterable[dict[str, Any]], **kwargs: Any) -> IdxrConfig:
    return load_config(write_config(tmp_path / "idxr.yaml", entities, **kwargs))


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    env.update(extra)
    return env


# --------------------------------------------------------------------------- database


def execute(url: str, statement: str, params: Any = None) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(statement, params)


def install_triggers(url: str, config: IdxrConfig) -> None:
    with connect(url, vector=False) as conn:
        capture.install_triggers(conn, config.entities)


def fetch_index(url: str, kind: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Stored rows of a kind by (entity_id, path)."""
    with connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT entity_id, path::text, value, value_type::text, content_hash, embedding,"
            " truncation, updated_at, xmin::text::bigint"
            " FROM idxr.search_index WHERE entity_kind = %s AND chunk = 0",
            [kind],
        ).fetchall()
    return {
        (r[0], r[1]): {
            "value": r[2],
            "value_type": r[3],
            "content_hash": r[4],
            "embedding": r[5],
            "truncation": r[6],
            "updated_at": r[7],
            "xmin": r[8],
        }
        for r in rows
    }


def expected_index(
    url: str, kind: str, model: type[BaseModel], query: str
) -> set[tuple[str, str, str, str, str, bool]]:
    """What the index must hold: the flattening of every current source document."""
    out = set()
    with psycopg.connect(url, autocommit=True) as conn:
        for key, document in conn.execute(query).fetchall():
            for r in flatten(model.model_validate(document), kind):
                out.add(
                    (str(key), r.path, r.value, r.value_type.value, r.content_hash, r.embeddable)
                )
    return out


def actual_index(url: str, kind: str) -> set[tuple[str, str, str, str, str, bool]]:
    return {
        (
            entity_id,
            path,
            row["value"],
            row["value_type"],
            row["content_hash"],
            row["embedding"] is not None,
        )
        for (entity_id, path), row in fetch_index(url, kind).items()
    }


def queue_depth(url: str, kind: str | None = None) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(
            "SELECT (SELECT count(*) FROM idxr.queue"
            "         WHERE %(k)s::text IS NULL OR entity_kind = %(k)s)"
            " + (SELECT COALESCE(sum(cardinality(entity_ids)), 0) FROM idxr.queue_batches"
            "     WHERE %(k)s::text IS NULL OR entity_kind = %(k)s)",
            {"k": kind},
        ).fetchone()[0]


def wait_until(
    predicate: Callable[[], bool], timeout: float = 30.0, interval: float = 0.1, what: str = ""
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what or predicate}")
