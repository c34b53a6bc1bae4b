"""`idxr-pg demo` at a reduced size: every step runs and checks itself (issue 8)."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from idxr_pg.demo.run import run_demo


@pytest.mark.model
@pytest.mark.slow
def test_demo_runs_end_to_end_twice(pg_server_url, session_id):
    database = f"idxr_test_{session_id}_demo"
    try:
        for _ in range(2):  # recreated each run: a second run succeeds too
            changes = run_demo(pg_server_url, subscriptions=12, database=database)
            insert, update, child_update, delete = changes
            assert insert.texts_embedded >= 1 and insert.rows_changed >= 10
            assert update.texts_embedded == 1 and update.rows_changed == 1
            assert child_update.rows_changed == 1
            assert delete.texts_embedded == 0
    finally:
        with psycopg.connect(pg_server_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
            )
