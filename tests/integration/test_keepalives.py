"""TCP keepalives on the connections that do not go through the worker (issue 18): `doctor`,
the demo, an embedding cache given its own URL and the Alembic migrations all open theirs
through `idxr_pg.db.connection`, so each socket probes a half-open peer.

Every connection psycopg opens in this process during a test is observed as it is made (a
spy on ``psycopg.connect``, the one entry point that both idxr-pg and SQLAlchemy call; the
real connection is made and returned): its libpq parameters and its socket's SO_KEEPALIVE.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psycopg
import pytest

from idxr_pg.db import migrations
from idxr_pg.db.connection import KEEPALIVES
from idxr_pg.demo.run import Demo
from idxr_pg.embedding import EmbeddingCache
from idxr_pg.extensions import ensure_extensions

PACKAGE = Path(__file__).resolve().parents[2] / "idxr_pg"


def socket_keepalive(conn: psycopg.Connection) -> tuple[int, int]:
    """(SO_KEEPALIVE, TCP_KEEPIDLE) of the connection's socket."""
    sock = socket.socket(fileno=os.dup(conn.fileno()))
    try:
        return (
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
        )
    finally:
        sock.close()


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, object]]:
    """What each connection opened during the test had: keepalive parameters and socket.
    Request it after the fixtures that make databases, so their connections are not seen."""
    seen: list[dict[str, object]] = []
    real_connect = psycopg.connect

    def spy(*args: object, **kwargs: object) -> psycopg.Connection:
        conn = real_connect(*args, **kwargs)  # type: ignore[arg-type]
        params = conn.info.get_parameters()
        seen.append(
            {
                "params": {key: params.get(key) for key in KEEPALIVES},
                "socket": socket_keepalive(conn),
            }
        )
        return conn

    monkeypatch.setattr(psycopg, "connect", spy)
    return seen


def assert_all_keepalive(seen: list[dict[str, object]], what: str) -> None:
    assert seen, f"{what} opened no connection"
    idle = int(KEEPALIVES["keepalives_idle"])
    for connection in seen:
        assert connection["params"] == KEEPALIVES, what
        assert connection["socket"] == (1, idle), what


def test_doctor_connects_with_keepalives(database_url, opened):
    facts = ensure_extensions(database_url, install_missing=False)
    assert not facts.missing
    assert_all_keepalive(opened, "doctor")


def test_embedding_cache_with_its_own_url_connects_with_keepalives(database_url, opened):
    key = f"keepalive-test@{uuid.uuid4().hex}"
    vector = np.arange(1, 385, dtype=np.float32)
    with EmbeddingCache(database_url) as cache:
        cache.put_many(key, {"h1": vector})
        assert np.allclose(cache.get_many(key, ["h1"])["h1"], vector)
    assert_all_keepalive(opened, "the embedding cache")


def test_demo_connects_with_keepalives(pg_server_url, session_id, tmp_path, opened):
    demo = Demo(
        pg_server_url, subscriptions=3, workdir=tmp_path, database=f"idxr_test_{session_id}_ka"
    )
    try:
        demo.create_application()  # recreates the database, loads the sample data
        with psycopg.Connection.connect(demo.url) as conn:  # the test's own check
            assert conn.execute("SELECT count(*) FROM demo.subscriptions").fetchone()[0] == 3
    finally:
        # Connection.connect: the test's own clean-up, not seen by the spy.
        with psycopg.Connection.connect(pg_server_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{demo.database}" WITH (FORCE)')
    assert_all_keepalive(opened, "the demo")


def test_migrations_connect_with_keepalives(empty_database_url, opened):
    migrations.upgrade(empty_database_url)
    assert_all_keepalive(opened, "migrate (Alembic through SQLAlchemy)")


def test_only_the_connection_module_opens_connections():
    """The one owner: nothing else in the package calls psycopg.connect, so no new code path
    can open a connection without keepalives (the tests above check the paths that exist)."""
    calls: Callable[[Path], bool] = lambda path: "psycopg.connect(" in path.read_text()  # noqa: E731
    offenders = sorted(
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if calls(path) and path != PACKAGE / "db" / "connection.py"
    )
    assert offenders == []
