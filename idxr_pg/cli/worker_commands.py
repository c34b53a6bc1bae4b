"""`idxr-pg worker` and `idxr-pg refresh KIND`: processing the queue."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import click

from idxr_pg.cli.context import AppContext, pass_app
from idxr_pg.cli.options import allow_superuser_flag, batch_size_option, kinds_option
from idxr_pg.errors import IdxrError
from idxr_pg.runtime.signals import StopRequest, stop_on_signals

if TYPE_CHECKING:
    from idxr_pg.records.counts import Counts
    from idxr_pg.runtime.worker import Worker

BATCH_SIZE_HELP = "Entities per batch [default: worker.batch_size from the config, 64]."


def _worker(app: AppContext, kinds: tuple[str, ...], **overrides: object) -> Worker:
    from idxr_pg.runtime.worker import Worker

    config = app.config
    if not config.entities:
        raise IdxrError("no entity kinds configured: add `entities:` to the config file")
    settings = config.worker.model_copy(
        update={k: v for k, v in overrides.items() if v is not None}
    )
    return Worker(app.database_url, config, kinds=list(kinds) or None, settings=settings)


def _summary(totals: Counts) -> str:
    return (
        f"{totals.entities} entities: {totals.indexed} indexed, {totals.unchanged} unchanged, "
        f"{totals.deleted} deleted, {totals.failed} failed ({totals.dead_lettered} dead-lettered), "
        f"{totals.texts_embedded} texts embedded, {totals.records_written} records written, "
        f"{totals.records_deleted} removed"
    )


def _run_until_signalled(w: Worker, work: Callable[[], Counts]) -> Counts:
    """Run ``work``; the first SIGINT/SIGTERM stops it after the current batch, a second one
    at once (the leases are released on the way out, else they expire): exit 128 + signum."""
    stop = StopRequest(on_stop=w.stop)
    try:
        with stop_on_signals(stop):
            return work()
    except KeyboardInterrupt:
        click.echo(f"worker stopped mid-batch: {_summary(w.totals)}", err=True)
        sys.exit(stop.exit_code)


@click.command()
@click.option(
    "--once",
    is_flag=True,
    help="Drain the ready queue (on_change and 'every' kinds) and exit 0 instead of running on.",
)
@batch_size_option(BATCH_SIZE_HELP)
@click.option(
    "--poll-interval",
    type=click.FloatRange(min=0.05),
    default=None,
    help="Seconds between queue polls when no NOTIFY arrives [default: worker.poll_interval, 5].",
)
@click.option(
    "--connect-timeout",
    "give_up_after_seconds",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="With --once: exit 1 when the database stays unreachable this many seconds "
    "[default: worker.give_up_after_seconds, 60]. Without --once the worker retries forever.",
)
@kinds_option("Serve only this entity kind (repeatable) [default: every configured kind].")
@allow_superuser_flag
@pass_app
def worker(
    app: AppContext,
    once: bool,
    batch_size: int | None,
    poll_interval: float | None,
    give_up_after_seconds: float | None,
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
    w = _worker(
        app,
        kinds,
        batch_size=batch_size,
        poll_interval=poll_interval,
        give_up_after_seconds=give_up_after_seconds,
    )
    totals = _run_until_signalled(w, w.drain if once else w.run)
    click.echo(_summary(totals))


@click.command()
@click.argument("kind")
@batch_size_option(BATCH_SIZE_HELP)
@allow_superuser_flag
@pass_app
def refresh(app: AppContext, kind: str, batch_size: int | None) -> None:
    """Process KIND's queued changes now, whatever its refresh policy, then exit.

    The way to bring a `refresh: manual` kind up to date. Changes in retry backoff, or of
    entities another worker is processing right now, are left queued.
    """
    w = _worker(app, (kind,), batch_size=batch_size)
    totals = _run_until_signalled(w, lambda: w.drain([kind]))
    click.echo(f"{kind}: {_summary(totals)}")


COMMANDS = [worker, refresh]
