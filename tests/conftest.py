"""Test database strategy.

The PostgreSQL server comes from IDXR_TEST_DATABASE_URL when set, else from a testcontainers
`pgvector/pgvector:pg16` container when a Docker engine answers, else the local server
(postgresql://postgres@127.0.0.1:5432/postgres). Each test session works in databases of its
own (idxr_test_<random>...) and drops them afterwards, so runs never see each other's data.

Fixtures:
- ``database_url``: one migrated database shared by the session.
- ``isolated_database_url``: a fresh migrated database for one test (cloned from a template).
- ``empty_database_url``: a fresh database with nothing installed (for migration tests).
- ``db_conn``: an autocommit connection (pgvector registered) to ``database_url``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest
from psycopg import sql

from idxr_pg.db import migrations
from idxr_pg.db.connection import connect

LOCAL_SERVER_URL = "postgresql://postgres@127.0.0.1:5432/postgres"

# The tests connect as postgres, a superuser: let the worker, backfill and `triggers install`
# run as it (users get a refusal by default; tests/integration/test_privileges.py checks it),
# in this process and in the CLI subprocesses that inherit the environment.
os.environ.setdefault("IDXR_ALLOW_SUPERUSER", "1")


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


def with_dbname(url: str, dbname: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(url)
    params["dbname"] = dbname
    return psycopg.conninfo.make_conninfo(**params)


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """Admin URL of the server the tests create their databases on."""
    explicit = os.environ.get("IDXR_TEST_DATABASE_URL")
    if explicit:
        yield explicit
        return
    if _docker_answers():
        from testcontainers.postgres import PostgresContainer

        # The image has no idxr_capture library to load: its tests run the plpgsql path.
        os.environ.setdefault("IDXR_TEST_WITHOUT_C_CAPTURE", "1")
        with PostgresContainer("pgvector/pgvector:pg16", driver=None) as container:
            yield container.get_connection_url()
        return
    yield LOCAL_SERVER_URL


@pytest.fixture(scope="session")
def session_id() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def create_database(pg_server_url: str, session_id: str) -> Iterator[Callable[..., str]]:
    """Factory: create a database (optionally from a template); all are dropped at the end."""
    created: list[str] = []

    def _create(suffix: str, template: str | None = None) -> str:
        name = f"idxr_test_{session_id}_{suffix}"[:63]
        with psycopg.connect(pg_server_url, autocommit=True) as admin:
            query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
            if template:
                query += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
            admin.execute(query)
        created.append(name)
        return with_dbname(pg_server_url, name)

    yield _create
    with psycopg.connect(pg_server_url, autocommit=True) as admin:
        for name in reversed(created):
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture(scope="session")
def template_database(create_database: Callable[..., str]) -> str:
    """A migrated database used as the template for isolated ones; never connected to by tests."""
    url = create_database("template")
    migrations.upgrade(url)
    migrations.set_embedding_dimensions(url, 384)
    return psycopg.conninfo.conninfo_to_dict(url)["dbname"]


@pytest.fixture(scope="session")
def database_url(create_database: Callable[..., str], template_database: str) -> str:
    return create_database("shared", template=template_database)


@pytest.fixture
def isolated_database_url(
    create_database: Callable[..., str], template_database: str, request: pytest.FixtureRequest
) -> str:
    return create_database(f"i{uuid.uuid4().hex[:8]}", template=template_database)


@pytest.fixture
def empty_database_url(create_database: Callable[..., str]) -> str:
    return create_database(f"e{uuid.uuid4().hex[:8]}")


@pytest.fixture
def db_conn(database_url: str) -> Iterator[psycopg.Connection]:
    conn = connect(database_url, autocommit=True)
    try:
        yield conn
    finally:
        conn.close()


CAPTURE_PATHS = ("c", "plpgsql")


def c_capture_missing(reason: str) -> None:
    """`make setup` builds the C capture trigger (doctor --install-missing): where it is
    missing the set-up failed, which fails the test rather than quietly testing one capture path,
    unless IDXR_TEST_WITHOUT_C_CAPTURE=1 says the server is one where it cannot be built."""
    if os.environ.get("IDXR_TEST_WITHOUT_C_CAPTURE") != "1":
        pytest.fail(
            f"{reason}: run idxr-pg doctor --install-missing, or set IDXR_TEST_WITHOUT_C_CAPTURE=1"
        )
    pytest.skip(f"{reason} (IDXR_TEST_WITHOUT_C_CAPTURE=1)")


@pytest.fixture(params=CAPTURE_PATHS)
def capture_language(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, pg_server_url: str
) -> str:
    """Run a test over both capture paths: ``c`` installs with ``auto`` (the C trigger for every
    target it covers), ``plpgsql`` forces the plpgsql functions. A server without the library
    fails the ``c`` runs unless IDXR_TEST_WITHOUT_C_CAPTURE=1. Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("capture_language")``."""
    from idxr_pg.capture.triggers import LANGUAGE_ENV

    if request.param == "c":
        with psycopg.connect(pg_server_url, autocommit=True) as admin:
            if not admin.execute(
                "SELECT 1 FROM pg_available_extensions WHERE name = 'idxr_capture'"
            ).fetchone():
                c_capture_missing("the server has no idxr_capture library")
    monkeypatch.setenv(LANGUAGE_ENV, "auto" if request.param == "c" else "plpgsql")
    return request.param


@pytest.fixture
def plpgsql_capture(monkeypatch: pytest.MonkeyPatch) -> None:
    """Install the plpgsql capture functions (for tests of what only they have: a plan, the
    table guard); name it before the fixtures that install triggers."""
    from idxr_pg.capture.triggers import LANGUAGE_ENV

    monkeypatch.setenv(LANGUAGE_ENV, "plpgsql")
