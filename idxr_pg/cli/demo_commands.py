"""`idxr-pg demo`: the whole job end to end on sample data."""

from __future__ import annotations

import click

from idxr_pg.cli.context import AppContext, pass_app
from idxr_pg.cli.options import count_option


@click.command()
@count_option(
    "--subscriptions",
    click.IntRange(5, 100_000),
    300,
    "How many sample subscriptions the demo application starts with.",
)
@pass_app
def demo(app: AppContext, subscriptions: int) -> None:
    """Run idxr-pg's whole job on a sample application, in database idxr_demo.

    The database idxr_demo (on the server of --database-url) is dropped and recreated. The
    demo creates an application schema (customers, products, subscriptions, product blocks),
    installs idxr-pg (migrations, capture triggers), backfills with a progress bar, starts a
    worker, makes application writes with plain SQL and shows each becoming searchable (with
    the commit-to-searchable time and texts embedded), runs similarity searches in SQL and
    with the CLI, prints the status and stops the worker. Exits non-zero if any step does
    not behave as shown.
    """
    from idxr_pg.demo.run import run_demo

    run_demo(app.database_url, subscriptions)


COMMANDS = [demo]
