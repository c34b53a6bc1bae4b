"""A comparable snapshot of everything in the idxr schema, read from the system catalogs."""

from __future__ import annotations

from typing import Any

import psycopg

CATALOG_QUERIES: dict[str, str] = {
    "columns": """
        SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               pg_get_expr(d.adbin, d.adrelid), a.attidentity
          FROM pg_attribute a
          JOIN pg_class c ON c.oid = a.attrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
          LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE n.nspname = 'idxr' AND a.attnum > 0 AND NOT a.attisdropped
           AND c.relkind IN ('r', 'v', 'm', 'p')
         ORDER BY 1, 2""",
    "constraints": """
        SELECT c.relname, con.conname, pg_get_constraintdef(con.oid)
          FROM pg_constraint con
          JOIN pg_class c ON c.oid = con.conrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'idxr' ORDER BY 1, 2""",
    "indexes": "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'idxr' ORDER BY 1",
    "functions": """
        SELECT p.oid::regprocedure::text, pg_get_functiondef(p.oid)
          FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = 'idxr' ORDER BY 1""",
    "enums": """
        SELECT t.typname, array_agg(e.enumlabel ORDER BY e.enumsortorder)
          FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid
          JOIN pg_namespace n ON n.oid = t.typnamespace
         WHERE n.nspname = 'idxr' GROUP BY 1 ORDER BY 1""",
    "views": """
        SELECT viewname, pg_get_viewdef(format('%I.%I', schemaname, viewname)::regclass)
          FROM pg_views WHERE schemaname = 'idxr' ORDER BY 1""",
    "triggers": """
        SELECT tgrelid::regclass::text, tgname, pg_get_triggerdef(t.oid)
          FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
          JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = 'idxr' AND NOT t.tgisinternal ORDER BY 1, 2""",
    "extensions": """
        SELECT extname FROM pg_extension WHERE extname IN ('vector', 'ltree') ORDER BY 1""",
    "version": "SELECT version_num FROM idxr.alembic_version",
}


def snapshot(url: str) -> dict[str, list[tuple[Any, ...]]]:
    with psycopg.connect(url) as conn:
        return {name: conn.execute(query).fetchall() for name, query in CATALOG_QUERIES.items()}
