"""What the bench scripts share about their database: the ``--database-url`` option (the
server they create scratch databases on) and the URL of a scratch database on it."""

from __future__ import annotations

import argparse
import os

import psycopg

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def add_database_url(parser: argparse.ArgumentParser, help: str | None = None) -> None:
    """``--database-url``, default ``$IDXR_DATABASE_URL`` or the local server."""
    parser.add_argument(
        "--database-url",
        default=os.environ.get("IDXR_DATABASE_URL", DEFAULT_DATABASE_URL),
        help=help,
    )


def with_dbname(url: str, name: str) -> str:
    """``url`` with its database name replaced by ``name``."""
    params = psycopg.conninfo.conninfo_to_dict(url)
    params["dbname"] = name
    return psycopg.conninfo.make_conninfo(**params)
