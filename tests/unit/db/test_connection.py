"""One predicate for "the connection is lost" and one retry-with-backoff loop."""

from __future__ import annotations

import threading

import psycopg
import pytest

from idxr_pg.db.connection import (
    KEEPALIVES,
    DatabaseError,
    conninfo,
    is_connection_lost,
    read_only_refusal,
    retry_with_backoff,
    with_keepalives,
)


class FakeConn:
    def __init__(self, *, broken: bool = False, closed: bool = False) -> None:
        self.broken, self.closed = broken, closed


def test_lost_connections_are_told_from_bad_data_and_set_up_problems():
    assert is_connection_lost(psycopg.OperationalError("server closed the connection"))
    assert is_connection_lost(psycopg.InterfaceError("connection already closed"))
    assert not is_connection_lost(psycopg.errors.DivisionByZero("1/0"))
    assert not is_connection_lost(ValueError("no"))
    # Our connect(): "cannot connect" is transient, "vector is not installed" is not.
    cannot = DatabaseError("cannot connect")
    cannot.__cause__ = psycopg.OperationalError("refused")
    missing = DatabaseError("the vector extension is not installed")
    missing.__cause__ = psycopg.ProgrammingError("no type vector")
    assert is_connection_lost(cannot) and not is_connection_lost(missing)
    # A data error on a connection that broke meanwhile is a lost connection.
    error = psycopg.errors.DivisionByZero("1/0")
    assert is_connection_lost(error, FakeConn(broken=True))  # type: ignore[arg-type]
    assert is_connection_lost(error, FakeConn(closed=True))  # type: ignore[arg-type]
    assert not is_connection_lost(error, FakeConn())  # type: ignore[arg-type]


def test_retry_backs_off_exponentially_until_the_action_succeeds(monkeypatch):
    stop = threading.Event()
    waits: list[float] = []
    monkeypatch.setattr(stop, "wait", lambda seconds: waits.append(seconds) or False)
    failures = iter([psycopg.OperationalError("down")] * 4)

    def action() -> str:
        for exc in failures:
            raise exc
        return "up"

    assert retry_with_backoff(action, stop=stop, what="db", delay=1.0, max_delay=5.0) == "up"
    assert waits == [1.0, 2.0, 4.0, 5.0]


def test_retry_raises_other_errors_at_once_and_the_last_one_when_stopped():
    stop = threading.Event()
    calls = []

    def bad_data() -> None:
        calls.append(1)
        raise psycopg.errors.DivisionByZero("1/0")

    with pytest.raises(psycopg.errors.DivisionByZero):
        retry_with_backoff(bad_data, stop=stop, what="db")
    assert calls == [1]

    stop.set()
    with pytest.raises(psycopg.OperationalError):
        retry_with_backoff(
            lambda: (_ for _ in ()).throw(psycopg.OperationalError("down")), stop=stop, what="db"
        )


def test_conninfo_names_the_connection_within_postgres_limit():
    info = psycopg.conninfo.conninfo_to_dict(conninfo("postgresql://u@h/db", "x" * 100))
    assert info["application_name"] == "x" * 63 and info["dbname"] == "db"


def test_a_statement_past_a_server_limit_is_bad_data_not_a_lost_connection():
    """ProgramLimitExceeded (SQLSTATE 54xxx, e.g. an ltree path over the btree row limit) is an
    OperationalError in psycopg, but retrying it can never help: that entity fails alone."""
    too_big = psycopg.errors.ProgramLimitExceeded("index row size 3000 exceeds btree maximum")
    assert not is_connection_lost(too_big)
    assert not is_connection_lost(too_big, FakeConn())  # type: ignore[arg-type]
    assert is_connection_lost(too_big, FakeConn(broken=True))  # type: ignore[arg-type]


def test_retry_gives_up_at_its_deadline_with_a_database_error(monkeypatch, caplog):
    """``give_up_after`` bounds the loop: the last wait is cut to the time left, then the
    last error is raised as a DatabaseError saying it gave up; each attempt is logged."""
    clock = [100.0]
    monkeypatch.setattr("idxr_pg.db.connection.time.monotonic", lambda: clock[0])
    stop = threading.Event()
    waits: list[float] = []

    def wait(seconds: float) -> bool:
        waits.append(seconds)
        clock[0] += seconds
        return False

    monkeypatch.setattr(stop, "wait", wait)
    calls = []

    def down() -> None:
        calls.append(1)
        raise psycopg.OperationalError("connection refused")

    gave_up = pytest.raises(DatabaseError, match=r"gave up after 4 attempts in 5\.0 s")
    with caplog.at_level("WARNING", logger="idxr_pg.db.connection"), gave_up:
        retry_with_backoff(down, stop=stop, what="db", delay=1.0, max_delay=30.0, give_up_after=5.0)
    assert waits == [1.0, 2.0, 2.0]  # the third wait is cut to the 2 s left
    assert len(calls) == 4
    assert "attempt 1 failed, retrying in 1.0 s" in caplog.text
    assert "attempt 3 failed, retrying in 2.0 s" in caplog.text
    assert "giving up after 4 attempts" in caplog.text


def test_retry_without_a_deadline_keeps_going(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr("idxr_pg.db.connection.time.monotonic", lambda: clock[0])
    stop = threading.Event()

    def wait(seconds: float) -> bool:
        clock[0] += seconds
        return False

    monkeypatch.setattr(stop, "wait", wait)
    failures = iter([psycopg.OperationalError("down")] * 50)

    def action() -> str:
        for exc in failures:
            raise exc
        return "up"

    assert retry_with_backoff(action, stop=stop, what="db", delay=1.0, max_delay=30.0) == "up"
    assert clock[0] > 1000  # far past any deadline: no give-up without one


def test_conninfo_and_with_keepalives_set_tcp_keepalives_the_url_can_override():
    info = psycopg.conninfo.conninfo_to_dict(conninfo("postgresql://u@h/db", "worker"))
    assert {k: info[k] for k in KEEPALIVES} == KEEPALIVES
    own = psycopg.conninfo.conninfo_to_dict(
        with_keepalives("postgresql://u@h/db?keepalives_idle=7&keepalives=0")
    )
    assert own["keepalives_idle"] == "7" and own["keepalives"] == "0"
    assert own["keepalives_interval"] == KEEPALIVES["keepalives_interval"]
    assert own["dbname"] == "db" and own["user"] == "u"


def test_a_write_refused_by_a_read_only_database_is_found_behind_wrappers():
    refused = psycopg.errors.ReadOnlySqlTransaction(
        "cannot execute INSERT in a read-only transaction"
    )
    assert read_only_refusal(refused) is refused

    class Wrapped(Exception):  # as SQLAlchemy wraps a driver error: .orig
        orig = refused

    assert read_only_refusal(Wrapped()) is refused
    try:
        try:
            raise refused
        except psycopg.Error as exc:
            raise RuntimeError("installing failed") from exc
    except RuntimeError as outer:
        assert read_only_refusal(outer) is refused
    assert read_only_refusal(psycopg.errors.DivisionByZero("1/0")) is None
    assert read_only_refusal(ValueError("no")) is None
