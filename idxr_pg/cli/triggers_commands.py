"""`idxr-pg triggers install|drop|sql|list`: the capture triggers on watched tables."""

from __future__ import annotations

from collections.abc import Sequence

import click

from idxr_pg.capture import triggers as capture
from idxr_pg.capture.drift import FIX, Drift, config_drift
from idxr_pg.cli.context import AppContext, pass_app
from idxr_pg.cli.format import print_json
from idxr_pg.cli.options import allow_superuser_flag, json_flag, kinds_option
from idxr_pg.config import EntityConfig
from idxr_pg.db.capture import C_FUNCTION
from idxr_pg.db.connection import redact
from idxr_pg.runtime.superuser import refuse_superuser

KIND_OPTION = kinds_option("Only this entity kind (repeatable) [default: every kind].")
ALWAYS_OPTION = click.option(
    "--always/--no-always",
    "always",
    default=None,
    help="For a logical-replication subscriber: --always makes the capture triggers ENABLE "
    "ALWAYS and adds row-level REPLICA-only triggers, so rows a subscription applies are "
    "indexed; --no-always removes that. Sticky: without either flag each kind keeps what it "
    "has [default: keep; ORIGIN-only for a first install].",
)


LANGUAGE_OPTION = click.option(
    "--language",
    type=click.Choice(capture.LANGUAGES),
    default=None,
    help="What the triggers call: c, the C capture trigger (extension idxr_capture, created "
    "in schema idxr: built by `idxr-pg doctor --install-missing`); plpgsql, a function per "
    "table; auto, c for every table it covers (not key expressions, not --always) when the "
    f"server has it, else plpgsql [default: ${capture.LANGUAGE_ENV} or auto].",
)


def _entities(app: AppContext, kinds: Sequence[str]) -> list[EntityConfig]:
    config = app.config
    return [config.entity(k) for k in kinds] if kinds else list(config.entities)


@click.group()
def triggers() -> None:
    """Capture triggers: writes to watched tables enqueue the changed entity keys.

    For every configured entity kind, its main table and each `watch` table get four
    statement-level AFTER triggers (INSERT, UPDATE, DELETE, TRUNCATE) calling the C capture
    trigger idxr.idxr_capture() where the server has it, else one SECURITY DEFINER plpgsql
    function in the idxr schema. `idxr-pg uninstall` removes them all with the idxr schema.
    """


@triggers.command()
@KIND_OPTION
@ALWAYS_OPTION
@LANGUAGE_OPTION
@allow_superuser_flag
@pass_app
def install(
    app: AppContext, kinds: tuple[str, ...], always: bool | None, language: str | None
) -> None:
    """Create or replace the capture triggers of the configured kinds (one transaction).

    Safe to run again. Tables, key columns, key expressions and `columns` are checked first;
    on any error nothing changes. Triggers a kind had on a table it no longer reads are
    dropped; kinds missing from the config are left alone (see `triggers drop --kind`).

    On a logical-replication subscriber, install with --always: the subscription's apply
    worker runs with session_replication_role = replica, where ordinary triggers do not fire
    (and statement-level ones never do, but for TRUNCATE). The choice sticks until --no-always.

    Each table is reported with what its triggers call: the C capture trigger where the
    server has it (a third of the plpgsql function's cost per write), else plpgsql and why.
    Running install again moves tables installed with plpgsql to the C trigger.
    """
    entities = _entities(app, kinds)
    if not entities:
        click.echo("no entity kinds configured: nothing to install")
        return
    with app.db(autocommit=False, vector=False) as conn:
        refuse_superuser(conn, "install capture triggers")  # they run as their installer
        plan = capture.install_triggers(conn, entities, always, language)
        others = sorted(
            {c.entity_kind for c in capture.installed_captures(conn)}
            - {e.name for e in app.config.entities}
        )
    for stale in plan.stale:
        click.echo(f"dropped {stale.entity_kind} on {stale.source_table} (no longer watched)")
    for planned in plan.captures:
        if planned.language == "c":
            how = f"C: idxr.{C_FUNCTION}"
        else:
            why = f"; C not used: {planned.plpgsql_reason}" if planned.plpgsql_reason else ""
            how = f"plpgsql: idxr.{planned.function_name}{why}"
        click.echo(
            f"installed {planned.target.kind} on {planned.table.qualified} ({how}"
            + (
                ", ALWAYS: also captures rows applied by logical replication)"
                if planned.always
                else ")"
            )
        )
    if others:
        click.echo(
            f"note: triggers of kinds not in the config remain: {', '.join(others)} "
            "(remove with `idxr-pg triggers drop --kind KIND`)"
        )
    click.echo(f"capture triggers ready in {redact(app.database_url)}")


@triggers.command()
@KIND_OPTION
@pass_app
def drop(app: AppContext, kinds: tuple[str, ...]) -> None:
    """Drop the capture triggers idxr-pg installed (all, or those of --kind).

    Uses the record in idxr.capture_triggers, not the config, so it also removes the triggers
    of kinds since deleted from the config. Application tables and rows are untouched.
    """
    with app.db(autocommit=False, vector=False) as conn:
        dropped = capture.drop_triggers(conn, kinds or None)
    for item in dropped:
        click.echo(f"dropped {item.entity_kind} on {item.source_table}")
    if not dropped:
        click.echo("no capture triggers installed" + (f" for {', '.join(kinds)}" if kinds else ""))


@triggers.command(name="sql")
@KIND_OPTION
@ALWAYS_OPTION
@LANGUAGE_OPTION
@click.option("--drop", "for_drop", is_flag=True, help="Print the DDL of `triggers drop` instead.")
@pass_app
def sql_command(
    app: AppContext,
    kinds: tuple[str, ...],
    always: bool | None,
    language: str | None,
    for_drop: bool,
) -> None:
    """Print the DDL `triggers install` would run (a psql script; nothing is changed).

    Needs the database: tables are resolved and checked against it first.
    """
    with app.db(autocommit=False, vector=False) as conn:
        if for_drop:
            statements = capture.drop_ddl(capture.installed_captures(conn, kinds or None))
        else:
            plan = capture.plan_install(conn, _entities(app, kinds), always, language)
            statements = capture.install_ddl(plan)
        script = capture.render_script(conn, statements)
        conn.rollback()
    click.echo(script, nl=False)


@triggers.command(name="list")
@KIND_OPTION
@json_flag("Print JSON instead of a table.")
@pass_app
def list_command(app: AppContext, kinds: tuple[str, ...], as_json: bool) -> None:
    """Show the installed capture triggers and whether every table still has all four.

    A partition created or attached after the install is reported as missing until
    `triggers install` runs again. The last column is how they fire: `origin` (ordinary
    writes only), `always` (installed with --always: rows applied by logical replication
    too), or `mixed` (changed by hand, or partly installed: run `triggers install`). The
    third column is what the triggers call: `idxr.idxr_capture (c)`, the C capture trigger,
    or the table's `idxr.capture_... (plpgsql)` function.

    Then the config is compared with what the triggers were installed from: a table, key,
    watch entry or `columns` list that differs is named (`drift:` lines; in JSON, each
    capture's `config_drift`, and the rest on stderr): run `triggers install` again.
    """
    entities = [e for e in app.config.entities if not kinds or e.name in kinds]
    with app.db(autocommit=False, vector=False) as conn:
        captures = capture.installed_captures(conn, kinds or None)
        drifts = config_drift(conn, entities) if entities else []
        conn.rollback()
    if as_json:
        placed: set[Drift] = set()
        items = []
        for c in captures:
            mine = [
                d for d in drifts if (d.entity_kind, d.table) == (c.entity_kind, c.source_table)
            ]
            placed.update(mine)
            items.append(
                {
                    **c.__dict__,
                    "complete": c.complete,
                    "always": c.always,
                    "firing": _firing(c),
                    "language": c.language,
                    "config_drift": [d.what for d in mine],
                }
            )
        print_json(items)
        for drift in drifts:
            if drift not in placed:
                click.echo(f"drift: {drift.message()}: {FIX}", err=True)
        return
    for c in captures:
        if c.complete:
            state = "ok"
        elif c.uncovered:
            state = f"missing on {', '.join(c.uncovered)}: run `idxr-pg triggers install`"
        else:
            state = f"{len(c.triggers)}/4 triggers: run `idxr-pg triggers install`"
        called = C_FUNCTION if c.language == "c" else c.function_name
        click.echo(
            f"{c.entity_kind}\t{c.source_table}\tidxr.{called} ({c.language})\t{state}\t"
            f"{_firing(c)}"
        )
    if not captures:
        click.echo("no capture triggers installed")
    for drift in drifts:
        click.echo(f"drift: {drift.message()}: {FIX}")


def _firing(c: capture.InstalledCapture) -> str:
    if c.always:
        return "always"
    return "origin" if c.firing in ((), ("O",)) and not c.replica else "mixed"


COMMANDS = [triggers]
