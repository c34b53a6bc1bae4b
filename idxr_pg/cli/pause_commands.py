"""`idxr-pg pause KIND` and `idxr-pg resume KIND`: hold a kind's processing, keep capturing."""

from __future__ import annotations

import click

from idxr_pg.cli.context import AppContext, pass_app
from idxr_pg.cli.format import when
from idxr_pg.db.kinds import pause_kind, resume_kind


@click.command()
@click.argument("kind")
@pass_app
def pause(app: AppContext, kind: str) -> None:
    """Pause KIND: its captured changes keep accumulating in the queue, but no worker claims or
    embeds them (`worker`, `worker --once` and `refresh KIND` leave them) until
    `idxr-pg resume KIND`. Takes effect at each worker's next batch; `idxr-pg status` shows it.
    """
    app.config.entity(kind)  # an unknown kind fails, naming the known ones
    with app.db() as conn:
        since, already = pause_kind(conn, kind)
    if already:
        click.echo(f"{kind} was already paused (since {when(since)})")
    else:
        click.echo(f"paused {kind}: changes accumulate until `idxr-pg resume {kind}`")


@click.command()
@click.argument("kind")
@pass_app
def resume(app: AppContext, kind: str) -> None:
    """Resume KIND after `idxr-pg pause KIND`: workers process what accumulated meanwhile."""
    app.config.entity(kind)
    with app.db() as conn:
        since = resume_kind(conn, kind)
    if since is None:
        click.echo(f"{kind} was not paused")
    else:
        click.echo(f"resumed {kind} (paused since {when(since)})")


COMMANDS = [pause, resume]
