"""`idxr-pg errors list|show|retry`: entities parked as dead letters."""

from __future__ import annotations

import click

from idxr_pg.cli.context import AppContext, pass_app
from idxr_pg.cli.format import print_listing, when
from idxr_pg.cli.options import count_option, json_flag
from idxr_pg.db.dead_letters import (
    DeadLetter,
    get_dead_letter,
    list_dead_letters,
    retry_dead_letters,
)
from idxr_pg.errors import IdxrError

ERROR_WIDTH = 80

LIST_COLUMNS = ("id", "kind", "entity", "stage", "error", "attempts", "last failure", "retried")


def _letter_row(letter: DeadLetter) -> list[object]:
    message = letter.error_message.splitlines()[0] if letter.error_message else ""
    return [
        letter.id,
        letter.entity_kind,
        letter.entity_id,
        letter.stage,
        f"{letter.error_type.rsplit('.', 1)[-1]}: {message}"[:ERROR_WIDTH],
        letter.attempts,
        when(letter.last_failed_at),
        when(letter.retried_at) if letter.retried_at else "",
    ]


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
@count_option("--limit", click.IntRange(1), 100, "Newest N only.")
@json_flag("Print JSON instead of a table.")
@pass_app
def errors_list(
    app: AppContext, kind: str | None, include_retried: bool, limit: int, as_json: bool
) -> None:
    """List dead letters, newest first (by default those not yet retried)."""
    with app.db(vector=False) as conn:
        letters = list_dead_letters(conn, kind=kind, include_retried=include_retried, limit=limit)
    print_listing(
        letters,
        as_json=as_json,
        to_json=DeadLetter.summary,
        empty="no dead letters",
        columns=LIST_COLUMNS,
        to_row=_letter_row,
    )


@errors.command("show")
@click.argument("dead_letter_id", metavar="ID", type=int)
@pass_app
def errors_show(app: AppContext, dead_letter_id: int) -> None:
    """Print one dead letter's YAML payload (error, traceback, attempts, document)."""
    with app.db(vector=False) as conn:
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
    with app.db(vector=False) as conn:
        letters = retry_dead_letters(conn, None if retry_all else list(ids), kind=kind)
    missing = sorted(set(ids) - {letter.id for letter in letters})
    for letter in letters:
        click.echo(f"re-queued {letter.entity_kind}:{letter.entity_id} (dead letter {letter.id})")
    if missing:
        raise IdxrError(f"no dead letter with id {', '.join(map(str, missing))}")
    if not letters:
        click.echo("nothing to retry")


COMMANDS = [errors]
