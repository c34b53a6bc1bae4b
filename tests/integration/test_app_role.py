"""An application role with rights on its own table only: its writes are captured and indexed.

The capture functions are SECURITY DEFINER, so the role needs no rights on the idxr schema.
The worker runs as the `idxr-pg worker --once` command with the real default model.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import yaml
from psycopg import sql
from pydantic import BaseModel

from idxr_pg.capture import triggers as capture
from idxr_pg.config import parse_config
from tests.integration.worker_support import subprocess_env

IDXR = str(Path(sys.executable).with_name("idxr-pg"))


class Note(BaseModel):
    """The entity the application role writes."""

    id: int
    title: str
    body: str | None = None


ENTITY = {
    "name": "note",
    "model": "tests.integration.test_app_role:Note",
    "table": "app.notes",
    "key": "id",
    "columns": ["id", "title", "body"],
}


@pytest.fixture
def app_role(isolated_database_url: str) -> Iterator[tuple[str, str]]:
    """(admin url, app role url): app.notes writable by a fresh role with no idxr rights."""
    role = f"idxr_app_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(isolated_database_url, autocommit=True) as admin:
        admin.execute(
            """CREATE SCHEMA app;
               CREATE TABLE app.notes (id integer PRIMARY KEY, title text NOT NULL, body text,
                                       secret text)"""
        )
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        admin.execute(sql.SQL("GRANT USAGE ON SCHEMA app TO {}").format(sql.Identifier(role)))
        admin.execute(
            sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON app.notes TO {}").format(
                sql.Identifier(role)
            )
        )
        capture.install_triggers(admin, parse_config({"entities": [ENTITY]}, "test").entities)
    params = psycopg.conninfo.conninfo_to_dict(isolated_database_url)
    params["user"] = role
    try:
        yield isolated_database_url, psycopg.conninfo.make_conninfo(**params)
    finally:
        with psycopg.connect(isolated_database_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def run_worker_once(url: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "idxr.yaml"
    config.write_text(yaml.safe_dump({"entities": [ENTITY]}))
    return subprocess.run(
        [IDXR, "--database-url", url, "--config", str(config), "worker", "--once"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=300,
    )


def queued_operations(admin_url: str) -> list[tuple[str, list[str]]]:
    with psycopg.connect(admin_url, autocommit=True) as admin:
        return admin.execute(
            "SELECT operation, array_agg(entity_id ORDER BY entity_id) FROM idxr.queue"
            " GROUP BY 1 ORDER BY 1"
        ).fetchall()


@pytest.mark.model
def test_app_role_without_idxr_rights_writes_and_gets_indexed(app_role, tmp_path):
    admin_url, role_url = app_role
    with psycopg.connect(role_url, autocommit=True) as app:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute("SELECT count(*) FROM idxr.queue")
        app.execute(
            "INSERT INTO app.notes (id, title, body) VALUES"
            " (1, 'Fibre outage in Utrecht', 'Technician sent'),"
            " (2, 'Invoice question', 'Customer asks about VAT'),"
            " (3, 'Spam', NULL)"
        )
    # Pending changes of one entity coalesce into one queue row (issue 13), so each step is
    # checked on its own: the INSERT first, then the UPDATEs and the DELETE once it is indexed.
    assert queued_operations(admin_url) == [("INSERT", ["1", "2", "3"])]
    result = run_worker_once(admin_url, tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout

    with psycopg.connect(role_url, autocommit=True) as app:
        app.execute("UPDATE app.notes SET title = 'Fibre outage in Amsterdam' WHERE id = 1")
        app.execute("UPDATE app.notes SET secret = 'not read by the entity' WHERE id = 2")
        app.execute("DELETE FROM app.notes WHERE id = 3")
    assert queued_operations(admin_url) == [("DELETE", ["3"]), ("UPDATE", ["1"])]

    result = run_worker_once(admin_url, tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout

    with psycopg.connect(admin_url, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT entity_id, path::text, value, embedding IS NOT NULL FROM idxr.search_index"
            " WHERE entity_kind = 'note' ORDER BY 1, 2"
        ).fetchall()
        left = admin.execute("SELECT count(*) FROM idxr.queue").fetchone()[0]
    assert rows == [
        ("1", "note.body", "Technician sent", True),
        ("1", "note.id", "1", False),
        ("1", "note.title", "Fibre outage in Amsterdam", True),
        ("2", "note.body", "Customer asks about VAT", True),
        ("2", "note.id", "2", False),
        ("2", "note.title", "Invoice question", True),
    ]
    assert left == 0
