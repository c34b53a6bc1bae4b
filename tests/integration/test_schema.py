"""The idxr schema: Alembic and sql/install.sql agree, installs re-run, functions are re-applied,
uninstall is clean."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from alembic.script import ScriptDirectory
from click.testing import CliRunner

from idxr_pg.cli import main
from idxr_pg.db import migrations
from idxr_pg.schema import (
    HEAD_REVISION,
    install_script,
    read_schema_file,
    reapplied_files,
    revisioned_files,
    uninstall_script,
)
from tests.integration.catalog import snapshot
from tests.integration.worker_support import ROOT, subprocess_env


def run_psql(url: str, path: Path) -> None:
    subprocess.run(
        ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-f", str(path)],
        check=True,
        capture_output=True,
        text=True,
    )


def cli(url: str, *args: str):
    result = CliRunner().invoke(main, ["--database-url", url, *args], catch_exceptions=False)
    return result


def test_committed_sql_files_match_the_generated_scripts():
    assert (ROOT / "sql" / "install.sql").read_text() == install_script()
    assert (ROOT / "sql" / "uninstall.sql").read_text() == uninstall_script()


def test_alembic_head_equals_plain_sql_install(empty_database_url, create_database):
    via_alembic = empty_database_url
    migrations.upgrade(via_alembic)
    via_psql = create_database("viapsql")
    run_psql(via_psql, ROOT / "sql" / "install.sql")

    alembic_catalog = snapshot(via_alembic)
    psql_catalog = snapshot(via_psql)
    assert alembic_catalog["version"] == [(HEAD_REVISION,)]
    assert {"search_index", "queue", "dead_letters", "jobs", "workers", "embedding_models"} <= {
        row[0] for row in alembic_catalog["columns"]
    }
    for section, rows in alembic_catalog.items():
        assert rows == psql_catalog[section], f"catalog section {section!r} differs"


def test_search_index_has_the_contract_columns_and_indexes(database_url):
    with psycopg.connect(database_url) as conn:
        columns = dict(
            conn.execute(
                """SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute
                    WHERE attrelid = 'idxr.search_index'::regclass AND attnum > 0"""
            ).fetchall()
        )
        indexes = {
            row[0]: row[1]
            for row in conn.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'search_index'"
            )
        }
        labels = conn.execute("SELECT enum_range(NULL::idxr.value_type)::text").fetchone()[0]
    assert columns["entity_kind"] == "text" and columns["entity_id"] == "text"
    assert columns["path"] == "ltree" and columns["value"] == "text"
    assert columns["value_type"] == "idxr.value_type" and columns["content_hash"] == "text"
    assert columns["embedding"] == "vector"  # one partial HNSW index per size (issue 15)
    assert columns["updated_at"] == "timestamp with time zone"
    assert "(entity_kind, entity_id, path, chunk)" in indexes["search_index_pkey"]
    assert columns["chunk"] == "integer"
    assert "WHERE (chunk > 0)" in indexes["search_index_chunks"]
    assert "USING gist (path)" in indexes["search_index_path_gist"]
    assert "btree (entity_kind, entity_id)" in indexes["search_index_entity"]
    assert (
        "hnsw (((embedding)::halfvec(384)) halfvec_cosine_ops) WITH (m='16', ef_construction='64')"
        " WHERE (vector_dims(embedding) = 384)" in indexes["search_index_embedding_hnsw_384"]
    )
    assert labels == "{string,integer,float,boolean,uuid,datetime,date,time,decimal}"


def test_install_sql_can_be_run_twice(empty_database_url):
    run_psql(empty_database_url, ROOT / "sql" / "install.sql")
    first = snapshot(empty_database_url)
    run_psql(empty_database_url, ROOT / "sql" / "install.sql")
    assert snapshot(empty_database_url) == first


def test_migrate_twice_is_harmless(empty_database_url):
    first = cli(empty_database_url, "migrate")
    assert first.exit_code == 0, first.output
    assert f"migrated base -> {HEAD_REVISION}" in first.output
    catalog = snapshot(empty_database_url)
    second = cli(empty_database_url, "migrate")
    assert second.exit_code == 0, second.output
    assert "already up to date" in second.output
    assert snapshot(empty_database_url) == catalog


def test_alembic_head_is_the_schema_head_revision():
    script = ScriptDirectory.from_config(migrations.alembic_config("postgresql://unused"))
    assert script.get_current_head() == HEAD_REVISION


def test_tables_are_revisioned_and_the_rest_is_reapplied():
    assert revisioned_files() == (
        "010_tables.sql",
        "011_coalescing_queue.sql",
        "012_pause.sql",
        "013_schema_changes.sql",
        "014_loads.sql",
        "015_hybrid.sql",
        "016_capture_locks.sql",
        "018_index_versions.sql",
        "019_chunks.sql",
        "019b_index_storage.sql",
    )
    assert {
        "020_dimensions.sql",
        "040_search.sql",
        "041_chunks.sql",
        "045_hybrid.sql",
        "050_status.sql",
    } == set(reapplied_files())
    for name in reapplied_files():
        assert "CREATE TABLE" not in read_schema_file(name).upper(), name


def test_an_up_to_date_migrate_reapplies_functions_and_views(empty_database_url):
    url = empty_database_url
    assert cli(url, "migrate").exit_code == 0
    catalog = snapshot(url)
    with psycopg.connect(url) as conn:
        conn.execute("DROP VIEW idxr.stale")
        conn.execute(
            """CREATE OR REPLACE FUNCTION idxr.exact_search_threshold(k integer)
               RETURNS integer LANGUAGE sql AS $$ SELECT 0 $$"""
        )
    again = cli(url, "migrate")
    assert again.exit_code == 0, again.output
    assert "already up to date" in again.output
    assert snapshot(url) == catalog


def test_concurrent_migrates_all_succeed(empty_database_url):
    url = empty_database_url
    code = f"from idxr_pg.db import migrations; migrations.upgrade({url!r})"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            env=subprocess_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = [process.communicate(timeout=120)[0] for process in processes]
    assert [process.returncode for process in processes] == [0] * 4, "\n".join(outputs)
    assert migrations.current_revision(url) == HEAD_REVISION


def _make_user_table(url: str) -> None:
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE public.customers (id int PRIMARY KEY, name text NOT NULL)")
        conn.execute("INSERT INTO public.customers VALUES (1, 'Ada'), (2, 'Grace')")
        # A trigger in the idxr schema on the user's table, as `idxr-pg triggers install` makes.
        conn.execute(
            """CREATE FUNCTION idxr.test_capture() RETURNS trigger LANGUAGE plpgsql
               AS $$ BEGIN RETURN NULL; END $$"""
        )
        conn.execute(
            """CREATE TRIGGER idxr_test AFTER INSERT ON public.customers
               FOR EACH STATEMENT EXECUTE FUNCTION idxr.test_capture()"""
        )


def _user_table_state(url: str) -> tuple[list[tuple], list[tuple], list[tuple]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT * FROM public.customers ORDER BY id").fetchall()
        triggers = conn.execute(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = 'public.customers'::regclass "
            "AND NOT tgisinternal"
        ).fetchall()
        schemas = conn.execute("SELECT nspname FROM pg_namespace WHERE nspname = 'idxr'").fetchall()
    return rows, triggers, schemas


@pytest.mark.parametrize("how", ["cli", "alembic", "psql"])
def test_migrate_uninstall_migrate_keeps_user_tables(empty_database_url, how):
    url = empty_database_url
    assert cli(url, "migrate").exit_code == 0
    _make_user_table(url)
    assert _user_table_state(url)[1] == [("idxr_test",)]

    if how == "cli":
        result = cli(url, "uninstall", "--yes")
        assert result.exit_code == 0, result.output
    elif how == "alembic":
        subprocess.run(
            [
                str(Path(sys.executable).parent / "alembic"),
                "-x",
                f"database_url={url}",
                "downgrade",
                "base",
            ],
            cwd=ROOT,
            check=True,
            capture_output=True,
            env={**os.environ},
        )
    else:
        run_psql(url, ROOT / "sql" / "uninstall.sql")

    rows, triggers, schemas = _user_table_state(url)
    assert rows == [(1, "Ada"), (2, "Grace")]
    assert triggers == [] and schemas == []

    again = cli(url, "migrate")
    assert again.exit_code == 0, again.output
    assert migrations.current_revision(url) == HEAD_REVISION
    assert _user_table_state(url)[0] == [(1, "Ada"), (2, "Grace")]


def test_dimensions_follow_the_configured_model(isolated_database_url):
    """`migrate --dimensions N`: the index of N-dimensional vectors, unused sizes' dropped;
    vectors of another size keep theirs (kinds of different models coexist, issue 15)."""
    url = isolated_database_url
    result = cli(url, "migrate", "--dimensions", "768")
    assert result.exit_code == 0, result.output
    assert "768-dimensional" in result.output
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT idxr.embedding_dimensions()").fetchone()[0] == 768
        conn.execute(
            """INSERT INTO idxr.search_index
               (entity_kind, entity_id, path, value, value_type, content_hash, embedding)
               VALUES ('k', '1', 'k.name', 'x', 'string', 'h', array_fill(0.1, ARRAY[768])::vector)"""
        )
    again = CliRunner().invoke(main, ["--database-url", url, "migrate", "--dimensions", "384"])
    assert again.exit_code == 0, again.output
    with psycopg.connect(url) as conn:
        sizes = conn.execute("SELECT array_agg(d ORDER BY d) FROM idxr.embedding_index_sizes() d")
        assert sizes.fetchone()[0] == [384, 768]  # the 768 rows keep their index


def test_doctor_reports_extensions(database_url):
    result = cli(database_url, "doctor")
    assert result.exit_code == 0, result.output
    assert "vector" in result.output and "ltree" in result.output
