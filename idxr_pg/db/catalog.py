"""Catalog look-ups: is idxr-pg installed here, which tables and columns exist.

The one place that asks PostgreSQL's catalog about the database idxr-pg runs in.
"""

from __future__ import annotations

import psycopg

__all__ = ["idxr_installed"]

_IDXR_INSTALLED_SQL = "SELECT pg_catalog.to_regclass('idxr.search_index') IS NOT NULL"


def idxr_installed(conn: psycopg.Connection) -> bool:
    """Whether the idxr schema (its index table) exists in the connected database."""
    row = conn.execute(_IDXR_INSTALLED_SQL).fetchone()
    return bool(row and row[0])
