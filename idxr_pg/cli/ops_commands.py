"""Operations: backfill, jobs, status, stale and init."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
import psycopg

from idxr_pg.cli.context import AppContext, pass_app, print_json
from idxr_pg.db.connection import DatabaseError, connect, redact
from idxr_pg.db.jobs import RUNNING, Job, list_jobs, reconcile_abandoned
from idxr_pg.db.status import gather_stale, gather_status
from idxr_pg.runtime.progress import format_duration

log = logging.getLogger("idxr_pg.cli.ops")


@contextmanager
def operations_db(url: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection; a database without the idxr schema gets a clear message."""
    with connect(url, autocommit=True) as conn:
        try:
            yield conn
        except psycopg.errors.UndefinedTable as exc:
            raise DatabaseError(
                f"{redact(url)} has no (or an older) idxr schema ({str(exc).splitlines()[0]}): "
                "run `idxr-pg migrate`"
            ) from None


# ---- formatting --------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned plain-text columns (no colours, so output is stable for scripts and tests)."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )


def when(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def ago(value: datetime | None) -> str:
    if value is None:
        return "never"
    return f"{format_duration((datetime.now(UTC) - value).total_seconds())} ago"


def age(value: timedelta | None) -> str:
    return "-" if value is None else format_duration(value.total_seconds())


def progress_text(job: Job) -> str:
    total = "?" if job.total is None else f"{job.total:,}"
    percent = "" if job.percent is None else f" ({job.percent:.1f}%)"
    return f"{job.counts.done:,}/{total}{percent}"


def job_note(job: Job) -> str:
    notes = []
    if job.resumed_from:
        notes.append(f"resumed from #{job.resumed_from}")
    if job.resumed_by:
        notes.append(f"resumed by #{job.resumed_by}")
    if job.options.get("force"):
        notes.append("force")
    if job.counts.failed:
        notes.append(f"{job.counts.failed} failed")
    if job.error:
        first = job.error.strip().splitlines()[0] if job.error.strip() else job.error
        notes.append(f"error: {first[:100]}")
    return "; ".join(notes)


# ---- backfill --------------------------------------------------------------------------------


class StopRequest:
    """SIGINT/SIGTERM once: stop after the current batch. A second signal stops at once."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self) -> bool:
        return self.signum is not None

    def handle(self, signum: int, _frame: object) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        log.warning(
            "%s received: stopping after the current batch (send it again to stop now)",
            signal.Signals(signum).name,
        )

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGINT)


@contextmanager
def stop_on_signals(stop: StopRequest) -> Iterator[None]:
    previous = {sig: signal.signal(sig, stop.handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def summary(job: Job) -> str:
    c = job.counts
    total = "?" if job.total is None else f"{job.total:,}"
    return (
        f"job #{job.id}: {c.done:,} of {total} entities "
        f"({c.unchanged:,} unchanged, {c.deleted:,} deleted, {c.skipped:,} skipped by a "
        f"worker, {c.failed:,} failed), {c.embedded:,} fields embedded, {c.cache_hits:,} "
        f"from the cache, {c.records_written:,} records written, {c.records_deleted:,} "
        f"removed, took {format_duration(job.duration_seconds)}"
    )


@click.command()
@click.argument("kind")
@click.option(
    "--force",
    is_flag=True,
    help="Re-write and re-embed every record, even unchanged ones (vectors this model already "
    "made for the same text still come from the embedding cache).",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the latest backfill of KIND after its checkpoint, if it was interrupted, "
    "killed or failed (its --force setting is kept).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 10_000),
    default=None,
    help="Entities per pipeline batch and per checkpoint [default: worker.batch_size, 64].",
)
@click.option(
    "--progress-interval",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="Seconds between progress log lines when stderr is not a terminal.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the finished job as JSON.")
@pass_app
def backfill(
    app: AppContext,
    kind: str,
    force: bool,
    resume: bool,
    batch_size: int | None,
    progress_interval: float,
    as_json: bool,
) -> None:
    """Index every existing row of KIND through the same pipeline as the worker.

    Streams the source table's keys in key order (constant memory) and records a job with its
    checkpoint (last key done) and counts in idxr.jobs; unchanged entities cost no embedding
    and no writes. Indexed entities whose source row is gone are removed at the end.
    SIGINT/SIGTERM stop after the current batch; `--resume` then continues from the
    checkpoint (also after a crash or SIGKILL). Progress: a bar on a terminal, else log lines.
    """
    from idxr_pg.runtime.backfill import Backfill, BackfillInterrupted, BackfillOptions

    config = app.config
    options = BackfillOptions(
        force=force,
        resume=resume,
        batch_size=batch_size or config.worker.batch_size,
        progress_interval=progress_interval,
    )
    stop = StopRequest()
    runner = Backfill(app.database_url, config, kind, options, should_stop=stop)
    try:
        with stop_on_signals(stop):
            job = runner.run()
    except BackfillInterrupted as exc:
        if as_json:
            print_json(exc.job.as_dict())
        click.echo(f"backfill of {kind} interrupted: {summary(exc.job)}", err=True)
        click.echo(f"resume with: idxr-pg backfill {kind} --resume", err=True)
        sys.exit(stop.exit_code)
    except KeyboardInterrupt:
        click.echo(
            f"backfill of {kind} stopped mid-batch; resume with: idxr-pg backfill {kind} --resume",
            err=True,
        )
        sys.exit(130)
    if as_json:
        print_json(job.as_dict())
        return
    click.echo(f"backfill of {kind} succeeded: {summary(job)}")
    if job.counts.failed:
        click.echo(
            f"warning: {job.counts.failed} entities failed; the worker retries them, then "
            "parks them as dead letters (`idxr-pg errors list`)",
            err=True,
        )


# ---- jobs ------------------------------------------------------------------------------------


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the jobs as a JSON list.")
@click.option("--kind", default=None, help="Only jobs of this entity kind.")
@click.option(
    "--limit",
    type=click.IntRange(1, 10_000),
    default=20,
    show_default=True,
    help="How many of the most recent jobs to show.",
)
@pass_app
def jobs(app: AppContext, as_json: bool, kind: str | None, limit: int) -> None:
    """Recent jobs (backfills), newest first: state, progress, rate, ETA or duration, error.

    A job still marked running whose process is gone (killed) is marked interrupted first;
    continue it with `idxr-pg backfill KIND --resume`.
    """
    with operations_db(app.database_url) as conn:
        reconcile_abandoned(conn)
        found = list_jobs(conn, entity_kind=kind, limit=limit)
    if as_json:
        print_json([job.as_dict() for job in found])
        return
    if not found:
        click.echo("no jobs yet" + (f" for kind {kind!r}" if kind else ""))
        return
    rows = []
    for job in found:
        rate = "-" if job.rate is None else f"{job.rate:.1f}/s"
        timing = (
            f"ETA {format_duration(job.eta_seconds)}"
            if job.state == RUNNING
            else f"took {format_duration(job.duration_seconds)}"
        )
        rows.append(
            [
                job.id,
                job.entity_kind,
                job.job_type,
                job.state,
                progress_text(job),
                f"{job.counts.embedded:,}",
                f"{job.counts.records_written:,}",
                rate,
                timing,
                when(job.started_at),
                job_note(job),
            ]
        )
    click.echo(
        table(
            [
                "ID",
                "KIND",
                "TYPE",
                "STATE",
                "PROGRESS",
                "EMBEDDED",
                "WRITTEN",
                "RATE",
                "ETA/TOOK",
                "STARTED",
                "NOTE",
            ],
            rows,
        )
    )


# ---- status / stale --------------------------------------------------------------------------


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the status as one JSON object.")
@pass_app
def status(app: AppContext, as_json: bool) -> None:
    """Per entity kind: what is indexed, what is queued and since when, dead letters; and the
    live workers.

    Reads the idxr.status view; kinds in the config that the database has not seen yet are
    listed with zeros. A worker is live when its heartbeat is recent (a few poll intervals).
    """
    config = app.config
    with operations_db(app.database_url) as conn:
        reconcile_abandoned(conn)
        result = gather_status(conn, config)
    if as_json:
        print_json(result.as_dict())
        return
    if not result.kinds:
        click.echo("no entity kinds configured or indexed yet")
    for kind in result.kinds:
        origin = "" if kind.in_database else "  [configured, not yet in the database]"
        if not kind.configured:
            origin = "  [not in the config]"
        click.echo(f"{kind.entity_kind}{origin}")
        click.echo(f"  source table:   {kind.source_table or '-'}")
        click.echo(f"  model:          {kind.model_name or '-'}")
        click.echo(f"  refresh:        {kind.refresh_policy}")
        click.echo(
            f"  indexed:        {kind.indexed_entities:,} entities, {kind.indexed_records:,} "
            f"records ({kind.embedded_records:,} embedded)"
        )
        if kind.queue_depth:
            click.echo(
                f"  queue:          {kind.queue_depth:,} changes to {kind.queued_entities:,} "
                f"entities ({kind.retrying_changes:,} retrying), lag {age(kind.lag)}"
            )
            click.echo(f"  stale since:    {when(kind.stale_since)}")
        else:
            click.echo("  queue:          empty (up to date)")
        click.echo(
            f"  last embedded:  {when(kind.last_embedded_at)} ({ago(kind.last_embedded_at)})"
        )
        click.echo(f"  last refresh:   {when(kind.last_refresh_at)}")
        click.echo(f"  dead letters:   {kind.dead_letters:,}")
        if kind.last_backfill is not None:
            job = kind.last_backfill
            click.echo(
                f"  last backfill:  job #{job.id} {job.state}, {progress_text(job)}, "
                f"started {when(job.started_at)}"
            )
        click.echo("")
    live = f"live within {format_duration(result.live_within_seconds)}"
    if not result.workers:
        click.echo(f"workers: none ({live})")
        return
    click.echo(f"workers: {len(result.workers)} ({live})")
    click.echo(
        table(
            ["WORKER", "HOST", "PID", "KINDS", "STATE", "PROCESSED", "LAST HEARTBEAT"],
            [
                [
                    w.worker_id,
                    w.host,
                    w.pid,
                    ",".join(w.entity_kinds) or "all",
                    w.state,
                    f"{w.processed:,}",
                    f"{when(w.heartbeat_at)} ({format_duration(w.heartbeat_age_seconds)} ago)",
                ]
                for w in result.workers
            ],
        )
    )


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the stale kinds as a JSON list.")
@pass_app
def stale(app: AppContext, as_json: bool) -> None:
    """Entity kinds with unprocessed changes: how many, since when, and their refresh policy.

    Reads the idxr.stale view. Kinds with refresh 'manual' stay stale until
    `idxr-pg refresh KIND`; 'every <interval>' kinds are refreshed by the worker at most once
    per interval.
    """
    with operations_db(app.database_url) as conn:
        kinds = gather_stale(conn)
    if as_json:
        print_json([kind.as_dict() for kind in kinds])
        return
    if not kinds:
        click.echo("nothing is stale: every queue is empty")
        return
    click.echo(
        table(
            [
                "KIND",
                "REFRESH",
                "CHANGES",
                "ENTITIES",
                "READY",
                "STALE SINCE",
                "LAG",
                "LAST REFRESH",
            ],
            [
                [
                    k.entity_kind,
                    k.refresh_policy,
                    f"{k.queued_changes:,}",
                    f"{k.queued_entities:,}",
                    f"{k.ready_changes:,}",
                    when(k.stale_since),
                    age(k.lag),
                    when(k.last_refresh_at),
                ]
                for k in kinds
            ],
        )
    )


# ---- init ------------------------------------------------------------------------------------


@click.command()
@click.option(
    "--models",
    "module_name",
    required=True,
    help="Python module holding the Pydantic models, e.g. myapp.models (imported; the current "
    "directory is on the path).",
)
@click.option(
    "--table-prefix",
    default="public.",
    show_default=True,
    help="Prepended to each guessed table name (a schema like 'app.' and/or a name prefix).",
)
@click.option(
    "--output",
    "-o",
    default="idxr.yaml",
    show_default=True,
    help="File to write; '-' prints to stdout.",
)
@click.option("--force", is_flag=True, help="Overwrite the output file if it exists.")
def init(module_name: str, table_prefix: str, output: str, force: bool) -> None:
    """Scaffold an idxr.yaml entry for each Pydantic model in a module, for review.

    Names, tables and keys are guesses (snake_case class name, a plural table name, a key
    field named id, <name>_id or uuid); each model's fields are listed as comments. Edit the
    file, then `idxr-pg migrate`, `idxr-pg triggers install` and `idxr-pg backfill KIND`.
    """
    from idxr_pg.scaffold import scaffold

    target = None if output == "-" else Path(output)
    text, entries = scaffold(module_name, target, table_prefix=table_prefix, force=force)
    if target is None:
        click.echo(text, nl=False)
        return
    names = ", ".join(entry.name for entry in entries)
    click.echo(f"wrote {target} with {len(entries)} entity kinds ({names}); review it before use")


COMMANDS = [backfill, jobs, status, stale, init]
