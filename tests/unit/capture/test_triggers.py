"""The capture DDL builders, without a database: the SQL text each one builds for a plan."""

from __future__ import annotations

import json
import re

import pytest

from idxr_pg.capture import triggers as capture
from idxr_pg.config import EntityConfig
from idxr_pg.db import queue


def text(statement) -> str:
    return statement.as_string(None)


def plan_for(
    readers: tuple[capture.Reader, ...] = (capture.Reader("table", "id", None),),
    *,
    kind: str = "sub",
    schema: str = "app",
    table: str = "subs",
    columns: tuple[str, ...] = ("id", "a", "b"),
    tree: tuple[tuple[str, str], ...] | None = None,
    notify: bool = True,
    unique: frozenset[str] = frozenset(),
) -> capture.PlannedCapture:
    target = capture.CaptureTarget(kind, f"{schema}.{table}", readers, notify)
    resolved = capture.ResolvedTable(
        1234, schema, table, "r", columns, tree if tree is not None else ((schema, table),),
        unique,
    )  # fmt: skip
    return capture.PlannedCapture(target, resolved, capture.function_name(kind, schema, table))


def branch(function_sql: str, operation: str) -> str:
    """The key collection of one TG_OP branch of a capture function."""
    opening = "ELSE" if operation == "TRUNCATE" else f"IF TG_OP = '{operation}' THEN"
    match = re.search(
        rf"{opening}\n        idxr_keys := ARRAY\(SELECT (?:DISTINCT )?changed\.k FROM [^\n]*\n"
        rf".*?WHERE changed\.k IS NOT NULL\);",
        function_sql,
        re.DOTALL,
    )
    assert match, f"no {operation} branch in:\n{function_sql}"
    return match.group(0)


# ---------------------------------------------------------------------------------------------
# Names


def test_function_name_is_kind_schema_table():
    assert capture.function_name("sub", "app", "subs") == "capture_sub__app__subs"


def test_function_names_of_ambiguous_parts_get_a_hash_and_never_collide():
    one = capture.function_name("a", "b__c", "d")
    other = capture.function_name("a__b", "c", "d")
    assert one != other
    assert re.fullmatch(r"capture_.*_[0-9a-f]{8}", one)
    assert re.fullmatch(r"capture_.*_[0-9a-f]{8}", other)


def test_long_names_are_cut_to_63_characters_with_a_hash():
    name = capture.function_name("k" * 40, "s" * 40, "t" * 40)
    assert len(name) == capture.MAX_IDENTIFIER
    assert re.search(r"_[0-9a-f]{8}$", name)
    assert name != capture.function_name("k" * 40, "s" * 40, "t" * 39 + "u")
    trigger = capture.trigger_name("k" * 70, "truncate")
    assert len(trigger) == capture.MAX_IDENTIFIER and trigger.endswith("_truncate")
    assert capture.trigger_name("sub", "insert") == "idxr_sub_insert"


# ---------------------------------------------------------------------------------------------
# From config to targets


def test_targets_merge_the_readers_of_one_table():
    entity = EntityConfig(
        name="node",
        model="m:Node",
        table="app.nodes",
        key="id",
        columns=["id", "name"],
        watch=[
            {"table": "app.nodes", "key": " parent_id ", "columns": ["parent_id"]},
            {"table": "app.tags", "key": "node_id"},
        ],
        notify=False,
    )
    targets = capture.capture_targets(entity)
    assert [t.table for t in targets] == ["app.nodes", "app.tags"]
    nodes, tags = targets
    assert nodes.readers == (
        capture.Reader("table", "id", ("id", "name")),
        capture.Reader("watch[0]", "parent_id", ("parent_id",)),
    )
    assert tags.readers == (capture.Reader("watch[1]", "node_id", None),)
    assert all(t.kind == "node" and t.notify is False for t in targets)


def test_an_empty_watch_key_is_refused_with_kind_and_table():
    entity = EntityConfig(
        name="node", model="m:Node", table="app.nodes", key="id",
        watch=[{"table": "app.tags", "key": "   "}],
    )  # fmt: skip
    with pytest.raises(capture.CaptureError, match=r"entity 'node': watch\[0\] \(app.tags\)"):
        capture.capture_targets(entity)


def test_a_key_is_a_column_only_when_it_is_a_plain_identifier():
    assert capture.Reader("table", "sub_id", None).key_is_column
    assert capture.Reader("table", "$x", None).key_is_column is False
    assert capture.Reader("watch[0]", "(payload->>'s')::uuid", None).key_is_column is False


# ---------------------------------------------------------------------------------------------
# The trigger function


def test_function_is_security_definer_with_a_safe_search_path():
    ddl = text(capture.function_ddl(plan_for()))
    assert ddl.startswith('CREATE OR REPLACE FUNCTION idxr."capture_sub__app__subs"()\n')
    assert "RETURNS trigger\nLANGUAGE plpgsql\nSECURITY DEFINER\n" in ddl
    assert "SET search_path = pg_catalog, pg_temp\nSET enable_seqscan = off\n" in ddl
    assert "AS $idxr_capture$\n" in ddl and ddl.endswith("END\n$idxr_capture$")
    assert ddl.count("idxr_keys := ARRAY(") == 4  # one key collection per TG_OP
    assert ddl.count("INSERT INTO idxr.queue (") == 1 and ddl.count("idxr.queue_batches") == 1
    assert "RETURN NULL;" in ddl


def test_insert_and_delete_enqueue_the_keys_of_their_transition_table():
    ddl = text(capture.function_ddl(plan_for()))
    insert = branch(ddl, "INSERT")
    assert (
        "        FOREACH idxr_key IN ARRAY idxr_keys LOOP\n"
        "            WITH held AS (\n"
        "                SELECT FROM idxr.queue AS p\n"
        "                 WHERE p.entity_kind = 'sub' AND p.entity_id = idxr_key\n"
        "                   AND p.claimed_by IS NULL AND p.attempts = 0\n"
        "                 LIMIT 1 FOR SHARE OF p\n"
        "            )\n"
    ) in ddl  # few keys: one at a time, share-lock the key's pending row (equality on both)
    assert "SELECT 'sub', idxr_key, 'app.subs', TG_OP WHERE NOT EXISTS (SELECT FROM held);\n" in ddl
    assert "ARRAY(SELECT DISTINCT changed.k" in insert  # no unique key column: may repeat
    assert 'SELECT ("subs"."id")::text FROM "idxr_new" AS "subs"' in insert
    assert "idxr_old" not in insert
    delete = branch(ddl, "DELETE")
    assert 'SELECT ("subs"."id")::text FROM "idxr_old" AS "subs"' in delete
    assert "idxr_new" not in delete


def test_update_compares_text_projections_of_the_columns_read():
    plan = plan_for((capture.Reader("table", "id", ("a", "b")),))
    update = branch(text(capture.function_ddl(plan)), "UPDATE")
    projection = 'ROW("subs"."a", "subs"."b")::text COLLATE pg_catalog."C"'
    assert (
        f'SELECT ("subs"."id")::text AS k, {projection} AS v, 1 AS s FROM "idxr_new" AS "subs"'
        in update
    )
    assert re.search(
        rf'SELECT \("subs"\."id"\)::text AS k, {re.escape(projection)} AS v, +-1 AS s '
        r'FROM "idxr_old" AS "subs"',
        update,
    )
    assert "GROUP BY d.k, d.v HAVING pg_catalog.sum(d.s) <> 0" in update


def test_a_unique_key_column_collects_raw_keys_and_pairs_update_rows_by_key():
    plan = plan_for((capture.Reader("table", "id", ("a", "b")),), unique=frozenset({"id"}))
    assert plan.unique_keys
    ddl = text(capture.function_ddl(plan))
    insert, update = branch(ddl, "INSERT"), branch(ddl, "UPDATE")
    assert "DISTINCT" not in insert and "ORDER BY" not in insert  # bulk: stored as they are
    assert 'ARRAY(SELECT changed.k FROM (SELECT ("subs"."id")::text FROM "idxr_new"' in insert
    projection = 'ROW("subs"."a", "subs"."b")::text COLLATE pg_catalog."C"'
    assert (
        f'SELECT COALESCE(n.k, o.k) FROM (SELECT ("subs"."id")::text AS k, {projection} AS v'
        ' FROM "idxr_new" AS "subs") AS n\n'
        f'              FULL JOIN (SELECT ("subs"."id")::text AS k, {projection} AS v'
        ' FROM "idxr_old" AS "subs") AS o ON o.k = n.k WHERE n.v IS DISTINCT FROM o.v'
    ) in update
    assert "GROUP BY" not in update and "DISTINCT changed" not in update


def test_keys_are_only_unique_for_one_reader_keyed_by_a_unique_column():
    unique = frozenset({"id"})
    assert not plan_for(unique=frozenset({"a"})).unique_keys
    assert not plan_for((capture.Reader("table", "(id)", None),), unique=unique).unique_keys
    two = (capture.Reader("table", "id", None), capture.Reader("watch[0]", "id", ("a",)))
    assert not plan_for(two, unique=unique).unique_keys
    ddl = text(capture.function_ddl(plan_for(two, unique=unique)))
    assert ddl.count("ARRAY(SELECT DISTINCT changed.k") == 3  # INSERT, UPDATE, DELETE


def test_update_of_a_reader_without_columns_compares_the_whole_row():
    update = branch(text(capture.function_ddl(plan_for())), "UPDATE")
    assert '("subs".*)::text COLLATE pg_catalog."C" AS v' in update
    assert "ROW(" not in update


def test_several_readers_union_their_keys():
    readers = (
        capture.Reader("table", "id", None),
        capture.Reader("watch[0]", "parent_id", ("parent_id",)),
    )
    ddl = text(capture.function_ddl(plan_for(readers)))
    insert = branch(ddl, "INSERT")
    assert (
        'SELECT ("subs"."id")::text FROM "idxr_new" AS "subs"\n'
        '            UNION ALL SELECT ("subs"."parent_id")::text FROM "idxr_new" AS "subs"'
    ) in insert
    update = branch(ddl, "UPDATE")
    assert update.count("HAVING pg_catalog.sum(d.s) <> 0") == 2
    assert 'ROW("subs"."parent_id")::text' in update


def test_a_key_expression_is_used_verbatim():
    reader = capture.Reader("watch[0]", "(payload->>'sub')::uuid", None)
    insert = branch(text(capture.function_ddl(plan_for((reader,)))), "INSERT")
    assert """SELECT ((payload->>'sub')::uuid)::text FROM "idxr_new" AS "subs\"""" in insert


def test_truncate_enqueues_every_indexed_or_leased_entity_of_the_kind():
    truncate = branch(text(capture.function_ddl(plan_for())), "TRUNCATE")
    assert (
        "SELECT entity_id FROM idxr.search_index WHERE entity_kind = 'sub'"
        " UNION SELECT entity_id FROM idxr.leases WHERE entity_kind = 'sub'"
    ) in truncate


def test_notify_uses_the_queue_channel_and_only_when_something_was_enqueued():
    assert capture.QUEUE_CHANNEL == queue.CHANNEL
    ddl = text(capture.function_ddl(plan_for()))
    assert "            enqueued := enqueued OR FOUND;\n" in ddl  # rows inserted, not coalesced
    assert "GET DIAGNOSTICS" not in ddl
    assert (
        "    IF enqueued THEN\n"
        "        IF pg_catalog.pg_try_advisory_xact_lock("
        f"{queue.WAKE_NAMESPACE}, pg_catalog.hashtext('sub')) THEN\n"
        f"            PERFORM pg_catalog.pg_notify('{queue.CHANNEL}', 'sub');\n"
        "        END IF;\n"
        "    END IF;\n"
    ) in ddl


def test_bulk_statements_write_one_batch_row_and_few_keys_coalesce():
    ddl = text(capture.function_ddl(plan_for()))
    assert f"IF pg_catalog.cardinality(idxr_keys) > {capture.BATCH_THRESHOLD}\n" in ddl
    assert "current_setting('transaction_isolation') <> 'read committed') THEN\n" in ddl
    assert "VALUES ('sub', idxr_keys, 'app.subs', TG_OP);" in ddl
    assert "ON CONFLICT" not in ddl  # no unique index to wait on (see db.queue)
    assert "            enqueued := enqueued OR FOUND;\n        END LOOP;\n" in ddl


def test_the_wake_namespace_is_not_the_backfill_namespace():
    from idxr_pg.db import advisory, jobs

    assert queue.WAKE_NAMESPACE == advisory.WAKE_NAMESPACE != jobs.LOCK_NAMESPACE
    assert jobs.LOCK_NAMESPACE == advisory.BACKFILL_NAMESPACE


def test_notify_false_leaves_the_notify_out():
    ddl = text(capture.function_ddl(plan_for(notify=False)))
    assert "pg_notify" not in ddl and "advisory" not in ddl
    assert "notify: false in the config" in ddl
    assert ddl.count("INSERT INTO idxr.queue (") == 1 and ddl.count("idxr.queue_batches") == 1


def test_odd_identifiers_and_literals_are_quoted():
    reader = capture.Reader("table", "Id", ('we"ird col', "Upper"))
    plan = plan_for(
        (reader,), kind="k", schema="My Schema", table='t"able', columns=("Id", 'we"ird col')
    )
    ddl = text(capture.function_ddl(plan))
    alias = '"t""able"'
    assert f'SELECT ({alias}."Id")::text FROM "idxr_new" AS {alias}' in ddl
    assert f'ROW({alias}."we""ird col", {alias}."Upper")::text' in ddl
    # the source table is a literal of the unquoted qualified name; quotes doubled
    assert "SELECT 'k', idxr_key, 'My Schema.t\"able', TG_OP WHERE NOT EXISTS" in ddl
    triggers = [text(s) for s in capture.trigger_ddl(plan)]
    assert all('ON "My Schema"."t""able"' in t for t in triggers)
    kind_literal = text(capture.function_ddl(plan_for(kind="it's")))
    assert "SELECT 'it''s', idxr_key," in kind_literal
    assert "pg_notify('idxr_queue', 'it''s')" in kind_literal


# ---------------------------------------------------------------------------------------------
# Triggers


def test_one_statement_trigger_per_event_with_its_transition_tables():
    statements = [text(s) for s in capture.trigger_ddl(plan_for())]
    assert len(statements) == len(capture.EVENTS) == 4
    clauses = {
        "insert": 'AFTER INSERT ON "app"."subs" REFERENCING NEW TABLE AS idxr_new\n',
        "update": 'AFTER UPDATE ON "app"."subs" REFERENCING OLD TABLE AS idxr_old'
        " NEW TABLE AS idxr_new\n",
        "delete": 'AFTER DELETE ON "app"."subs" REFERENCING OLD TABLE AS idxr_old\n',
        "truncate": 'AFTER TRUNCATE ON "app"."subs"\n',
    }
    for statement, event in zip(statements, capture.EVENTS, strict=True):
        assert statement.startswith(f'CREATE OR REPLACE TRIGGER "idxr_sub_{event}"\n    ')
        assert clauses[event] in statement
        assert statement.endswith(
            '\n    FOR EACH STATEMENT EXECUTE FUNCTION idxr."capture_sub__app__subs"()'
        )
    assert "REFERENCING" not in statements[3]


def test_every_table_of_a_partition_tree_gets_the_four_triggers():
    tree = (("app", "subs"), ("app", "subs_2024"), ("archive", "subs_old"))
    statements = [text(s) for s in capture.trigger_ddl(plan_for(tree=tree))]
    assert len(statements) == 12
    for schema, name in tree:
        on_table = [s for s in statements if f'ON "{schema}"."{name}"' in s]
        assert len(on_table) == 4
        assert all('idxr."capture_sub__app__subs"()' in s for s in on_table)


# ---------------------------------------------------------------------------------------------
# Install and drop scripts


def installed(name: str = "capture_old__app__gone") -> capture.InstalledCapture:
    return capture.InstalledCapture(name, "old", "app.gone", (), ())


def test_install_drops_stale_targets_first_then_creates_and_records_each():
    plan = plan_for(
        (capture.Reader("table", "id", ("a",)), capture.Reader("watch[0]", "(x)", None))
    )
    statements = [
        text(s) for s in capture.install_ddl(capture.InstallPlan((plan,), (installed(),)))
    ]
    assert statements[0] == 'DROP FUNCTION IF EXISTS idxr."capture_old__app__gone"() CASCADE'
    assert statements[1] == (
        "DELETE FROM idxr.capture_triggers WHERE function_name = 'capture_old__app__gone'"
    )
    assert statements[2].startswith("CREATE OR REPLACE FUNCTION")
    assert statements[3] == 'REVOKE ALL ON FUNCTION idxr."capture_sub__app__subs"() FROM PUBLIC'
    assert all(s.startswith("CREATE OR REPLACE TRIGGER") for s in statements[4:8])
    record = statements[8]
    assert len(statements) == 9
    assert record.startswith(
        "INSERT INTO idxr.capture_triggers (function_name, entity_kind, source_table, readers)\n"
        "VALUES ('capture_sub__app__subs', 'sub', 'app.subs', '"
    )
    assert "ON CONFLICT (function_name) DO UPDATE" in record
    readers = json.loads(re.search(r"'(\[.*\])'::jsonb", record).group(1))
    assert readers == [
        {"origin": "table", "key": "id", "columns": ["a"]},
        {"origin": "watch[0]", "key": "(x)", "columns": None},
    ]


def test_drop_removes_each_function_with_its_triggers_and_its_record():
    statements = [text(s) for s in capture.drop_ddl([installed("f1"), installed("f2")])]
    assert statements == [
        'DROP FUNCTION IF EXISTS idxr."f1"() CASCADE',
        "DELETE FROM idxr.capture_triggers WHERE function_name = 'f1'",
        'DROP FUNCTION IF EXISTS idxr."f2"() CASCADE',
        "DELETE FROM idxr.capture_triggers WHERE function_name = 'f2'",
    ]


def test_render_script_is_one_transaction_without_a_connection():
    statements = capture.drop_ddl([installed("f1")])
    assert capture.render_script(None, statements) == (
        "BEGIN;\n\n"
        'DROP FUNCTION IF EXISTS idxr."f1"() CASCADE;\n\n'
        "DELETE FROM idxr.capture_triggers WHERE function_name = 'f1';\n\n"
        "COMMIT;\n"
    )


def test_an_installed_capture_is_complete_with_four_triggers_and_no_uncovered_partition():
    four = tuple(capture.trigger_name("k", e) for e in capture.EVENTS)
    assert capture.InstalledCapture("f", "k", "app.t", four, ()).complete
    assert not capture.InstalledCapture("f", "k", "app.t", four[:3], ()).complete
    assert not capture.InstalledCapture("f", "k", "app.t", four, ("app.t_2024",)).complete


def test_function_refuses_tables_it_was_not_installed_for_before_enqueueing():
    plan = plan_for(tree=(("app", "subs"), ("app", "subs_2024")))
    ddl = text(capture.function_ddl(plan))
    guard = "IF (TG_TABLE_SCHEMA, TG_TABLE_NAME) NOT IN (('app', 'subs'), ('app', 'subs_2024'))"
    assert guard in ddl
    assert "USING ERRCODE = 'insufficient_privilege'" in ddl
    assert ddl.index(guard) < ddl.index("IF TG_OP = 'INSERT'")


# ---------------------------------------------------------------------------------------------
# --always: logical-replication subscribers


def always_plan(**kwargs) -> capture.PlannedCapture:
    plan = plan_for(**kwargs)
    return capture.PlannedCapture(plan.target, plan.table, plan.function_name, always=True)


def test_a_replica_function_name_is_the_capture_name_with_another_prefix_of_the_same_length():
    name = capture.function_name("sub", "app", "subs")
    assert capture.replica_function_name(name) == "replica_sub__app__subs"
    long = capture.function_name("k" * 40, "app", "t" * 40)
    assert len(capture.replica_function_name(long)) == len(long) <= capture.MAX_IDENTIFIER


def test_always_adds_replica_row_triggers_and_sets_every_trigger_firing_mode():
    tree = (("app", "subs"), ("app", "subs_2024"))
    plan = always_plan(tree=tree)
    statements = [text(s) for s in capture.install_ddl(capture.InstallPlan((plan,), ()))]
    function = 'idxr."replica_sub__app__subs"()'
    assert sum(s.startswith(f"CREATE OR REPLACE FUNCTION {function[:-2]}") for s in statements)
    assert f"REVOKE ALL ON FUNCTION {function} FROM PUBLIC" in statements
    rows = [s for s in statements if "FOR EACH ROW" in s]
    assert [r.split("\n")[0] for r in rows] == [
        f'CREATE OR REPLACE TRIGGER "idxr_sub_{e}_replica"' for e in ("insert", "update", "delete")
    ]
    assert all('ON "app"."subs"\n' in r and r.endswith(function) for r in rows)  # root only
    for schema, name in tree:
        for event in capture.EVENTS:
            assert (
                f'ALTER TABLE "{schema}"."{name}" ENABLE ALWAYS TRIGGER "idxr_sub_{event}"'
                in statements
            )
        for event in ("insert", "update", "delete"):
            assert (
                f'ALTER TABLE "{schema}"."{name}" ENABLE REPLICA TRIGGER "idxr_sub_{event}_replica"'
                in statements
            )
    # Modes are set after the CREATE OR REPLACE TRIGGERs (which reset them), before the record.
    last_create = max(i for i, s in enumerate(statements) if s.startswith("CREATE OR REPLACE T"))
    first_alter = min(i for i, s in enumerate(statements) if s.startswith("ALTER TABLE"))
    assert last_create < first_alter
    assert statements[-1].startswith("INSERT INTO idxr.capture_triggers")


def test_without_always_no_firing_mode_is_touched_and_a_left_replica_function_is_dropped():
    plain = [text(s) for s in capture.install_ddl(capture.InstallPlan((plan_for(),), ()))]
    assert not any("ALTER TABLE" in s or "replica" in s for s in plain)
    base = plan_for()
    off = capture.PlannedCapture(base.target, base.table, base.function_name, drop_replica=True)
    statements = [text(s) for s in capture.install_ddl(capture.InstallPlan((off,), ()))]
    assert 'DROP FUNCTION IF EXISTS idxr."replica_sub__app__subs"() CASCADE' in statements
    assert not any(s.startswith("ALTER TABLE") for s in statements)


def test_the_replica_function_runs_the_statement_queueing_over_new_and_old():
    ddl = text(capture.replica_function_ddl(always_plan()))
    assert (
        "SECURITY DEFINER\nSET search_path = pg_catalog, pg_temp\nSET enable_seqscan = off\n" in ddl
    )
    assert "IF (TG_TABLE_SCHEMA, TG_TABLE_NAME) NOT IN (('app', 'subs'))" in ddl
    assert "WITH idxr_new AS (SELECT NEW.*)" in ddl
    assert "WITH idxr_old AS (SELECT OLD.*), idxr_new AS (SELECT NEW.*)" in ddl
    assert "WITH idxr_old AS (SELECT OLD.*)\n" in ddl
    assert "TRUNCATE" not in ddl  # the ALWAYS statement trigger handles it
    assert ddl.index("NOT IN") < ddl.index("IF TG_OP = 'INSERT'")


def test_drop_also_drops_the_replica_function_of_an_always_install():
    always = capture.InstalledCapture("capture_k__a__t", "k", "a.t", (), (), ("A",), ("r",))
    statements = [text(s) for s in capture.drop_ddl([always])]
    assert statements[0] == 'DROP FUNCTION IF EXISTS idxr."replica_k__a__t"() CASCADE'
    assert statements[1] == 'DROP FUNCTION IF EXISTS idxr."capture_k__a__t"() CASCADE'


@pytest.mark.parametrize(
    ("firing", "replica", "flag", "chosen", "drop_replica"),
    [
        ((), (), None, False, False),  # first install: ORIGIN
        (("O",), (), None, False, False),
        (("A",), ("r",), None, True, False),  # sticky
        (("A", "O"), (), None, True, False),  # a partition added later: still sticky
        (("O",), ("r",), None, True, False),
        (("A",), ("r",), False, False, True),  # --no-always
        (("O",), (), True, True, False),  # --always
    ],
)
def test_always_is_explicit_or_kept_from_what_is_installed(
    firing, replica, flag, chosen, drop_replica
):
    base = plan_for()
    installed = capture.InstalledCapture(
        base.function_name, "sub", "app.subs", (), (), firing, replica
    )
    decided = capture._with_firing(base, installed if firing or replica else None, flag)
    assert (decided.always, decided.drop_replica) == (chosen, drop_replica)
    assert installed.always == (firing == ("A",) and bool(replica))
