"""`idxr-pg worker`, `idxr-pg refresh KIND` and `idxr-pg errors list|show|retry`."""

from __future__ import annotations

import click

from idxr_pg.cli.context import AppContext, pass_app, print_json
from idxr_pg.db.connection import connect
from idxr_pg.errors import IdxrError
from idxr_pg.indexing.failures import get_dead_letter, list_dead_letters, retry_dead_letters


def _worker(app: AppContext, kinds: tuple[str, ...], **overrides: object):
    from idxr_pg.runtime.worker import Worker

    config = app.config
    if not config.entities:
        raise IdxrError("no entity kinds configured: add `entities:` to the config file")
    settings = config.worker.model_copy(
        update={k: v for k, v in overrides.items() if v is not None}
    )
    return Worker(app.database_url, config, kinds=list(kinds) or None, settings=settings)


def _summary(totals) -> str:
    return (
        f"{totals.entities} entities: {totals.indexed} indexed, {totals.unchanged} unchanged, "
        f"{totals.deleted} deleted, {totals.failed} failed ({totals.dead_lettered} dead-lettered), "
        f"{totals.texts_embedded} texts embedded, {totals.records_written} records written, "
        f"{totals.records_deleted} removed"
    )


@click.command()
@click.option(
    "--once",
    is_flag=True,
    help="Drain the ready queue (on_change and 'every' kinds) and exit 0 instead of running on.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 10_000),
    default=None,
    help="Entities per batch [default: worker.batch_size from the config, 64].",
)
@click.option(
    "--poll-interval",
    type=click.FloatRange(min=0.05),
    default=None,
    help="Seconds between queue polls when no NOTIFY arrives [default: worker.poll_interval, 5].",
)
@click.option(
    "--kind",
    "kinds",
    multiple=True,
    metavar="KIND",
    help="Serve only this entity kind (repeatable) [default: every configured kind].",
)
@pass_app
def worker(
    app: AppContext,
    once: bool,
    batch_size: int | None,
    poll_interval: float | None,
    kinds: tuple[str, ...],
) -> None:
    """Keep idxr.search_index in sync with the watched tables.

    Listens on the idxr_queue channel (and polls every --poll-interval seconds), claims
    batches of changed entities, re-embeds only changed fields and upserts them. Run as many
    workers as you like: leases keep one entity with one worker at a time. Kinds with
    `refresh: manual` are left to `idxr-pg refresh KIND`; `every <interval>` kinds are
    processed at most once per interval. SIGTERM or Ctrl-C finishes the current batch and
    exits 0; a lost database connection is retried until it comes back.
    """
    w = _worker(app, kinds, batch_size=batch_size, poll_interval=poll_interval)
    w.install_signal_handlers()
    totals = w.drain() if once else w.run()
    click.echo(_summary(totals))


@click.command()
@click.argument("kind")
@click.option(
    "--batch-size",
    type=click.IntRange(1, 10_000),
    default=None,
    help="Entities per batch [default: worker.batch_size from the config, 64].",
)
@pass_app
def refresh(app: AppContext, kind: str, batch_size: int | None) -> None:
    """Process KIND's queued changes now, whatever its refresh policy, then exit.

    The way to bring a `refresh: manual` kind up to date. Changes in retry backoff, or of
    entities another worker is processing right now, are left queued.
    """
    w = _worker(app, (kind,), batch_size=batch_size)
    w.install_signal_handlers()
    totals = w.drain([kind])
    click.echo(f"{kind}: {_summary(totals)}")


@click.group()
def errors() -> None:
    """Entities that kept failing (dead letters): list, show, retry.

    An entity that fails (document loader, model validation, flattening, embedding, write) is
    retried with exponential backoff up to worker.max_attempts times, then parked in
    idxr.dead_letters with a YAML payload: error, traceback, attempts, the document.
    """


@errors.command("list")
@click.option("--kind", default=None, metavar="KIND", help="Only dead letters of this kind.")
@click.option(
    "--all", "include_retried", is_flag=True, help="Include dead letters already retried."
)
@click.option(
    "--limit", type=click.IntRange(1), default=100, show_default=True, help="Newest N only."
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_app
def errors_list(
    app: AppContext, kind: str | None, include_retried: bool, limit: int, as_json: bool
) -> None:
    """List dead letters, newest first (by default those not yet retried)."""
    with connect(app.database_url, autocommit=True, vector=False) as conn:
        letters = list_dead_letters(conn, kind=kind, include_retried=include_retried, limit=limit)
    if as_json:
        print_json([letter.summary() for letter in letters])
        return
    if not letters:
        click.echo("no dead letters")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for column in ("id", "kind", "entity", "stage", "error", "attempts", "last failure", "retried"):
        table.add_column(column)
    for letter in letters:
        message = letter.error_message.splitlines()[0] if letter.error_message else ""
        table.add_row(
            str(letter.id),
            letter.entity_kind,
            letter.entity_id,
            letter.stage,
            f"{letter.error_type.rsplit('.', 1)[-1]}: {message}"[:80],
            str(letter.attempts),
            letter.last_failed_at.strftime("%Y-%m-%d %H:%M:%S"),
            letter.retried_at.strftime("%Y-%m-%d %H:%M:%S") if letter.retried_at else "",
        )
    Console(width=200).print(table)


@errors.command("show")
@click.argument("dead_letter_id", metavar="ID", type=int)
@pass_app
def errors_show(app: AppContext, dead_letter_id: int) -> None:
    """Print one dead letter's YAML payload (error, traceback, attempts, document)."""
    with connect(app.database_url, autocommit=True, vector=False) as conn:
        letter = get_dead_letter(conn, dead_letter_id)
    if letter is None:
        raise IdxrError(f"no dead letter with id {dead_letter_id} (see `idxr-pg errors list`)")
    click.echo(letter.payload, nl=not letter.payload.endswith("\n"))


@errors.command("retry")
@click.argument("ids", metavar="[ID]...", nargs=-1, type=int)
@click.option("--all", "retry_all", is_flag=True, help="Retry every dead letter not yet retried.")
@click.option("--kind", default=None, metavar="KIND", help="With --all: only this kind.")
@pass_app
def errors_retry(app: AppContext, ids: tuple[int, ...], retry_all: bool, kind: str | None) -> None:
    """Re-queue dead-lettered entities (fix the data first); a running worker picks them up.

    The entity gets a fresh queue row with its attempts counted from zero; the dead letter is
    kept and marked retried. Give IDs, or --all.
    """
    if bool(ids) == retry_all:
        raise click.UsageError("give dead letter IDs or --all (not both)")
    if kind and not retry_all:
        raise click.UsageError("--kind goes with --all")
    with connect(app.database_url, autocommit=True, vector=False) as conn:
        letters = retry_dead_letters(conn, None if retry_all else list(ids), kind=kind)
    missing = sorted(set(ids) - {letter.id for letter in letters})
    for letter in letters:
        click.echo(f"re-queued {letter.entity_kind}:{letter.entity_id} (dead letter {letter.id})")
    if missing:
        raise IdxrError(f"no dead letter with id {', '.join(map(str, missing))}")
    if not letters:
        click.echo("nothing to retry")


COMMANDS = [worker, refresh, errors]
