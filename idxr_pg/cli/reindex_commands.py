"""`idxr-pg plan KIND` and `idxr-pg reindex KIND`: bringing a kind's index to a changed model."""

from __future__ import annotations

import click

from idxr_pg.cli.backfill_commands import run_backfill
from idxr_pg.cli.context import AppContext, pass_app
from idxr_pg.cli.format import format_duration, print_json
from idxr_pg.cli.options import (
    allow_superuser_flag,
    batch_size_option,
    json_flag,
    progress_interval_option,
)
from idxr_pg.config import DEFAULT_BACKFILL_BATCH_SIZE
from idxr_pg.db.catalog import idxr_installed
from idxr_pg.db.connection import DatabaseError, redact
from idxr_pg.indexing import schema_state
from idxr_pg.indexing.registry import resolve_kind
from idxr_pg.records.shape import ShapeChange


def _detect(app: AppContext, kind: str) -> ShapeChange | None:
    """What changed in KIND's model since its index was built (None: nothing)."""
    entity = app.config.entity(kind)
    with app.db() as conn:
        if not idxr_installed(conn):
            raise DatabaseError(
                f"{redact(app.database_url)} has no idxr schema: run `idxr-pg migrate`"
            )
        return schema_state.detect(conn, resolve_kind(conn, entity))


def _echo_plan(plan: object) -> None:
    from idxr_pg.runtime.plan import ReindexPlan

    assert isinstance(plan, ReindexPlan)
    change = plan.change
    click.echo(f"plan for {plan.kind} (dry run: nothing was written)")
    click.echo(
        f"  model change:   {change.summary() if change else 'none (the kind is up to date)'}"
    )
    for check in plan.renames:
        if not check.same_values + check.other_values:
            click.echo(f"  rename {check.old} -> {check.new}: no indexed record to check it on")
            continue
        verdict = "confirmed by the data" if check.confirmed else "NOT confirmed by the data"
        click.echo(
            f"  rename {check.old} -> {check.new}: {verdict} ({check.same_values:,} records "
            f"keep their value, {check.other_values:,} differ)"
        )
    click.echo(f"  source rows:    {plan.source_rows:,}")
    click.echo(
        f"  entities:       {plan.entities_to_add:,} to add, {plan.entities_to_update:,} to "
        f"update, {plan.entities_to_remove:,} to remove, {plan.entities_unchanged:,} unchanged"
        + (f", {plan.entities_failing:,} failing" if plan.entities_failing else "")
    )
    click.echo(f"  re-embed:       {plan.entities_to_reembed:,} entities")
    click.echo(
        f"  records:        {plan.records_to_add:,} to add, {plan.records_to_update:,} to "
        f"update, {plan.records_to_remove:,} to remove"
    )
    click.echo(
        f"  texts:          {plan.distinct_texts:,} distinct ({plan.texts:,} records): "
        f"{plan.texts_cached:,} already in the embedding cache, {plan.texts_to_embed:,} to embed"
    )
    rate = "-" if plan.texts_per_second is None else f"{plan.texts_per_second:,.1f} texts/s"
    click.echo(f"  rate:           {rate} ({plan.rate_source})")
    click.echo(
        f"  estimate:       {format_duration(plan.eta_seconds or 0.0)} (this scan took "
        f"{format_duration(plan.scan_seconds)}, plus the texts to embed at that rate)"
    )
    if plan.nothing_to_do:
        click.echo("  nothing to do: the index already holds every record of the current model")
    else:
        click.echo(f"  run it with:    idxr-pg reindex {plan.kind}")


@click.command()
@click.argument("kind")
@batch_size_option(
    f"Entities per batch, as the reindex would use [default: backfill.batch_size, "
    f"{DEFAULT_BACKFILL_BATCH_SIZE}]."
)
@json_flag("Print the plan as one JSON object.")
@pass_app
def plan(app: AppContext, kind: str, batch_size: int | None, as_json: bool) -> None:
    """Dry run of `idxr-pg reindex KIND`: what it would do, computed without writing anything.

    Shows what changed in the kind's model since its index was built (fields added, removed,
    renamed, retyped; a rename is checked against the stored values), then walks every
    entity as the reindex would (load, validate, flatten, diff against the stored hashes) and
    prints the entities and records to add, update and remove, the entities to re-embed, the
    distinct texts already in the embedding cache and those the model must compute, and an
    estimated time: this scan's own time plus the texts to embed at a rate measured now on a
    few of them (nothing is stored; with nothing to embed, the kind's last jobs' rate).
    """
    from idxr_pg.runtime.plan import plan_reindex

    _detect(app, kind)  # checks the schema and the kind first, with their own messages
    result = plan_reindex(app.database_url, app.config, kind, batch_size=batch_size)
    if as_json:
        print_json(result.as_dict())
    else:
        _echo_plan(result)


@click.command()
@click.argument("kind")
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the latest reindex (or backfill) of KIND after its checkpoint.",
)
@click.option(
    "--even-if-current",
    is_flag=True,
    help="Run even when the kind's recorded model matches (a full diffing pass, as a "
    "backfill without --force).",
)
@batch_size_option(
    f"Entities per pipeline batch and per checkpoint [default: backfill.batch_size, "
    f"{DEFAULT_BACKFILL_BATCH_SIZE}]."
)
@progress_interval_option
@json_flag("Print the finished job as JSON.")
@allow_superuser_flag
@pass_app
def reindex(
    app: AppContext,
    kind: str,
    resume: bool,
    even_if_current: bool,
    batch_size: int | None,
    progress_interval: float,
    as_json: bool,
) -> None:
    """Bring KIND's index to its changed model, writing and embedding only what changed.

    Streams every entity through the backfill's pipeline (a checkpointed job in idxr.jobs,
    resumable with --resume): each is flattened with the current model and diffed against
    its stored content hashes, so only the records that change are written (the others keep
    their rows and updated_at), stale paths are removed, and only texts that are not in the
    embedding cache are embedded. When no entity failed, the model's shape is recorded and
    the kind is no longer stale. `idxr-pg plan KIND` shows the same work first, without
    writing. With `on_schema_change: reindex` on the entity, the worker runs this at start.
    """
    from idxr_pg.runtime.backfill import BackfillOptions

    change = _detect(app, kind)
    if not change and not resume and not even_if_current:
        click.echo(
            f"{kind} is up to date: its model matches the one its index was built with "
            "(--even-if-current runs a full diffing pass anyway)"
        )
        return
    if change and not as_json:
        click.echo(f"reindexing {kind}: {change.summary()}")
    options = BackfillOptions(
        resume=resume,
        batch_size=batch_size or app.config.backfill.batch_size,
        progress_interval=progress_interval,
        bulk=False,
        reindex=True,
    )
    run_backfill(app, kind, options, as_json=as_json, command="reindex")
    if as_json:
        return
    left = _detect(app, kind)
    if left:
        click.echo(f"warning: {kind} is still stale ({left.summary()})", err=True)
    else:
        click.echo(f"{kind} now matches its model")


COMMANDS = [plan, reindex]
