"""`idxr-pg backfill KIND` and `idxr-pg jobs`: indexing existing rows, and the jobs that did."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from idxr_pg.cli.context import AppContext, pass_app
from idxr_pg.cli.format import (
    format_duration,
    job_progress,
    print_json,
    print_listing,
    when,
)
from idxr_pg.cli.options import (
    allow_superuser_flag,
    batch_size_option,
    count_option,
    json_flag,
    progress_interval_option,
)
from idxr_pg.config import DEFAULT_BACKFILL_BATCH_SIZE
from idxr_pg.db.hnsw_memory import AUTO as AUTO_BUILD_MEMORY
from idxr_pg.db.jobs import RUNNING, Job, list_jobs, reconcile_abandoned
from idxr_pg.runtime.primary import can_write
from idxr_pg.runtime.signals import StopRequest, stop_on_signals

if TYPE_CHECKING:
    from idxr_pg.runtime.backfill import BackfillOptions

JOB_COLUMNS = (
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
)


def summary(job: Job) -> str:
    c = job.counts
    total = "?" if job.total is None else f"{job.total:,}"
    return (
        f"job #{job.id}: {c.entities:,} of {total} entities "
        f"({c.unchanged:,} unchanged, {c.deleted:,} deleted, {c.skipped:,} skipped by a "
        f"worker, {c.failed:,} failed), {c.texts_embedded:,} fields embedded, {c.cache_hits:,} "
        f"from the cache, {c.records_written:,} records written, {c.records_deleted:,} "
        f"removed, took {format_duration(job.duration_seconds)}"
    )


def job_note(job: Job) -> str:
    notes = []
    if job.resumed_from:
        notes.append(f"resumed from #{job.resumed_from}")
    if job.resumed_by:
        notes.append(f"resumed by #{job.resumed_by}")
    if job.options.get("reindex"):
        notes.append("reindex")
    if job.options.get("force"):
        notes.append("force")
    if job.options.get("bulk"):
        notes.append("bulk")
    if job.counts.failed:
        notes.append(f"{job.counts.failed} failed")
    if job.error:
        first = job.error.strip().splitlines()[0] if job.error.strip() else job.error
        notes.append(f"error: {first[:100]}")
    return "; ".join(notes)


def job_row(job: Job) -> list[object]:
    rate = "-" if job.rate is None else f"{job.rate:.1f}/s"
    timing = (
        f"ETA {format_duration(job.eta_seconds)}"
        if job.state == RUNNING
        else f"took {format_duration(job.duration_seconds)}"
    )
    return [
        job.id,
        job.entity_kind,
        job.job_type,
        job.state,
        job_progress(job),
        f"{job.counts.texts_embedded:,}",
        f"{job.counts.records_written:,}",
        rate,
        timing,
        when(job.started_at),
        job_note(job),
    ]


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
@batch_size_option(
    "Entities per pipeline batch and per checkpoint [default: backfill.batch_size from the "
    f"config, {DEFAULT_BACKFILL_BATCH_SIZE}]. Lower it for very large documents: two batches "
    "are in memory at once."
)
@click.option(
    "--bulk/--no-bulk",
    default=None,
    help="Bulk mode: drop the HNSW index, load, then build it once at the end (much faster "
    "for an initial load). Taken by default when idxr.search_index holds no vector yet; "
    "--bulk forces it even when other kinds hold vectors (the index serves every kind, so "
    "search of EVERY kind falls back to an exact scan while it runs: correct, slower); "
    "--no-bulk refuses it. An interrupted bulk run leaves the index absent until "
    "`--resume` finishes. Needs ownership of idxr.search_index.",
)
@click.option(
    "--maintenance-work-mem",
    default=AUTO_BUILD_MEMORY,
    show_default=True,
    help="maintenance_work_mem of the session that builds the HNSW index in bulk mode; "
    "'auto' sizes it to the vectors to index (4 bytes per dimension + ~800 per vector, "
    "64MB to 4GB), so the graph is built in memory.",
)
@click.option(
    "--build-workers",
    type=click.IntRange(0, 64),
    default=4,
    show_default=True,
    help="Parallel maintenance workers for that build (capped by the server's settings).",
)
@progress_interval_option
@json_flag("Print the finished job as JSON.")
@allow_superuser_flag
@pass_app
def backfill(
    app: AppContext,
    kind: str,
    force: bool,
    resume: bool,
    batch_size: int | None,
    bulk: bool | None,
    maintenance_work_mem: str,
    build_workers: int,
    progress_interval: float,
    as_json: bool,
) -> None:
    """Index every existing row of KIND through the same pipeline as the worker.

    Streams the source table's keys in key order (constant memory) and records a job with its
    checkpoint (last key done) and counts in idxr.jobs; unchanged entities cost no embedding
    and no writes. Indexed entities whose source row is gone are removed at the end.
    SIGINT/SIGTERM stop after the current batch; `--resume` then continues from the
    checkpoint (also after a crash or SIGKILL). Progress: a bar on a terminal, else log lines.

    Bulk mode (see --bulk): when the index holds no vector yet, the HNSW index is dropped at
    the start and built once at the end; `idxr-pg status` shows it while it runs.
    """
    from idxr_pg.runtime.backfill import BackfillOptions

    config = app.config
    options = BackfillOptions(
        force=force,
        resume=resume,
        batch_size=batch_size or config.backfill.batch_size,
        progress_interval=progress_interval,
        bulk=bulk,
        maintenance_work_mem=maintenance_work_mem,
        build_workers=build_workers,
    )
    run_backfill(app, kind, options, as_json=as_json, command="backfill")


def run_backfill(
    app: AppContext, kind: str, options: BackfillOptions, *, as_json: bool, command: str
) -> Job:
    """Run a backfill of ``kind`` (`idxr-pg backfill`, `idxr-pg reindex`): signals stop it
    after the batch (exit code of the signal), the finished job is printed, and a run whose
    every entity failed exits 1."""
    from idxr_pg.runtime.backfill import Backfill, BackfillInterrupted, failed_every_entity

    stop = StopRequest()
    runner = Backfill(app.database_url, app.config, kind, options, should_stop=stop)
    try:
        with stop_on_signals(stop):
            job = runner.run()
    except BackfillInterrupted as exc:
        if as_json:
            print_json(exc.job.as_dict())
        click.echo(f"{command} of {kind} interrupted: {summary(exc.job)}", err=True)
        click.echo(f"resume with: idxr-pg {command} {kind} --resume", err=True)
        sys.exit(stop.exit_code)
    except KeyboardInterrupt:
        click.echo(
            f"{command} of {kind} stopped mid-batch; resume with: idxr-pg {command} {kind} "
            "--resume",
            err=True,
        )
        sys.exit(stop.exit_code)
    if as_json:
        print_json(job.as_dict())
    else:
        click.echo(f"{command} of {kind} succeeded: {summary(job)}")
    if job.counts.failed and not as_json:
        click.echo(
            f"warning: {job.counts.failed} entities failed; the worker retries them, then "
            "parks them as dead letters (`idxr-pg errors list`)",
            err=True,
        )
    if failed_every_entity(job.counts):
        click.echo(
            f"error: every entity failed ({job.counts.failed} of {job.counts.entities}): "
            "see the warnings above and `idxr-pg errors list`",
            err=True,
        )
        sys.exit(1)
    return job


@click.command()
@json_flag("Print the jobs as a JSON list.")
@click.option("--kind", default=None, help="Only jobs of this entity kind.")
@count_option("--limit", click.IntRange(1, 10_000), 20, "How many of the most recent jobs to show.")
@pass_app
def jobs(app: AppContext, as_json: bool, kind: str | None, limit: int) -> None:
    """Recent jobs (backfills), newest first: state, progress, rate, ETA or duration, error.

    A job still marked running whose process is gone (killed) is marked interrupted first;
    continue it with `idxr-pg backfill KIND --resume`.
    """
    with app.db() as conn:
        if can_write(conn):  # on a standby, the jobs as the primary last wrote them
            reconcile_abandoned(conn)
        found = list_jobs(conn, entity_kind=kind, limit=limit)
    print_listing(
        found,
        as_json=as_json,
        to_json=Job.as_dict,
        empty="no jobs yet" + (f" for kind {kind!r}" if kind else ""),
        columns=JOB_COLUMNS,
        to_row=job_row,
    )


COMMANDS = [backfill, jobs]
