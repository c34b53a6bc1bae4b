"""The SQL the Python search API runs: argument checks, the index's model, the searches.

The searches themselves are the ``idxr.search``, ``idxr.search_entities`` and
``idxr.similar_to`` functions (``idxr_pg/schema/040_search.sql``); these wrappers only call
them. Every function raises `psycopg.Error` as the database does; `idxr_pg.search` turns
those into user-facing messages.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.types.json import Jsonb

__all__ = [
    "check_arguments",
    "check_filters",
    "check_weights",
    "check_lquery",
    "check_ltree",
    "hybrid_search",
    "index_models",
    "search",
    "similar_to",
    "text_search",
]

_CHECK_LQUERY = "SELECT %s::lquery"
_CHECK_LTREE = "SELECT %s::ltree"
_CHECK_ARGS = "SELECT idxr.check_search_args(NULL, %s, %s)"
_CHECK_FILTERS = "SELECT idxr.search_filter_sql(%s, 5)"
_CHECK_WEIGHTS = "SELECT idxr.hybrid_weights(%s)"
_INDEX_MODELS = """
SELECT idxr.embedding_dimensions(),
       (SELECT coalesce(json_agg(json_build_array(ek.name, ek.model_name, em.version,
                                                  em.dimensions) ORDER BY ek.name), '[]')
          FROM idxr.entity_kinds ek
          LEFT JOIN idxr.embedding_models em ON em.name = ek.model_name
         WHERE ek.model_name IS NOT NULL AND (%(kind)s::text IS NULL OR ek.name = %(kind)s))
"""
_SEARCH = (
    "SELECT entity_kind, entity_id, path::text, value, distance, stale, NULL::float8,"
    " chunk, chunk_text"
    " FROM idxr.{function}(%s, %s::lquery, %s, %s, %s) ORDER BY distance"
)
_SIMILAR = (
    "SELECT entity_kind, entity_id, path::text, value, distance, stale, NULL::float8,"
    " chunk, chunk_text"
    " FROM idxr.similar_to(%s, %s, %s::ltree, %s, %s::lquery) ORDER BY distance"
)
# Hybrid and lexical results come best first (score descending); the row order is kept.
_HYBRID = (
    "SELECT entity_kind, entity_id, path::text, value, distance, stale, score, chunk,"
    " chunk_text FROM idxr.{function}(%s, %s, %s::lquery, %s, %s, %s, %s)"
)
_LEXICAL = (
    "SELECT entity_kind, entity_id, path::text, value, distance, stale, score, chunk,"
    " chunk_text FROM idxr.{function}(%s, %s::lquery, %s, %s, %s)"
)

Hit = tuple[str, str, str, str, float | None, bool | None, float | None, int | None, str | None]
"""``(entity_kind, entity_id, path, value, distance, stale, score, chunk, chunk_text)`` as the
search functions return them; ``score`` only from hybrid and lexical search, ``distance`` NULL
for a row the vector list did not hold, ``chunk`` NULL unless the field is chunked."""


def check_lquery(conn: psycopg.Connection, path: str) -> None:
    """Raise unless ``path`` is a valid lquery (UndefinedObject: no ltree extension)."""
    conn.execute(_CHECK_LQUERY, [path])


def check_ltree(conn: psycopg.Connection, path: str) -> None:
    """Raise unless ``path`` is a valid ltree."""
    conn.execute(_CHECK_LTREE, [path])


def check_arguments(conn: psycopg.Connection, kind: str | None, k: int) -> None:
    """The search functions' own argument checks (``idxr: ...`` messages)."""
    conn.execute(_CHECK_ARGS, [kind, k])


def check_filters(conn: psycopg.Connection, filters: list[dict[str, Any]]) -> None:
    """Raise unless the structured filters compile (``idxr: ...`` messages)."""
    conn.execute(_CHECK_FILTERS, [Jsonb(filters)])


def check_weights(conn: psycopg.Connection, weights: dict[str, float]) -> None:
    """Raise unless the hybrid weights are valid (``idxr: ...`` messages)."""
    conn.execute(_CHECK_WEIGHTS, [Jsonb(weights)])


def index_models(conn: psycopg.Connection, kind: str | None) -> tuple[int | None, list[list[Any]]]:
    """The index's vector size and ``[kind, model name, version, dimensions]`` per indexed
    kind (all kinds, or only ``kind``)."""
    dims, kinds = conn.execute(_INDEX_MODELS, {"kind": kind}).fetchone()
    return dims, kinds


def search(
    conn: psycopg.Connection,
    vector: Any,
    path: str | None,
    kind: str | None,
    k: int,
    filters: list[dict[str, Any]] | None,
    *,
    entities: bool = False,
) -> list[Hit]:
    """Nearest field records to ``vector`` (``entities``: nearest entities), nearest first."""
    function = "search_entities" if entities else "search"
    query = _SEARCH.format(function=function)
    params = [vector, path, kind, k, Jsonb(filters) if filters else None]
    return conn.execute(query, params).fetchall()


def similar_to(
    conn: psycopg.Connection,
    kind: str,
    entity_id: str,
    path: str,
    k: int,
    path_filter: str | None,
) -> list[Hit]:
    """Entities nearest to the stored vector of field ``path`` of ``(kind, entity_id)``."""
    return conn.execute(_SIMILAR, [kind, entity_id, path, k, path_filter]).fetchall()


def hybrid_search(
    conn: psycopg.Connection,
    text: str,
    vector: Any,
    path: str | None,
    kind: str | None,
    k: int,
    filters: list[dict[str, Any]] | None,
    weights: dict[str, float] | None,
    *,
    entities: bool = False,
) -> list[Hit]:
    """Lexical and vector search fused (``idxr.hybrid_search[_entities]``), best first."""
    function = "hybrid_search_entities" if entities else "hybrid_search"
    params = [
        text,
        vector,
        path,
        kind,
        k,
        Jsonb(filters) if filters else None,
        Jsonb(weights) if weights else None,
    ]
    return conn.execute(_HYBRID.format(function=function), params).fetchall()


def text_search(
    conn: psycopg.Connection,
    text: str,
    path: str | None,
    kind: str | None,
    k: int,
    filters: list[dict[str, Any]] | None,
    *,
    entities: bool = False,
) -> list[Hit]:
    """Full-text search alone (``idxr.text_search[_entities]``), best first."""
    function = "text_search_entities" if entities else "text_search"
    params = [text, path, kind, k, Jsonb(filters) if filters else None]
    return conn.execute(_LEXICAL.format(function=function), params).fetchall()
