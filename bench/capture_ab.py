"""A/B of capture trigger bodies: what each part of a capture trigger costs a write.

Identical tables, each with its own variant of the capture trigger (or none: ``plain``), in
one scratch database; pgbench runs one-row INSERT / UPDATE transactions on each table in turn,
the order rotated per round, and every ratio is taken against ``plain`` within the same round
(adjacent runs see the same machine load); the median over rounds is printed. ``--bulk`` times
10,000-row INSERT / UPDATE / DELETE statements per variant the same way.

The variants are the decomposition the issue asks for (which part of the trigger costs what):

- ``installed``: the plpgsql body ``idxr-pg triggers install --language plpgsql`` writes;
- ``default``: what ``idxr-pg triggers install`` does by default (the C trigger where the
  server has the ``idxr_capture`` library, else the same plpgsql body);
- ``noop_tt`` / ``noop``: a statement trigger doing nothing, with / without transition tables,
  SECURITY DEFINER + SET search_path like the real one (the floor of the trigger machinery);
- ``noop_plain``: ``noop`` without SECURITY DEFINER and SET search_path;
- ``collect``: the installed body up to collecting the keys (no queue write, no wake-up);
- ``lean``: a one-statement body per event (INSERT ... SELECT from the transition table
  ``ON CONFLICT``), FOUND for the wake-up: the floor of a queue write;
- ``row``: a row-level trigger inserting NEW's key (what a row trigger would cost);
- ``c``: the C trigger function of idxr_pg/capture/c by hand (same statement triggers, no
  plpgsql, a direct index probe and heap/index inserts); needs the library built and
  installed (``idxr-pg doctor --install-missing``, as root).

    flock /tmp/idxr-bench.lock .venv/bin/python bench/capture_ab.py [--rounds 5] [--seconds 2]
        [--clients 1,4] [--variants installed,noop,...] [--bulk] [--drop-ready]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

import capture as cap  # noqa: E402  (bench/capture.py: database, tables, pgbench, reset)
from benchdb import add_database_url  # noqa: E402

from idxr_pg.capture import triggers as capture  # noqa: E402
from idxr_pg.config import parse_config  # noqa: E402
from idxr_pg.db import migrations  # noqa: E402

SECDEF = "SECURITY DEFINER SET search_path = pg_catalog, pg_temp"
# Revision 0007 made queue_pending a plain index (writers share-lock a pending row instead of
# coalescing through ON CONFLICT), so the hand-written variants insert without an arbiter: their
# figures are the `lean_noconflict` kind. `installed` is the real (share-lock) body.
PENDING = ""
WAKE = (
    "IF FOUND AND pg_catalog.pg_try_advisory_xact_lock(1768192119, pg_catalog.hashtext('{t}'))"
    " THEN PERFORM pg_catalog.pg_notify('idxr_queue', '{t}'); END IF;"
)


def statement_triggers(table: str, function: str, transition: bool = True) -> list[str]:
    clauses = {
        "insert": "AFTER INSERT ON bench.{t} REFERENCING NEW TABLE AS idxr_new",
        "update": "AFTER UPDATE ON bench.{t} REFERENCING OLD TABLE AS idxr_old NEW TABLE AS idxr_new",
        "delete": "AFTER DELETE ON bench.{t} REFERENCING OLD TABLE AS idxr_old",
    }
    out = []
    for event, clause in clauses.items():
        if not transition:
            clause = clause.split(" REFERENCING")[0]
        fn = function.format(event=event)
        out.append(
            f"CREATE TRIGGER ab_{event} {clause.format(t=table)} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION bench.{fn}()"
        )
    return out


def plpgsql(name: str, body: str, secdef: bool = True) -> str:
    return (
        f"CREATE FUNCTION bench.{name}() RETURNS trigger LANGUAGE plpgsql "
        f"{SECDEF if secdef else ''} AS $f$ BEGIN {body} RETURN NULL; END $f$"
    )


def noop(table: str, transition: bool, secdef: bool = True) -> list[str]:
    return [plpgsql(f"{table}_fn", "", secdef)] + statement_triggers(
        table, f"{table}_fn", transition
    )


def collect(table: str) -> list[str]:
    body = (
        "DECLARE keys text[]; BEGIN IF TG_OP = 'INSERT' THEN "
        'keys := ARRAY(SELECT DISTINCT (n.id)::text COLLATE "C" FROM idxr_new n ORDER BY 1); '
        "ELSIF TG_OP = 'UPDATE' THEN "
        'keys := ARRAY(SELECT DISTINCT d.k COLLATE "C" FROM (SELECT d.k FROM ('
        'SELECT (n.id)::text k, ROW(n.id, n.title, n.body, n.status, n.n)::text COLLATE "C" v,'
        " 1 s FROM idxr_new n UNION ALL SELECT (o.id)::text, ROW(o.id, o.title, o.body, o.status,"
        ' o.n)::text COLLATE "C", -1 FROM idxr_old o) d GROUP BY d.k, d.v HAVING sum(d.s) <> 0)'
        " d ORDER BY 1); "
        'ELSE keys := ARRAY(SELECT DISTINCT (o.id)::text COLLATE "C" FROM idxr_old o ORDER BY 1);'
        " END IF; END;"
    )
    return [plpgsql(f"{table}_fn", body)] + statement_triggers(table, f"{table}_fn")


def lean(table: str, secdef: bool = True, wake: bool = True, conflict: bool = True) -> list[str]:
    """One statement per event: the queue write straight from the transition table."""
    global PENDING, WAKE
    saved = PENDING, WAKE
    PENDING = PENDING if conflict else ""
    WAKE = WAKE if wake else ""
    insert = (
        f"INSERT INTO idxr.queue (entity_kind, entity_id, source_table, operation) "
        f"SELECT '{table}', n.id::text, 'bench.{table}', TG_OP FROM idxr_new n {PENDING}; "
        + WAKE.format(t=table)
    )
    update = (
        f"INSERT INTO idxr.queue (entity_kind, entity_id, source_table, operation) "
        f"SELECT '{table}', n.id::text, 'bench.{table}', TG_OP FROM idxr_new n "
        f"JOIN idxr_old o ON o.id = n.id "
        f'WHERE ROW(n.id, n.title, n.body, n.status, n.n)::text COLLATE "C" '
        f'<> ROW(o.id, o.title, o.body, o.status, o.n)::text COLLATE "C" {PENDING}; '
        + WAKE.format(t=table)
    )
    delete = (
        f"INSERT INTO idxr.queue (entity_kind, entity_id, source_table, operation) "
        f"SELECT '{table}', o.id::text, 'bench.{table}', TG_OP FROM idxr_old o {PENDING}; "
        + WAKE.format(t=table)
    )
    PENDING, WAKE = saved
    return [
        plpgsql(f"{table}_insert", insert, secdef),
        plpgsql(f"{table}_update", update, secdef),
        plpgsql(f"{table}_delete", delete, secdef),
    ] + statement_triggers(table, table + "_{event}")


FOLD = """
WITH c AS MATERIALIZED (SELECT ARRAY(SELECT x.k FROM ({keys}) AS x (k) WHERE x.k IS NOT NULL) AS a),
b AS (INSERT INTO idxr.queue_batches (entity_kind, entity_ids, source_table, operation)
      SELECT '{t}', c.a, 'bench.{t}', TG_OP FROM c
       WHERE pg_catalog.cardinality(c.a) > 8
          OR (pg_catalog.cardinality(c.a) > 0
              AND pg_catalog.current_setting('transaction_isolation') <> 'read committed')
      RETURNING 1),
q AS (INSERT INTO idxr.queue (entity_kind, entity_id, source_table, operation)
      SELECT '{t}', s.k, 'bench.{t}', TG_OP
        FROM c, LATERAL (SELECT DISTINCT u.k COLLATE pg_catalog."C" FROM pg_catalog.unnest(c.a) AS u (k)
                          ORDER BY 1) AS s (k)
       WHERE pg_catalog.cardinality(c.a) <= 8
         AND pg_catalog.current_setting('transaction_isolation') = 'read committed'
      {pending} RETURNING 1)
SELECT EXISTS (SELECT FROM b) OR EXISTS (SELECT FROM q) INTO enqueued;
IF enqueued AND pg_catalog.pg_try_advisory_xact_lock(1768192119, pg_catalog.hashtext('{t}'))
THEN PERFORM pg_catalog.pg_notify('idxr_queue', '{t}'); END IF;
"""
MULTISET = (
    "SELECT d.k FROM (SELECT (n.id)::text AS k, ROW(n.id, n.title, n.body, n.status, n.n)::text"
    ' COLLATE "C" AS v, 1 AS s FROM idxr_new AS n UNION ALL SELECT (o.id)::text,'
    ' ROW(o.id, o.title, o.body, o.status, o.n)::text COLLATE "C", -1 FROM idxr_old AS o) AS d'
    " GROUP BY d.k, d.v HAVING pg_catalog.sum(d.s) <> 0"
)
JOINED = (
    "SELECT (n.id)::text FROM idxr_new AS n JOIN idxr_old AS o ON o.id = n.id"
    ' WHERE ROW(n.id, n.title, n.body, n.status, n.n)::text COLLATE "C"'
    ' <> ROW(o.id, o.title, o.body, o.status, o.n)::text COLLATE "C"'
)


def fold(table: str, update: str = MULTISET) -> list[str]:
    """The installed body folded into one statement per event (raw keys, sorted only if few)."""

    def body(keys: str) -> str:
        return FOLD.format(keys=keys, t=table, pending=PENDING)

    text = (
        "DECLARE enqueued boolean; BEGIN IF TG_OP = 'INSERT' THEN "
        + body("SELECT (n.id)::text FROM idxr_new AS n")
        + " ELSIF TG_OP = 'UPDATE' THEN "
        + body(update)
        + " ELSE "
        + body("SELECT (o.id)::text FROM idxr_old AS o")
        + " END IF; END;"
    )
    return [plpgsql(f"{table}_fn", text)] + statement_triggers(table, f"{table}_fn")


def row_level(table: str) -> list[str]:
    body = (
        f"INSERT INTO idxr.queue (entity_kind, entity_id, source_table, operation) "
        f"VALUES ('{table}', NEW.id::text, 'bench.{table}', TG_OP) {PENDING}; "
        + WAKE.format(t=table)
    )
    return [
        plpgsql(f"{table}_fn", body),
        f"CREATE TRIGGER ab_row AFTER INSERT OR UPDATE ON bench.{table} "
        f"FOR EACH ROW EXECUTE FUNCTION bench.{table}_fn()",
    ]


def c_function(table: str) -> list[str]:
    """The C accelerator: the four statement triggers of the installed body, arguments
    (kind, source, flags 'n' notify + 'u' unique key, key column, read columns)."""
    args = f"'{table}', 'bench.{table}', 'nu', 'id', 'id,title,body,status,n'"
    return [
        "CREATE EXTENSION IF NOT EXISTS idxr_capture",
        *(
            statement.replace(f"bench.{table}_fn()", f"idxr.idxr_capture({args})")
            for statement in statement_triggers(table, f"{table}_fn")
        ),
    ]


def c_rowdel(table: str) -> list[str]:
    """PROTOTYPE (bench/c_delete_rows, built and installed by hand as root): ``c`` with DELETE
    captured by a BEFORE ROW trigger collecting the keys in the backend and an AFTER STATEMENT
    trigger without a transition table queuing them."""
    args = f"'{table}', 'bench.{table}', 'nu', 'id', 'id,title,body,status,n'"
    lib = "'$libdir/idxr_capture_rows'"
    return [
        *(s for s in c_function(table) if "AFTER DELETE" not in s),
        "CREATE OR REPLACE FUNCTION idxr.idxr_capture_collect() RETURNS trigger"
        f" LANGUAGE c AS {lib}, 'idxr_capture_collect'",
        "CREATE OR REPLACE FUNCTION idxr.idxr_capture_flush() RETURNS trigger"
        f" LANGUAGE c AS {lib}, 'idxr_capture_flush'",
        f"CREATE TRIGGER ab_delete_rows BEFORE DELETE ON bench.{table} FOR EACH ROW"
        f" EXECUTE FUNCTION idxr.idxr_capture_collect({args})",
        f"CREATE TRIGGER ab_delete AFTER DELETE ON bench.{table} FOR EACH STATEMENT"
        f" EXECUTE FUNCTION idxr.idxr_capture_flush({args})",
    ]


VARIANTS = {
    "plain": lambda t: [],
    "installed": None,  # idxr-pg's own install, plpgsql
    "default": None,  # idxr-pg's own install, default path (C where the server has it)
    "noop_tt": lambda t: noop(t, True),
    "noop": lambda t: noop(t, False),
    "noop_plain": lambda t: noop(t, True, secdef=False),
    "collect": collect,
    "lean": lean,
    "lean_plain": lambda t: lean(t, secdef=False),
    "row": row_level,
    "lean_nowake": lambda t: lean(t, wake=False),
    "lean_noconflict": lambda t: lean(t, conflict=False),
    "fold": fold,
    "fold_join": lambda t: fold(t, JOINED),
    "c": c_function,
    "c_rowdel": c_rowdel,
}


def prepare(url: str, variants: list[str]) -> None:
    migrations.upgrade(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA bench")
        for name in variants:
            conn.execute(cap.ITEMS_DDL.format(name=name))
            conn.execute(cap.FILL.format(name=name), {"first": 1, "last": cap.TABLE_ROWS})
            conn.execute(f"SELECT setval(pg_get_serial_sequence('bench.{name}', 'id'), 100000)")
            if name in ("installed", "default"):
                kinds = [cap.entity(name, name)]
                capture.install_triggers(
                    conn,
                    parse_config({"entities": kinds}, "ab").entities,
                    language="plpgsql" if name == "installed" else "auto",
                )
            else:
                for statement in VARIANTS[name](name):
                    conn.execute(statement)
            conn.execute(f"VACUUM ANALYZE bench.{name}")


def ratios(values: dict[str, list[float]], name: str) -> float:
    return statistics.median(v / p for v, p in zip(values[name], values["plain"], strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_database_url(parser)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--clients", default="1")
    parser.add_argument("--operations", default="insert,update")
    parser.add_argument("--variants", default=",".join(v for v in VARIANTS if v != "plain"))
    parser.add_argument("--bulk", action="store_true", help="10k-row statements instead")
    parser.add_argument("--drop-ready", action="store_true", help="drop idxr.queue_ready first")
    parser.add_argument(
        "--cpu",
        type=int,
        default=0,
        metavar="N",
        help="instead of pgbench: N one-row transactions per run from one client, and the "
        "server backend's own CPU time per transaction (/proc/PID/schedstat; insensitive to "
        "other load on the machine)",
    )
    args = parser.parse_args()
    variants = ["plain"] + [v for v in args.variants.split(",") if v and v != "plain"]
    pgbench = cap.find_pgbench()
    with cap.bench_database(args.database_url, False) as url:
        prepare(url, variants)
        if args.drop_ready:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("DROP INDEX IF EXISTS idxr.queue_ready")
        print(f"load average at start: {os.getloadavg()}")
        if args.bulk:
            bulk(url, args, variants)
            return
        if args.cpu:
            cpu(url, args, variants)
            return
        for operation in args.operations.split(","):
            for clients in (int(c) for c in args.clients.split(",")):
                tps: dict[str, list[float]] = {v: [] for v in variants}
                for round_no in range(args.rounds):
                    for name in cap.rotated(tuple(variants), round_no):
                        cap.reset(url)
                        script = cap.SCRIPTS[operation].replace("{table}", name)
                        tps[name].append(
                            cap.pgbench_tps(pgbench, url, script, clients, args.seconds, "on")
                        )
                line = "  ".join(f"{v} {ratios(tps, v):.2f}" for v in variants if v != "plain")
                plain = statistics.median(tps["plain"])
                print(f"1-row {operation} c={clients}: plain {plain:.0f} tps  {line}", flush=True)
        print(f"load average at end: {os.getloadavg()}")


def backend_cpu_ns(pid: int) -> int:
    """CPU time the server process has run, in ns (first field of /proc/PID/schedstat)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


def cpu(url: str, args: argparse.Namespace, variants: list[str]) -> None:
    """Backend CPU per one-row transaction, per variant: median of the rounds; the delta to
    plain is what the trigger costs each write."""
    statements = {
        "insert": "INSERT INTO bench.{t} (title, body, status) VALUES ('new', 'a new line', 'new')",
        "update": "UPDATE bench.{t} SET n = n + 1 WHERE id = %s",
        "delete": "DELETE FROM bench.{t} WHERE id = %s",  # ids never repeat across rounds
    }
    for operation in args.operations.split(","):
        us: dict[str, list[float]] = {v: [] for v in variants}
        for round_no in range(args.rounds):
            for name in cap.rotated(tuple(variants), round_no):
                cap.reset(url)
                statement = statements[operation].format(t=name)
                with psycopg.connect(url, autocommit=True) as conn:
                    pid = conn.info.backend_pid
                    first = round_no * (args.cpu + 200)
                    ids = [
                        (i * 7919) % cap.TABLE_ROWS + 1
                        for i in range(first, first + args.cpu + 200)
                    ]
                    for i in ids[:200]:  # warm: plans, caches
                        conn.execute(statement, [i] if "%s" in statement else None)
                    started = backend_cpu_ns(pid)
                    for i in ids[200:]:
                        conn.execute(statement, [i] if "%s" in statement else None)
                    us[name].append((backend_cpu_ns(pid) - started) / args.cpu / 1000)
        plain = statistics.median(us["plain"])
        line = "  ".join(
            f"{v} +{statistics.median(us[v]) - plain:.1f}" for v in variants if v != "plain"
        )
        print(f"backend CPU per 1-row {operation}: plain {plain:.1f} us;  {line}", flush=True)
    print(f"load average at end: {os.getloadavg()}")


def bulk(url: str, args: argparse.Namespace, variants: list[str]) -> None:
    first, last = -cap.BULK_ROWS, -1
    statements = {
        "insert": cap.FILL.replace("%(first)s", str(first)).replace("%(last)s", str(last)),
        "update": f"UPDATE bench.{{name}} SET body = body || '.' WHERE id BETWEEN {first} AND {last}",
        "delete": f"DELETE FROM bench.{{name}} WHERE id BETWEEN {first} AND {last}",
    }
    rates = {op: {v: [] for v in variants} for op in statements}
    with psycopg.connect(url, autocommit=True) as conn:
        for round_no in range(args.rounds):
            for name in cap.rotated(tuple(variants), round_no):
                cap.reset(url)
                for operation, statement in statements.items():
                    elapsed = cap.timed(conn, statement.format(name=name))
                    rates[operation][name].append(cap.BULK_ROWS / elapsed)
    for operation, values in rates.items():
        line = "  ".join(f"{v} {ratios(values, v):.2f}" for v in variants if v != "plain")
        print(f"10k {operation}: plain {statistics.median(values['plain']):.0f} rows/s  {line}")
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
