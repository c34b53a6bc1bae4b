"""The privilege audit (issue 12): who can execute what in schema idxr, and what an
application role, a reader and the worker can and cannot do.

Roles are cluster-wide: the group roles ``idxr_reader`` / ``idxr_worker`` are created by the
schema and left in place; the login roles made here get random names and are dropped after.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
from psycopg import sql
from pydantic import BaseModel

from idxr_pg.capture import triggers as capture
from idxr_pg.config import parse_config
from idxr_pg.db.capture import C_FUNCTION

GROUP_ROLES = ("idxr_reader", "idxr_worker")


class Note(BaseModel):
    id: int
    title: str


NOTE_ENTITY = {
    "name": "note",
    "model": "tests.integration.test_privileges:Note",
    "table": "app.notes",
    "key": "id",
    "columns": ["id", "title"],
}

# What each known function of schema idxr is, and who may execute it (besides its owner).
# Anything not meant for everyone is revoked from PUBLIC; readers get the search functions
# and their SECURITY INVOKER helpers (they read only what the caller may read anyway).
READER = frozenset({"idxr_reader"})
NOBODY: frozenset[str] = frozenset()
INVOKER_READS = "as the caller (SECURITY INVOKER): only what the caller may already read"
KNOWN_FUNCTIONS: dict[str, tuple[bool, frozenset[str], str]] = {
    # name: (SECURITY DEFINER, roles with EXECUTE granted directly, what a role with no rights
    #        on idxr could read or change through it if it could call it)
    "set_embedding_dimensions": (
        False,
        NOBODY,
        "creates the HNSW index of a vector size, drops unused ones: needs ownership",
    ),
    "ensure_embedding_index": (False, NOBODY, "creates an HNSW index: needs ownership"),
    "ensure_embedding_indexes": (False, NOBODY, "creates HNSW indexes: needs ownership"),
    "embedding_dimensions": (False, READER, "the one vector size in use (versions, catalog)"),
    "embedding_index_name": (False, READER, "nothing (a name from a number)"),
    "embedding_index_next_name": (False, READER, "nothing (a name from a number)"),
    "embedding_index_options": (
        False,
        READER,
        "idxr.embedding_index_settings (how an HNSW index is built) " + INVOKER_READS,
    ),
    "embedding_index_ddl": (False, READER, "nothing (builds CREATE INDEX text; runs nothing)"),
    "embedding_index_state": (False, READER, "the HNSW indexes' definitions (catalog only)"),
    "embedding_index_storage": (False, READER, "which storage serves a vector size (catalog)"),
    "set_embedding_index_options": (
        False,
        NOBODY,
        "records how an HNSW index is built (what `idxr-pg migrate` rebuilds): the owner's",
    ),
    "embedding_index_sizes": (False, READER, "the HNSW indexes' sizes (catalog only)"),
    "embedding_sizes": (False, READER, "the vector sizes in use " + INVOKER_READS),
    "kind_dimensions": (False, READER, "idxr.index_versions " + INVOKER_READS),
    "value_as_numeric": (False, READER, "nothing (IMMUTABLE cast of its arguments)"),
    "value_as_timestamptz": (False, READER, "nothing (cast of its arguments)"),
    "value_as_time": (False, READER, "nothing (cast of its arguments)"),
    "value_as_boolean": (False, READER, "nothing (cast of its arguments)"),
    "max_search_filters": (False, READER, "nothing (a constant)"),
    "exact_search_threshold": (False, READER, "nothing (arithmetic)"),
    "search_filter_sql": (False, READER, "nothing (builds SQL text from whitelisted parts)"),
    "check_search_args": (False, READER, "idxr.entity_kinds, idxr.search_index " + INVOKER_READS),
    "knn_search": (False, READER, "idxr.search_index " + INVOKER_READS),
    "search": (False, READER, "idxr.search_index " + INVOKER_READS),
    "search_entities": (False, READER, "idxr.search_index " + INVOKER_READS),
    "similar_to": (False, READER, "idxr.search_index " + INVOKER_READS),
    "refresh_interval": (False, READER, "nothing (parses its argument)"),
    "index_counts": (False, READER, "counts of idxr.search_index " + INVOKER_READS),
    "is_stale": (
        True,
        READER,
        "whether one entity has queued changes (one boolean; the queue rows stay unreadable)",
    ),
    "text_term_stats": (
        True,
        READER,
        "the most common lexemes of a kind's full-text index and their frequencies (its pg_stats"
        " row; the texts themselves are readable by readers)",
    ),
    "set_text_search_config": (
        True,
        frozenset({"idxr_worker"}),
        "records a registered kind's text search configuration and builds its one GIN index",
    ),
    "text_search": (False, READER, "idxr.search_index " + INVOKER_READS),
    "text_search_entities": (False, READER, "idxr.search_index " + INVOKER_READS),
    "hybrid_search": (False, READER, "idxr.search_index " + INVOKER_READS),
    "hybrid_search_entities": (False, READER, "idxr.search_index " + INVOKER_READS),
}
# Capture functions (one per kind and table, made by `triggers install`): SECURITY DEFINER,
# executable by nobody but their owner; called as triggers only, they insert queue rows and
# notify, and refuse to run for a table they were not installed for.

_FUNCTIONS_SQL = """
SELECT p.oid, p.proname, p.prosecdef, p.prorettype = 'pg_catalog.trigger'::regtype,
       p.proacl IS NULL OR EXISTS (
           SELECT 1 FROM pg_catalog.aclexplode(p.proacl) a
            WHERE a.grantee = 0 AND a.privilege_type = 'EXECUTE'),
       ARRAY(SELECT r.rolname FROM pg_catalog.aclexplode(p.proacl) a
               JOIN pg_catalog.pg_roles r ON r.oid = a.grantee
              WHERE a.privilege_type = 'EXECUTE' AND a.grantee <> p.proowner
              ORDER BY 1)
  FROM pg_catalog.pg_proc p
 WHERE p.pronamespace = 'idxr'::regnamespace
 ORDER BY p.proname
"""


@dataclass(frozen=True)
class FunctionPrivileges:
    oid: int
    name: str
    security_definer: bool
    trigger: bool
    public: bool
    grantees: frozenset[str]


def audit(conn: psycopg.Connection) -> list[FunctionPrivileges]:
    return [
        FunctionPrivileges(oid, name, definer, trigger, public, frozenset(grantees))
        for oid, name, definer, trigger, public, grantees in conn.execute(_FUNCTIONS_SQL).fetchall()
    ]


def _login_role(admin: psycopg.Connection, prefix: str, *groups: str) -> str:
    role = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    for group in groups:
        admin.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(group), sql.Identifier(role)))
    return role


def _drop_roles(url: str, roles: list[str]) -> None:
    with psycopg.connect(url, autocommit=True) as admin:
        for role in roles:
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def as_role(url: str, role: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(url)
    params["user"] = role
    return psycopg.conninfo.make_conninfo(**params)


@dataclass(frozen=True)
class Setup:
    admin_url: str
    app_url: str
    app_role: str
    reader_url: str


def capture_call(admin: psycopg.Connection) -> tuple[str, str]:
    """(the function app.notes' capture triggers call, as regprocedure; the call with its
    arguments, as its INSERT trigger has it): the plpgsql function or idxr.idxr_capture()."""
    return admin.execute(
        "SELECT t.tgfoid::regprocedure::text,"
        " substring(pg_get_triggerdef(t.oid) from 'EXECUTE FUNCTION (.*)$')"
        " FROM pg_trigger t WHERE t.tgrelid = 'app.notes'::regclass"
        " AND t.tgname = 'idxr_note_insert'"
    ).fetchone()


@pytest.fixture
def setup(isolated_database_url: str, capture_language: str) -> Iterator[Setup]:
    """An application role owning app.notes (with capture triggers, over both capture paths),
    a reader login role."""
    roles: list[str] = []
    try:
        with psycopg.connect(isolated_database_url, autocommit=True) as admin:
            app = _login_role(admin, "idxr_app")
            roles.append(app)
            reader = _login_role(admin, "idxr_rd", "idxr_reader")
            roles.append(reader)
            admin.execute(sql.SQL("CREATE SCHEMA app AUTHORIZATION {}").format(sql.Identifier(app)))
        app_url = as_role(isolated_database_url, app)
        with psycopg.connect(app_url, autocommit=True) as conn:
            conn.execute("CREATE TABLE app.notes (id integer PRIMARY KEY, title text NOT NULL)")
            conn.execute("INSERT INTO app.notes VALUES (1, 'first note')")
        with psycopg.connect(isolated_database_url, autocommit=True) as admin:
            capture.install_triggers(admin, parse_config({"entities": [NOTE_ENTITY]}, "t").entities)
            admin.execute(
                "INSERT INTO idxr.search_index (entity_kind, entity_id, path, value, value_type,"
                " content_hash, embedding) VALUES ('note', '1', 'note.title', 'first note',"
                " 'string', 'x', array_fill(0.1, ARRAY[384])::vector)"
            )
        yield Setup(isolated_database_url, app_url, app, as_role(isolated_database_url, reader))
    finally:
        _drop_roles(isolated_database_url, roles)


def test_function_privilege_audit(setup: Setup) -> None:
    """Every function in idxr: none executable by PUBLIC; SECURITY DEFINER only the capture
    trigger functions, executable by nobody but their owner, and the ones listed in
    KNOWN_FUNCTIONS (is_stale, text_term_stats, set_text_search_config); readers get the search side."""
    with psycopg.connect(setup.admin_url, autocommit=True) as admin:
        functions = audit(admin)
        roles = {
            r
            for (r,) in admin.execute(
                "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s) AND NOT rolcanlogin",
                [list(GROUP_ROLES)],
            )
        }
    assert roles == set(GROUP_ROLES)
    names = {f.name for f in functions}
    assert set(KNOWN_FUNCTIONS) <= names, set(KNOWN_FUNCTIONS) - names
    open_to_public = [f.name for f in functions if f.public]
    assert open_to_public == []
    for f in functions:
        if f.name in KNOWN_FUNCTIONS:
            assert (f.security_definer, f.grantees) == KNOWN_FUNCTIONS[f.name][:2], f.name
        elif f.name == C_FUNCTION:  # the C capture trigger: executable by its creator only
            assert f.trigger and not f.security_definer, f.name
            assert f.grantees == NOBODY, f.name  # created by the owner: no grant to others
        elif f.trigger:  # a capture function: SECURITY DEFINER, run only by its triggers
            assert f.security_definer, f.name
            assert f.grantees == NOBODY, f.name
        else:  # a helper added later: the same rule as the known ones
            assert not f.security_definer, f.name
    with psycopg.connect(setup.admin_url, autocommit=True) as admin:
        called, _ = capture_call(admin)
    assert called.removesuffix("()").removeprefix("idxr.") in names  # the capture is audited


def test_application_role_cannot_reach_the_index(setup: Setup) -> None:
    """Rights on its own table only (plus USAGE on idxr, a common over-grant): it cannot read
    indexed values, change the schema or dimensions, or write the queue other than through the
    capture triggers of its own table."""
    with psycopg.connect(setup.admin_url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("GRANT USAGE ON SCHEMA idxr TO {}").format(sql.Identifier(setup.app_role))
        )
        capture_fn, call = capture_call(admin)
        oids = [f.oid for f in audit(admin)]
    denied = psycopg.errors.InsufficientPrivilege
    attempts = [
        "SELECT value FROM idxr.search_index",
        "SELECT * FROM idxr.embedding_cache",
        "SELECT * FROM idxr.status",
        "SELECT * FROM idxr.search(array_fill(0.1, ARRAY[384])::vector)",
        "SELECT * FROM idxr.similar_to('note', '1', 'note.title')",
        "SELECT idxr.set_embedding_dimensions(8)",
        "CREATE TABLE idxr.evil (id int)",
        "CREATE FUNCTION idxr.evil() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "INSERT INTO idxr.queue (entity_kind, entity_id, source_table, operation)"
        " VALUES ('note', '2', 'app.notes', 'INSERT')",
        "DELETE FROM idxr.queue",
        "CREATE TEMP TABLE hijack (id integer PRIMARY KEY, title text);"
        f" CREATE TRIGGER t AFTER TRUNCATE ON hijack EXECUTE FUNCTION {call}",
        f"ALTER FUNCTION {capture_fn} OWNER TO CURRENT_USER",
    ]
    with psycopg.connect(setup.app_url, autocommit=True) as app:
        for attempt in attempts:
            with pytest.raises(denied):
                app.execute(attempt)
        executable = app.execute(
            "SELECT count(*) FILTER (WHERE has_function_privilege(oid, 'EXECUTE'))"
            " FROM unnest(%s::oid[]) AS oid",
            [oids],
        ).fetchone()[0]
        assert executable == 0
        # The allowed path: its own writes, captured by the triggers on its own table.
        app.execute("INSERT INTO app.notes VALUES (2, 'second note')")
    with psycopg.connect(setup.admin_url, autocommit=True) as admin:
        queued = admin.execute("SELECT entity_kind, entity_id FROM idxr.queue").fetchall()
        dims = admin.execute("SELECT idxr.embedding_dimensions()").fetchone()[0]
    assert queued == [("note", "2")]
    assert dims == 384


def test_reader_role_searches_and_nothing_more(setup: Setup) -> None:
    """idxr_reader: search, the index table and status; no writes, no dimensions, no capture."""
    with psycopg.connect(setup.admin_url, autocommit=True) as admin:
        _, call = capture_call(admin)
    with psycopg.connect(setup.reader_url, autocommit=True) as reader:
        hits = reader.execute(
            "SELECT entity_id, path::text FROM idxr.search(array_fill(0.1, ARRAY[384])::vector,"
            ' \'note.*\', \'note\', 5, \'[{"path": "note.title", "value": "first note"}]\')'
        ).fetchall()
        assert hits == [("1", "note.title")]
        assert reader.execute(
            "SELECT count(*) FROM idxr.search_entities(array_fill(0.1, ARRAY[384])::vector)"
        ).fetchone() == (1,)
        assert reader.execute(
            "SELECT count(*) FROM idxr.similar_to('note', '1', 'note.title')"
        ).fetchone() == (0,)
        assert reader.execute("SELECT count(*) FROM idxr.search_index").fetchone() == (1,)
        reader.execute("SELECT * FROM idxr.status")
        reader.execute("SELECT * FROM idxr.stale")
        reader.execute("SELECT * FROM idxr.entity_kinds, idxr.embedding_models")
        for attempt in [
            "SELECT idxr.set_embedding_dimensions(8)",
            "DELETE FROM idxr.search_index",
            "INSERT INTO idxr.queue (entity_kind, entity_id, source_table, operation)"
            " VALUES ('note', '2', 'app.notes', 'INSERT')",
            "SELECT * FROM idxr.embedding_cache",
            "SELECT * FROM app.notes",
            "CREATE TEMP TABLE hijack (id integer PRIMARY KEY, title text);"
            f" CREATE TRIGGER t AFTER TRUNCATE ON hijack EXECUTE FUNCTION {call}",
        ]:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                reader.execute(attempt)


def test_group_roles_survive_a_second_migrate_and_uninstall(isolated_database_url: str) -> None:
    """Creating the roles tolerates existing ones; uninstall leaves them (other databases of
    the cluster may use them) and does not fail."""
    from idxr_pg.db import migrations

    migrations.upgrade(isolated_database_url)
    migrations.upgrade(isolated_database_url)
    with psycopg.connect(isolated_database_url, autocommit=True) as admin:
        assert audit(admin) and not any(f.public for f in audit(admin))
    migrations.uninstall(isolated_database_url)
    with psycopg.connect(isolated_database_url, autocommit=True) as admin:
        left = admin.execute(
            "SELECT count(*) FROM pg_roles WHERE rolname = ANY(%s)", [list(GROUP_ROLES)]
        ).fetchone()[0]
    assert left == 2


def test_worker_role_indexes_with_its_grants_only(setup: Setup) -> None:
    """A login role in idxr_worker, with SELECT on the watched table granted by the DBA, runs
    the worker and a backfill; it cannot change the schema or the dimensions."""
    from idxr_pg.runtime.backfill import Backfill, BackfillOptions
    from idxr_pg.runtime.worker import Worker

    config = parse_config(
        {"entities": [NOTE_ENTITY], "embedding": {"model": "deterministic-test"}}, "t"
    )
    with psycopg.connect(setup.admin_url, autocommit=True) as admin:
        worker_role = _login_role(admin, "idxr_wk", "idxr_worker")
        admin.execute(
            sql.SQL("GRANT USAGE ON SCHEMA app TO {0}; GRANT SELECT ON app.notes TO {0}").format(
                sql.Identifier(worker_role)
            )
        )
        admin.execute("DELETE FROM idxr.search_index")
    try:
        worker_url = as_role(setup.admin_url, worker_role)
        with psycopg.connect(setup.app_url, autocommit=True) as app:
            app.execute("INSERT INTO app.notes VALUES (2, 'second note')")
        Worker(worker_url, config).drain()
        Backfill(worker_url, config, "note", BackfillOptions()).run()
        with psycopg.connect(worker_url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT entity_id, path::text, value FROM idxr.search_index ORDER BY 1, 2"
            ).fetchall()
            for attempt in [
                "SELECT idxr.set_embedding_dimensions(8)",
                "CREATE TABLE idxr.evil (id int)",
                "ALTER TABLE idxr.search_index ADD COLUMN evil int",
                "INSERT INTO app.notes VALUES (3, 'written by the worker')",
            ]:
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(attempt)
        assert rows == [
            ("1", "note.id", "1"),
            ("1", "note.title", "first note"),
            ("2", "note.id", "2"),
            ("2", "note.title", "second note"),
        ]
    finally:
        _drop_roles(setup.admin_url, [worker_role])


# --------------------------------------------------------------------------- the worker's reads


@pytest.fixture
def worker_url(setup: Setup) -> Iterator[str]:
    """A login role in idxr_worker with SELECT on app.notes (what the README tells DBAs)."""
    with psycopg.connect(setup.admin_url, autocommit=True) as admin:
        role = _login_role(admin, "idxr_wk", "idxr_worker")
        admin.execute(
            sql.SQL("GRANT USAGE ON SCHEMA app TO {0}; GRANT SELECT ON app.notes TO {0}").format(
                sql.Identifier(role)
            )
        )
    try:
        yield as_role(setup.admin_url, role)
    finally:
        _drop_roles(setup.admin_url, [role])


def _note_config(**overrides: object):
    return parse_config(
        {"entities": [{**NOTE_ENTITY, **overrides}], "embedding": {"model": "deterministic-test"}},
        "t",
    )


def _indexed(url: str) -> list[tuple[str, str, str]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(
            "SELECT entity_id, path::text, value FROM idxr.search_index"
            " WHERE entity_kind = 'note' ORDER BY 1, 2"
        ).fetchall()


def test_source_reads_are_read_only_with_a_fixed_search_path(setup: Setup) -> None:
    from idxr_pg.db import source

    with psycopg.connect(setup.admin_url, autocommit=True) as conn:
        with source.reading_source(conn):
            settings = [
                conn.execute(f"SHOW {name}").fetchone()[0]
                for name in ("transaction_read_only", "search_path", "row_security")
            ]
        assert settings == ["on", "pg_catalog, pg_temp", "off"]
        assert conn.execute("SHOW transaction_read_only").fetchone()[0] == "off"
        with conn.transaction():  # inside the caller's transaction: a savepoint, undone after
            with source.reading_source(conn):
                assert conn.execute("SHOW row_security").fetchone()[0] == "off"
            assert conn.execute("SHOW row_security").fetchone()[0] == "on"
            conn.execute("CREATE TEMP TABLE still_writable (id int)")


def test_table_owner_cannot_shadow_a_catalog_function_the_worker_calls(
    setup: Setup, worker_url: str
) -> None:
    """The owner of app.notes (with CREATE on public, the pre-15 default) defines
    public.to_jsonb(app.notes): on the worker's default search_path it beats
    pg_catalog.to_jsonb(anyelement) and would run as the worker. The worker's fixed
    search_path ignores it."""
    with psycopg.connect(setup.admin_url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(setup.app_role))
        )
        admin.execute("DELETE FROM idxr.search_index")
    with psycopg.connect(setup.app_url, autocommit=True) as app:
        app.execute(
            """CREATE TABLE app.hijack_log (who text);
               GRANT INSERT ON app.hijack_log TO PUBLIC;
               CREATE FUNCTION public.to_jsonb(n app.notes) RETURNS jsonb LANGUAGE plpgsql AS $$
               BEGIN
                   INSERT INTO app.hijack_log VALUES (current_user);
                   RETURN jsonb_build_object('id', n.id, 'title', 'hijacked');
               END $$;
               GRANT EXECUTE ON FUNCTION public.to_jsonb(app.notes) TO PUBLIC"""
        )
        app.execute("INSERT INTO app.notes VALUES (2, 'second note')")
    from idxr_pg.runtime.worker import Worker

    Worker(worker_url, _note_config(columns=None)).drain()
    with psycopg.connect(setup.admin_url, autocommit=True) as admin:
        log_rows = admin.execute("SELECT who FROM app.hijack_log").fetchall()
    assert log_rows == []
    assert _indexed(setup.admin_url) == [("2", "note.id", "2"), ("2", "note.title", "second note")]


def test_documents_load_read_only(setup: Setup, worker_url: str) -> None:
    """A key of a domain type whose CHECK calls the owner's function: the cast in the document
    query runs it as the worker. In a READ ONLY transaction it cannot write anything: the
    entity fails (kept in the queue for a retry) and nothing is written."""
    with psycopg.connect(setup.app_url, autocommit=True) as app:
        app.execute(
            """CREATE TABLE app.hijack_log (who text);
               GRANT INSERT ON app.hijack_log TO PUBLIC;
               CREATE FUNCTION app.note_key_ok(k integer) RETURNS boolean LANGUAGE plpgsql AS $$
               BEGIN
                   INSERT INTO app.hijack_log VALUES (current_user);
                   RETURN true;
               END $$;
               GRANT EXECUTE ON FUNCTION app.note_key_ok(integer) TO PUBLIC;
               CREATE DOMAIN app.note_key AS integer CHECK (app.note_key_ok(VALUE));
               CREATE TABLE app.keyed (id app.note_key PRIMARY KEY, title text NOT NULL)"""
        )
    entity = {**NOTE_ENTITY, "table": "app.keyed"}
    with psycopg.connect(setup.admin_url, autocommit=True) as admin:
        capture.install_triggers(admin, parse_config({"entities": [entity]}, "t").entities)
        admin.execute("DELETE FROM idxr.search_index")
        worker_role = psycopg.conninfo.conninfo_to_dict(worker_url)["user"]
        admin.execute(
            sql.SQL("GRANT SELECT ON app.keyed TO {}").format(sql.Identifier(worker_role))
        )
    with psycopg.connect(setup.app_url, autocommit=True) as app:
        app.execute("INSERT INTO app.keyed VALUES (5, 'fifth')")
        app.execute("DELETE FROM app.hijack_log")  # the insert's own CHECK ran as the app
    from idxr_pg.runtime.worker import Worker

    Worker(worker_url, _note_config(table="app.keyed")).drain()
    with psycopg.connect(setup.admin_url, autocommit=True) as admin:
        log_rows = admin.execute("SELECT who FROM app.hijack_log").fetchall()
        errors = admin.execute(
            "SELECT last_error FROM idxr.queue WHERE entity_kind = 'note'"
        ).fetchall()
    assert log_rows == []
    assert _indexed(setup.admin_url) == []
    assert len(errors) == 1 and "read-only transaction" in errors[0][0], errors


# --------------------------------------------------------------------------- superuser


def test_worker_backfill_and_trigger_install_refuse_a_superuser(
    setup: Setup, worker_url: str, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Connected as postgres without --allow-superuser: one clear line naming the role; the
    flag (or IDXR_ALLOW_SUPERUSER=1) allows it; a least-privilege role needs neither."""
    import yaml
    from click.testing import CliRunner

    from idxr_pg.cli import main
    from idxr_pg.runtime.superuser import ALLOW_SUPERUSER_ENV

    monkeypatch.delenv(ALLOW_SUPERUSER_ENV, raising=False)
    config = tmp_path / "idxr.yaml"
    config.write_text(
        yaml.safe_dump({"entities": [NOTE_ENTITY], "embedding": {"model": "deterministic-test"}})
    )
    base = ["--database-url", setup.admin_url, "--config", str(config)]
    commands = [  # (the refused action, the command)
        ("index", ["worker", "--once"]),
        ("index", ["refresh", "note"]),
        ("index", ["backfill", "note"]),
        ("install capture triggers", ["triggers", "install"]),
    ]
    runner = CliRunner()
    for action, args in commands:
        result = runner.invoke(main, [*base, *args])
        assert result.exit_code != 0, (args, result.output)
        message = result.output.strip()
        assert f"refusing to {action} as role 'postgres', a superuser" in message
        assert "--allow-superuser" in result.output and len(message.splitlines()) == 1, message
    with psycopg.connect(setup.admin_url, autocommit=True) as admin:
        assert admin.execute("SELECT count(*) FROM idxr.workers").fetchone()[0] == 0
        assert admin.execute("SELECT count(*) FROM idxr.entity_kinds").fetchone()[0] == 0

    from idxr_pg.runtime.worker import Worker

    Worker(worker_url, _note_config()).drain()  # not a superuser: no flag needed
    for _, args in commands:
        result = runner.invoke(main, [*base, *args, "--allow-superuser"])
        assert result.exit_code == 0, (args, result.output)


# --------------------------------------------------------------------------- row level security


def _enable_row_security(setup: Setup, table: str = "app.notes") -> None:
    """The owner turns RLS on with a policy calling its own function (which would log)."""
    with psycopg.connect(setup.app_url, autocommit=True) as app:
        app.execute(
            f"""CREATE TABLE IF NOT EXISTS app.policy_log (who text);
               GRANT INSERT ON app.policy_log TO PUBLIC;
               CREATE OR REPLACE FUNCTION app.visible(id integer) RETURNS boolean
               LANGUAGE plpgsql AS $$
               BEGIN
                   INSERT INTO app.policy_log VALUES (current_user);
                   RETURN id = 1;
               END $$;
               GRANT EXECUTE ON FUNCTION app.visible(integer) TO PUBLIC;
               ALTER TABLE {table} ENABLE ROW LEVEL SECURITY;
               CREATE POLICY only_one ON {table} FOR SELECT USING (app.visible(id))"""
        )


def test_row_level_security_table_is_refused_without_opt_in(
    setup: Setup, worker_url: str, tmp_path
) -> None:
    """A source with RLS: trigger install, the worker and a backfill refuse it (one line naming
    kind and table) unless the entity says allow_row_security: true."""
    from idxr_pg.capture.triggers import CaptureError
    from idxr_pg.indexing.registry import RegistryError
    from idxr_pg.runtime.backfill import Backfill, BackfillOptions
    from idxr_pg.runtime.worker import Worker

    _enable_row_security(setup)
    config = _note_config()
    expected = "entity kind 'note': table app.notes has row level security enabled"
    with (
        psycopg.connect(setup.admin_url, autocommit=True) as admin,
        pytest.raises(CaptureError, match=expected) as refused,
    ):
        capture.install_triggers(admin, config.entities)
    assert "allow_row_security: true" in str(refused.value)
    assert len(str(refused.value).splitlines()) == 1
    with pytest.raises(RegistryError, match=expected):
        Worker(worker_url, config).drain()
    with pytest.raises(RegistryError, match=expected):
        Backfill(worker_url, config, "note", BackfillOptions()).run()

    allowed = _note_config(allow_row_security=True)
    with psycopg.connect(setup.admin_url, autocommit=True) as admin:
        capture.install_triggers(admin, allowed.entities)
        log_rows = admin.execute("SELECT who FROM app.policy_log").fetchall()
    assert log_rows == []


def test_row_security_is_off_for_the_worker_never_a_silent_filter(
    setup: Setup, worker_url: str
) -> None:
    """Opted in: a worker without BYPASSRLS fails to load (row_security = off makes the policy
    an error, its function never runs) instead of indexing only the rows the policy shows; a
    BYPASSRLS worker indexes every row."""
    from idxr_pg.runtime.worker import Worker

    _enable_row_security(setup)
    with psycopg.connect(setup.app_url, autocommit=True) as app:
        app.execute("INSERT INTO app.notes VALUES (2, 'hidden by the policy')")
        app.execute("DELETE FROM app.policy_log")  # as the owner, the policy did not apply
    with psycopg.connect(setup.admin_url, autocommit=True) as admin:
        admin.execute("DELETE FROM idxr.search_index")
        admin.execute(
            "INSERT INTO idxr.queue (entity_kind, entity_id, source_table, operation)"
            " VALUES ('note', '1', 'app.notes', 'UPDATE')"
        )
    allowed = _note_config(allow_row_security=True)
    Worker(worker_url, allowed).drain()
    with psycopg.connect(setup.admin_url, autocommit=True) as admin:
        errors = [e for (e,) in admin.execute("SELECT last_error FROM idxr.queue ORDER BY 1")]
        log_rows = admin.execute("SELECT who FROM app.policy_log").fetchall()
        assert len(errors) == 2 and all("row-level security" in e for e in errors), errors
        assert log_rows == []
        assert _indexed(setup.admin_url) == []
        role = psycopg.conninfo.conninfo_to_dict(worker_url)["user"]
        admin.execute(sql.SQL("ALTER ROLE {} BYPASSRLS").format(sql.Identifier(role)))
        admin.execute("UPDATE idxr.queue SET not_before = now()")
    Worker(worker_url, allowed).drain()
    with psycopg.connect(setup.admin_url, autocommit=True) as admin:
        log_rows = admin.execute("SELECT who FROM app.policy_log").fetchall()
    assert log_rows == []
    assert _indexed(setup.admin_url) == [
        ("1", "note.id", "1"),
        ("1", "note.title", "first note"),
        ("2", "note.id", "2"),
        ("2", "note.title", "hidden by the policy"),
    ]


def test_key_of_a_type_outside_pg_catalog_loads_under_the_fixed_search_path(
    setup: Setup, worker_url: str
) -> None:
    """The key's type is spelled schema-qualified (a type in public, visible on the default
    search_path, is not on the worker's fixed one)."""
    from idxr_pg.runtime.worker import Worker

    with psycopg.connect(setup.admin_url, autocommit=True) as admin:
        admin.execute("CREATE DOMAIN public.note_id AS integer")
    with psycopg.connect(setup.app_url, autocommit=True) as app:
        app.execute(
            "CREATE TABLE app.typed (id public.note_id PRIMARY KEY, title text NOT NULL);"
            " INSERT INTO app.typed VALUES (7, 'typed key')"
        )
    with psycopg.connect(setup.admin_url, autocommit=True) as admin:
        role = psycopg.conninfo.conninfo_to_dict(worker_url)["user"]
        admin.execute(sql.SQL("GRANT SELECT ON app.typed TO {}").format(sql.Identifier(role)))
        admin.execute("DELETE FROM idxr.search_index")
        admin.execute(
            "INSERT INTO idxr.queue (entity_kind, entity_id, source_table, operation)"
            " VALUES ('note', '7', 'app.typed', 'INSERT')"
        )
    Worker(worker_url, _note_config(table="app.typed")).drain()
    assert _indexed(setup.admin_url) == [("7", "note.id", "7"), ("7", "note.title", "typed key")]


def test_document_sql_is_checked_under_the_search_path_it_runs_with(setup: Setup) -> None:
    """An unqualified table in `document` SQL resolves on the default search_path but not on
    the worker's fixed one: refused when the kind is resolved, not at every load."""
    from idxr_pg.indexing.registry import RegistryError, resolve_kinds

    with psycopg.connect(setup.admin_url, autocommit=True) as admin:
        admin.execute("CREATE TABLE public.pubnotes (id integer PRIMARY KEY, title text)")
        document = "SELECT n.id, to_jsonb(n) FROM pubnotes n WHERE n.id = ANY(%(keys)s::integer[])"
        config = _note_config(table="public.pubnotes", document=document)
        with pytest.raises(RegistryError, match="entity kind 'note': the document SQL is invalid"):
            resolve_kinds(admin, config)
        qualified = _note_config(
            table="public.pubnotes", document=document.replace("pubnotes", "public.pubnotes")
        )
        assert list(resolve_kinds(admin, qualified)) == ["note"]


def test_c_capture_is_a_trusted_extension_executable_by_its_creator_and_useless_elsewhere(
    isolated_database_url: str,
) -> None:
    """The schema owner (no superuser) creates the trusted extension; only it may EXECUTE the
    function (CREATE TRIGGER checks that), and a copy of the C function outside schema idxr
    (a superuser's mistake) refuses to run: it would write the queue with no permission check."""
    roles: list[str] = []
    try:
        with psycopg.connect(isolated_database_url, autocommit=True) as admin:
            owner = _login_role(admin, "idxr_own")
            roles.append(owner)
            app = _login_role(admin, "idxr_app")
            roles.append(app)
            database = admin.info.dbname
            admin.execute(
                sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
                    sql.Identifier(database), sql.Identifier(owner)
                )
            )
            admin.execute(sql.SQL("ALTER SCHEMA idxr OWNER TO {}").format(sql.Identifier(owner)))
            admin.execute(sql.SQL("CREATE SCHEMA app AUTHORIZATION {}").format(sql.Identifier(app)))
            with pytest.raises(psycopg.Error, match='must be installed in schema "idxr"'):
                admin.execute("CREATE EXTENSION idxr_capture SCHEMA public")
        with psycopg.connect(as_role(isolated_database_url, owner), autocommit=True) as conn:
            assert conn.info.parameter_status("is_superuser") == "off"
            conn.execute("CREATE EXTENSION idxr_capture")  # trusted: no superuser needed
            # a common over-grant: the app role may then name the function, not run it
            conn.execute(sql.SQL("GRANT USAGE ON SCHEMA idxr TO {}").format(sql.Identifier(app)))
        with psycopg.connect(as_role(isolated_database_url, app), autocommit=True) as conn:
            conn.execute("CREATE TABLE app.notes (id integer PRIMARY KEY, title text)")
            assert not conn.execute(
                "SELECT has_function_privilege('idxr.idxr_capture()', 'EXECUTE')"
            ).fetchone()[0]
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="for function"):
                conn.execute(
                    "CREATE TRIGGER forge AFTER INSERT ON app.notes REFERENCING NEW TABLE AS n"
                    " FOR EACH STATEMENT EXECUTE FUNCTION"
                    " idxr.idxr_capture('note', 'app.notes', 'n', 'id', '')"
                )
        with psycopg.connect(isolated_database_url, autocommit=True) as admin:
            grantees = admin.execute(
                "SELECT array_agg(a.grantee::regrole::text ORDER BY 1)"
                " FROM pg_proc p, aclexplode(p.proacl) a"
                " WHERE p.oid = 'idxr.idxr_capture()'::regprocedure"
                " AND a.privilege_type = 'EXECUTE'"
            ).fetchone()[0]
            assert set(grantees) == {"postgres", owner}  # member owner (bootstrap), creator
            admin.execute("CREATE SCHEMA elsewhere")
            admin.execute(
                "CREATE FUNCTION elsewhere.idxr_capture() RETURNS trigger"
                " LANGUAGE c AS '$libdir/idxr_capture', 'idxr_capture'"
            )
            admin.execute(
                "CREATE TRIGGER copy AFTER INSERT ON app.notes REFERENCING NEW TABLE AS n"
                " FOR EACH STATEMENT EXECUTE FUNCTION"
                " elsewhere.idxr_capture('note', 'app.notes', 'n', 'id', '')"
            )
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as refused:
                admin.execute("INSERT INTO app.notes VALUES (1, 'x')")
            assert "elsewhere.idxr_capture runs only in schema idxr" in str(refused.value)
            assert admin.execute("SELECT count(*) FROM idxr.queue").fetchone() == (0,)
            assert admin.execute("SELECT count(*) FROM app.notes").fetchone() == (0,)
    finally:
        with psycopg.connect(isolated_database_url, autocommit=True) as admin:
            admin.execute("DROP SCHEMA IF EXISTS elsewhere CASCADE")
            admin.execute("DROP SCHEMA IF EXISTS app CASCADE")
            admin.execute("DROP SCHEMA IF EXISTS idxr CASCADE")
        _drop_roles(isolated_database_url, roles)
