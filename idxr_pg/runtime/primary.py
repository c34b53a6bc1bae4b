"""The one check that a command which writes the index runs against a writable primary.

The worker, `refresh` and a backfill write ``idxr.search_index``, the queue and their
bookkeeping; a hot standby (or a read-only session) refuses every one of those writes. Rather
than failing later on a LISTEN or the first write (which the daemon would retry forever),
they refuse such a database up front with one message saying where to point them. Searches
need no such check: they only read, and run on a standby. Commands that read but tidy up on
the way (`status` and `jobs` mark vanished workers lost and abandoned jobs interrupted) ask
`can_write` and skip the tidying on a standby; the primary's own `status` does it.
"""

from __future__ import annotations

import psycopg

from idxr_pg.db.catalog import read_only_reason
from idxr_pg.db.connection import redact
from idxr_pg.errors import IdxrError

__all__ = ["ReadOnlyDatabase", "can_write", "refuse_read_only"]


class ReadOnlyDatabase(IdxrError):
    """The database cannot be written (a standby or a read-only session); the message says
    which and what to do."""


def refuse_read_only(conn: psycopg.Connection, action: str) -> None:
    """Raise `ReadOnlyDatabase` when ``conn`` cannot write (``action`` names the run)."""
    reason = read_only_reason(conn)
    if reason is None:
        return
    where = redact(conn.info.dsn) if conn.info.dsn else "the database"
    raise ReadOnlyDatabase(
        f"cannot {action}: {where} {reason}; run it against the primary (searches can use "
        "a standby, indexing cannot)"
    )


def can_write(conn: psycopg.Connection) -> bool:
    """Whether ``conn`` can write (not a standby, not a read-only session)."""
    return read_only_reason(conn) is None
