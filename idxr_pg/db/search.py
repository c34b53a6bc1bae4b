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
    "check_lquery",
    "check_ltree",
    "index_models",
    "search",
    "similar_to",
]

_CHECK_LQUERY = "SELECT %s::lquery"
_CHECK_LTREE = "SELECT %s::ltree"
_CHECK_ARGS = "SELECT idxr.check_search_args(NULL, %s, %s)"
_CHECK_FILTERS = "SELECT idxr.search_filter_sql(%s, 5)"
_INDEX_MODELS = """
SELECT idxr.embedding_dimensions(),
       (SELECT coalesce(json_agg(json_build_array(ek.name, ek.model_name, em.version,
                                                  em.dimensions) ORDER BY ek.name), '[]')
          FROM idxr.entity_kinds ek
          LEFT JOIN idxr.embedding_models em ON em.name = ek.model_name
         WHERE ek.model_name IS NOT NULL AND (%(kind)s::text IS NULL OR ek.name = %(kind)s))
"""
_SEARCH = (
    "SELECT entity_kind, entity_id, path::text, value, distance"
    " FROM idxr.{function}(%s, %s::lquery, %s, %s, %s) ORDER BY distance"
)
_SIMILAR = (
    "SELECT entity_kind, entity_id, path::text, value, distance"
    " FROM idxr.similar_to(%s, %s, %s::ltree, %s, %s::lquery) ORDER BY distance"
)

Hit = tuple[str, str, str, str, float]
"""``(entity_kind, entity_id, path, value, distance)``, as the search functions return them."""


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
