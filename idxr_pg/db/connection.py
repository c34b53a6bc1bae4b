"""Connections to PostgreSQL: opening them (pgvector registered), naming them, losing them.

`connect` opens one (`reopened` replaces a lost one); `conninfo` names it for ``pg_stat_activity``; `is_connection_lost` tells a
lost connection or an unreachable server (retry later) from bad data or a set-up problem (a
missing database or role, a refused login: `is_login_refused`, final); `retry_with_backoff`
is the one reconnect loop of the long-running processes (forever, or until a deadline).
Every connection idxr-pg opens through `connect` or `conninfo` has TCP keepalives
(`KEEPALIVES`, each overridable by the URL), so a half-open connection (a server or network
gone without a FIN) is noticed in about a minute instead of never.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import TypeVar

import psycopg
from pgvector.psycopg import register_vector

from idxr_pg.errors import IdxrError

__all__ = [
    "KEEPALIVES",
    "RECONNECT_BASE_SECONDS",
    "RECONNECT_MAX_SECONDS",
    "DatabaseError",
    "commit_asynchronously",
    "connect",
    "conninfo",
    "end_session",
    "is_connection_lost",
    "is_login_refused",
    "missing_keepalives",
    "one_line",
    "read_only_refusal",
    "redact",
    "retry_with_backoff",
    "with_keepalives",
]

log = logging.getLogger(__name__)

RECONNECT_BASE_SECONDS = 0.5
RECONNECT_MAX_SECONDS = 30.0
APPLICATION_NAME_LIMIT = 63  # PostgreSQL's NAMEDATALEN - 1
# libpq TCP keepalive parameters: probe after 30 s idle, every 10 s, give up after 3 misses.
KEEPALIVES = {
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
}

T = TypeVar("T")


class DatabaseError(IdxrError):
    """The database cannot be reached or is not set up for idxr-pg; the message says what to do."""


def one_line(message: str) -> str:
    """A server or libpq message on one line (libpq adds hints and details on new lines)."""
    return " ".join(message.split())


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


def with_keepalives(url: str) -> str:
    """``url`` with the `KEEPALIVES` it does not set itself (a URL's own values win)."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return url  # connecting reports the unparseable URL
    missing = missing_keepalives(info)
    return psycopg.conninfo.make_conninfo(url, **missing) if missing else url


def missing_keepalives(params: Mapping[str, object]) -> dict[str, str]:
    """The `KEEPALIVES` that connection parameters ``params`` do not set themselves (for
    connections opened by another library, e.g. SQLAlchemy's ``connect_args``)."""
    return {key: value for key, value in KEEPALIVES.items() if key not in params}


def connect(url: str, *, autocommit: bool = False, vector: bool = True) -> psycopg.Connection:
    """Open a connection (with `KEEPALIVES`); with ``vector`` the pgvector types are registered
    (needs the extension)."""
    try:
        conn = psycopg.connect(with_keepalives(url), autocommit=autocommit, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise DatabaseError(f"cannot connect to {redact(url)}: {one_line(str(exc))}") from exc
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


def reopened(
    conn: psycopg.Connection | None, open_connection: Callable[[], psycopg.Connection]
) -> psycopg.Connection:
    """``conn`` while it is usable; else it is closed (if any) and ``open_connection()`` gives
    its replacement (the long-lived connections of workers and the metrics reader)."""
    if conn is not None and not conn.closed and not conn.broken:
        return conn
    if conn is not None:
        conn.close()
    return open_connection()


_ASYNCHRONOUS_COMMIT_SQL = "SET synchronous_commit = off"


def commit_asynchronously(conn: psycopg.Connection) -> None:
    """This session's commits return before their WAL reaches disk (``synchronous_commit =
    off``, a session setting any role may make). For sessions whose every commit can be
    redone: a server crash loses the last ones (at most ~3 x ``wal_writer_delay``) whole,
    never part of one, and never one of another session; a client that dies loses nothing.
    The embedding cache's writes (recomputed on a miss) and a backfill's batches (each
    committed with its checkpoint, so ``--resume`` redoes what a crash took back) qualify;
    the fsync each commit would wait for is most of a small write's time."""
    conn.execute(_ASYNCHRONOUS_COMMIT_SQL)
    if not conn.autocommit:
        conn.commit()


def end_session(conn: psycopg.Connection, other: psycopg.Connection) -> None:
    """End ``other``'s server session from ``conn`` (``pg_terminate_backend``, allowed on a
    session of one's own role): what it runs stops at once and it reports a lost connection.
    For a connection another thread is using, which cannot be closed from here (a stop-now
    request while the worker's helper thread waits on a query). Errors are swallowed: the
    caller is on its way out."""
    with contextlib.suppress(Exception):
        conn.execute("SELECT pg_catalog.pg_terminate_backend(%s)", [other.info.backend_pid])


def conninfo(url: str, application_name: str) -> str:
    """The URL with an ``application_name`` (cut to PostgreSQL's limit) for pg_stat_activity,
    and `KEEPALIVES` (for connections opened elsewhere from it, e.g. the embedding cache's)."""
    return psycopg.conninfo.make_conninfo(
        with_keepalives(url), application_name=application_name[:APPLICATION_NAME_LIMIT]
    )


# What the server answers when it refuses a login for good (the database or role does not
# exist, authentication or pg_hba refuses it, no CONNECT right): retrying cannot help. libpq
# reports these as text only (no SQLSTATE), so they are recognised by their message.
_REFUSED_LOGIN = (
    re.compile(r'database "[^"]*" does not exist'),
    re.compile(r'role "[^"]*" does not exist'),
    re.compile(r"authentication failed for user"),
    re.compile(r"no pg_hba\.conf entry"),
    re.compile(r"permission denied for database"),
    re.compile(r"is not permitted to log in"),
    re.compile(r"is not currently accepting connections"),
    re.compile(r"no password supplied"),
)


def is_login_refused(exc: BaseException) -> bool:
    """Whether ``exc`` is a connection attempt the server refused for good (a missing database
    or role, a rejected login): a set-up problem, not a lost connection."""
    cause = exc.__cause__ if isinstance(exc, DatabaseError) else exc
    if not isinstance(cause, psycopg.OperationalError):
        return False
    text = str(cause)
    return any(pattern.search(text) for pattern in _REFUSED_LOGIN)


def is_connection_lost(exc: BaseException, conn: psycopg.Connection | None = None) -> bool:
    """Whether ``exc`` means the connection is gone or cannot be made now (worth retrying
    later: a server down, restarting or unreachable), rather than bad data, a database that is
    not set up, or a refused login (`is_login_refused`; ``conn``: the one that failed)."""
    if is_login_refused(exc):
        return False
    if conn is not None and (conn.broken or conn.closed):
        return True
    if isinstance(exc, DatabaseError):  # our connect(): only "cannot connect" is transient
        return isinstance(exc.__cause__, psycopg.OperationalError)
    if isinstance(exc, psycopg.errors.ProgramLimitExceeded):
        return False  # 54xxx: this statement's data is past a server limit; retrying cannot help
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)


def read_only_refusal(exc: BaseException) -> psycopg.errors.ReadOnlySqlTransaction | None:
    """The server's "cannot execute ... in a read-only transaction" (or "during recovery")
    behind ``exc``, if that is what it is: a write sent to a hot standby or a read-only
    session. Follows SQLAlchemy's ``orig`` and Python's cause/context chain."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, psycopg.errors.ReadOnlySqlTransaction):
            return current
        seen.add(id(current))
        orig = getattr(current, "orig", None)
        current = (
            orig if isinstance(orig, BaseException) else (current.__cause__ or current.__context__)
        )
    return None


def retry_with_backoff(
    action: Callable[[], T],
    *,
    stop: threading.Event,
    what: str,
    delay: float = RECONNECT_BASE_SECONDS,
    max_delay: float = RECONNECT_MAX_SECONDS,
    retry_if: Callable[[BaseException], bool] = is_connection_lost,
    give_up_after: float | None = None,
) -> T:
    """Run ``action`` until it succeeds, sleeping ``delay`` (doubling up to ``max_delay``)
    after each failure that ``retry_if`` accepts; any other error is raised at once, and so
    is the last error once ``stop`` is set. ``what`` starts the warning logged per retry
    (with the attempt number and the delay). With ``give_up_after`` (seconds from the first
    attempt) the loop ends there: the last error is raised as a `DatabaseError` saying so;
    the bound is that plus one attempt (``connect`` waits at most 10 s per host)."""
    started = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        try:
            return action()
        except Exception as exc:
            if not retry_if(exc) or stop.is_set():
                raise
            wait = delay
            if give_up_after is not None:
                elapsed = time.monotonic() - started
                left = give_up_after - elapsed
                if left <= 0:
                    log.error(
                        "%s (%s); giving up after %d attempts in %.1f s",
                        what,
                        one_line(str(exc)),
                        attempt,
                        elapsed,
                    )
                    raise DatabaseError(
                        f"{what}: gave up after {attempt} attempts in {elapsed:.1f} s: "
                        f"{one_line(str(exc))}"
                    ) from exc
                wait = min(delay, left)
            log.warning(
                "%s (%s); attempt %d failed, retrying in %.1f s",
                what,
                one_line(str(exc)),
                attempt,
                wait,
            )
            if stop.wait(wait):
                raise
            delay = min(delay * 2, max_delay)
