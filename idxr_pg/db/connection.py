"""Connections to PostgreSQL with the pgvector adapter registered."""

from __future__ import annotations

import psycopg
from pgvector.psycopg import register_vector

from idxr_pg.errors import IdxrError


class DatabaseError(IdxrError):
    """The database cannot be reached or is not set up for idxr-pg; the message says what to do."""


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparseable database URL>"
    if info.get("password"):
        info["password"] = "***"
    host = info.get("host", "local socket")
    port = info.get("port", "5432")
    user = info.get("user", "")
    return f"{user + '@' if user else ''}{host}:{port}/{info.get('dbname', '')}"


def connect(url: str, *, autocommit: bool = False, vector: bool = True) -> psycopg.Connection:
    """Open a connection; with ``vector`` the pgvector types are registered (needs the extension)."""
    try:
        conn = psycopg.connect(url, autocommit=autocommit, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise DatabaseError(f"cannot connect to {redact(url)}: {str(exc).strip()}") from exc
    if vector:
        try:
            register_vector(conn)
        except psycopg.ProgrammingError as exc:
            conn.close()
            raise DatabaseError(
                f"the vector extension is not installed in {redact(url)}: run `idxr-pg migrate`"
            ) from exc
        if not autocommit:
            conn.commit()  # end the transaction the type look-up opened
    return conn
