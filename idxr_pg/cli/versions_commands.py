"""`idxr-pg versions list|create|activate|rollback|drop`: index versions per entity kind."""

from __future__ import annotations

import sys

import click

from idxr_pg.cli.context import AppContext, pass_app
from idxr_pg.cli.format import format_duration, print_json, print_listing, when
from idxr_pg.cli.options import batch_size_option, json_flag, progress_interval_option
from idxr_pg.config import DEFAULT_BACKFILL_BATCH_SIZE
from idxr_pg.db.versions import IndexVersion


@click.group()
def versions() -> None:
    """Index versions: change a kind's embedding model without downtime.

    Each entity kind has one active version (what idxr.search_index holds and search reads),
    and may have one being built and retired ones kept for rollback. `create` builds a new
    version with another model while the active one keeps serving; the worker writes
    application changes to both; `activate` switches in one transaction; `rollback` goes back;
    `drop` removes a version that is not active. SQL users read the registry as idxr.versions.
    """


def _coverage(version: IndexVersion) -> str:
    if version.state == "building" and version.build_state != "succeeded":
        done, total = version.build_done, version.build_total
        if done is not None and total:
            return f"{done:,}/{total:,} ({100 * done / total:.0f}%, {version.build_state})"
        return version.build_state or "not started"
    return "-" if version.coverage is None else f"{100 * version.coverage:.1f}%"


@versions.command("list")
@click.argument("kind", required=False)
@json_flag("Print the versions as a JSON list.")
@pass_app
def list_(app: AppContext, kind: str | None, as_json: bool) -> None:
    """The index versions of every kind (or KIND): state, model, size, build stats."""
    from idxr_pg.db import versions as versions_db

    with app.db() as conn:
        found = versions_db.list_versions(conn, kind)
    print_listing(
        found,
        as_json=as_json,
        to_json=IndexVersion.as_dict,
        empty="no index versions yet (a kind gets version 1 when a worker or backfill "
        "first registers it)",
        columns=[
            "kind",
            "version",
            "state",
            "model",
            "dims",
            "backend",
            "texts",
            "build",
            "coverage",
            "activated",
        ],  # fmt: skip
        to_row=lambda v: (
            v.entity_kind,
            v.version,
            v.state,
            v.model_name,
            v.dimensions,
            "/".join(p for p in (v.backend, v.precision) if p) or "-",
            f"{v.texts:,}",
            "-" if v.build_seconds is None else format_duration(v.build_seconds),
            _coverage(v),
            when(v.activated_at),
        ),
    )


@versions.command()
@click.argument("kind")
@click.option(
    "--model",
    required=True,
    help="The new version's embedding model: a name (the bundled 'all-MiniLM-L6-v2', "
    "'all-mpnet-base-v2' once `make second-model` assembled it) or a local "
    "sentence-transformers directory. Running the command again with the same model resumes "
    "a build that was stopped or killed.",
)
@batch_size_option(
    f"Entities per pipeline batch and per checkpoint [default: backfill.batch_size, "
    f"{DEFAULT_BACKFILL_BATCH_SIZE}]."
)
@progress_interval_option
@json_flag("Print the built version as JSON.")
@pass_app
def create(
    app: AppContext,
    kind: str,
    model: str,
    batch_size: int | None,
    progress_interval: float,
    as_json: bool,
) -> None:
    """Build a new index version of KIND with --model, while the active one keeps serving.

    Streams every entity of KIND through the pipeline with the new model into the new
    version (state building) as a job with a checkpoint, progress and ETA (`idxr-pg jobs`);
    search keeps reading the active version, and the worker writes application changes to
    both. Stopped (Ctrl-C) or killed, the active version is untouched: run the same command
    again to resume. Then `idxr-pg versions activate KIND V`.
    """
    from idxr_pg.runtime.signals import StopRequest, stop_on_signals
    from idxr_pg.runtime.versions import BuildInterrupted, BuildOptions, VersionBuild

    stop = StopRequest()
    build = VersionBuild(
        app.database_url,
        app.config,
        kind,
        model,
        BuildOptions(
            batch_size=batch_size or app.config.backfill.batch_size,
            progress_interval=progress_interval,
        ),
        should_stop=stop,
    )
    try:
        with stop_on_signals(stop):
            version = build.run()
    except BuildInterrupted as exc:
        click.echo(str(exc), err=True)
        sys.exit(stop.exit_code)
    if as_json:
        print_json(version.as_dict())
        return
    click.echo(
        f"version {version.version} of {kind} built with {version.model_name} "
        f"({version.dimensions} dimensions): {version.texts:,} texts embedded in "
        f"{format_duration(version.build_seconds or 0.0)}, coverage {_coverage(version)}"
    )
    click.echo(f"activate it with: idxr-pg versions activate {kind} {version.version}")


def _switched(kind: str, previous: int | None, active: IndexVersion, as_json: bool) -> None:
    if as_json:
        print_json({"previous": previous, "active": active.as_dict()})
        return
    click.echo(
        f"{kind}: version {active.version} ({active.model_name}, {active.dimensions} "
        f"dimensions) is active"
        + (f"; version {previous} is retired (kept for rollback)" if previous else "")
    )


@versions.command()
@click.argument("kind")
@click.argument("version", type=click.IntRange(min=1))
@json_flag("Print the switch as JSON.")
@pass_app
def activate(app: AppContext, kind: str, version: int, as_json: bool) -> None:
    """Make VERSION of KIND the active one, in one transaction.

    Entities changed since they were written into VERSION are re-run first (with VERSION's
    model); then the kind's rows are swapped in one transaction: a search sees either the
    old version or the new one, never a mix, and index writes wait for the switch only. The
    previous version is retired and kept for `idxr-pg versions rollback`.
    """
    from idxr_pg.runtime.versions import switch

    previous, active = switch(app.database_url, app.config, kind, version)
    _switched(kind, previous, active, as_json)


@versions.command()
@click.argument("kind")
@json_flag("Print the switch as JSON.")
@pass_app
def rollback(app: AppContext, kind: str, as_json: bool) -> None:
    """Re-activate the version of KIND that was active before (while it is kept)."""
    from idxr_pg.db import versions as versions_db
    from idxr_pg.db.versions import VersionError
    from idxr_pg.runtime.versions import switch

    with app.db() as conn:
        retired = [v for v in versions_db.list_versions(conn, kind) if v.state == "retired"]
    if not retired:
        raise VersionError(
            f"entity kind {kind!r} has no retired version to roll back to "
            "(`idxr-pg versions list` shows its versions)"
        )
    target = max(retired, key=lambda v: (v.retired_at is not None, v.retired_at, v.version))
    previous, active = switch(app.database_url, app.config, kind, target.version)
    _switched(kind, previous, active, as_json)


@versions.command()
@click.argument("kind")
@click.argument("version", type=click.IntRange(min=1))
@pass_app
def drop(app: AppContext, kind: str, version: int) -> None:
    """Remove VERSION of KIND (building or retired; never the active one) with its rows.
    A version whose build is running is refused: stop the build first."""
    from idxr_pg.db import versions as versions_db

    with app.db() as conn, conn.transaction():
        dropped = versions_db.drop_version(conn, kind, version)
    click.echo(f"{kind}: version {version} ({dropped.state}, {dropped.model_name}) dropped")


COMMANDS = [versions]
