"""`idxr-pg status` and `idxr-pg stale`: what is indexed, what is waiting, who is working."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

import click
import psycopg

from idxr_pg.capture import triggers as capture
from idxr_pg.cli.context import AppContext, pass_app
from idxr_pg.cli.format import (
    age,
    ago,
    format_duration,
    job_progress,
    print_json,
    print_listing,
    print_table,
    when,
)
from idxr_pg.cli.options import json_flag
from idxr_pg.db.hnsw import IndexState, index_states
from idxr_pg.db.jobs import reconcile_abandoned
from idxr_pg.db.status import gather_stale, gather_status, live_window_seconds
from idxr_pg.db.versions import ACTIVE, BUILDING, IndexVersion, list_versions
from idxr_pg.db.workers import mark_lost
from idxr_pg.runtime.primary import can_write
from idxr_pg.runtime.schema_checks import KindCheck, check_kinds

if TYPE_CHECKING:
    from idxr_pg.db.status import KindStatus, StaleKind

WORKER_COLUMNS = ("WORKER", "HOST", "PID", "KINDS", "STATE", "PROCESSED", "LAST HEARTBEAT")
STALE_COLUMNS = (
    "KIND",
    "REFRESH",
    "CHANGES",
    "ENTITIES",
    "READY",
    "STALE SINCE",
    "LAG",
    "LAST REFRESH",
)


def _echo_checks(kind: KindStatus, check: KindCheck | None) -> None:
    if kind.schema_stale:
        click.echo(
            f"  model:          STALE: {kind.schema_change} (index built with the earlier "
            f"model: `idxr-pg plan {kind.entity_kind}`, then `idxr-pg reindex {kind.entity_kind}`)"
        )
    if check is None:
        return
    if check.problem:
        click.echo(f"  model check:    not possible: {check.problem}")
    for drift in check.drift:
        where = f"{drift.table}: " if drift.table else ""
        click.echo(f"  triggers:       {where}{drift.what}: run `idxr-pg triggers install`")


def _echo_versions(versions: list[IndexVersion]) -> None:
    """The kind's active index version and any version being built (`idxr-pg versions`)."""
    for v in versions:
        if v.state == ACTIVE:
            click.echo(f"  index version:  {v.version} active: {v.model_name}, {v.dimensions} dims")
        elif v.state == BUILDING:
            done = f"{v.build_done or 0:,}/{v.build_total:,}" if v.build_total else "starting"
            click.echo(
                f"  building:       version {v.version}: {v.model_name}, {v.dimensions} dims, "
                f"{v.build_state or 'not started'} ({done} entities)"
            )


def _index_lines(states: dict[int, list[IndexState]]) -> list[str]:
    """One line per vector size in use: how its HNSW index is stored and built, its size, a
    switch in progress, or that it is missing (searches of that size scan exactly)."""
    lines = []
    for dimensions, found in states.items():
        if not found:
            lines.append(f"{dimensions} dims: no HNSW index (searches of this size scan exactly)")
            continue
        current, *switching = found
        line = (
            f"{dimensions} dims: {current.storage}, m {current.m}, ef_construction "
            f"{current.ef_construction}, {current.bytes / 1048576:.1f} MiB"
        )
        if not current.valid:
            line += " (not valid yet: being built)"
        for target in switching:
            line += (
                f"; switching to {target.storage}, m {target.m}, ef_construction "
                f"{target.ef_construction} ({'built' if target.valid else 'building'})"
            )
        lines.append(line)
    return lines


def _capture_paths(conn: psycopg.Connection) -> dict[str, list[tuple[str, str]]]:
    """Per kind: (source table, what its capture triggers call: c, plpgsql or mixed)."""
    try:
        captures = capture.installed_captures(conn)
    except capture.CaptureError:  # no idxr schema
        return {}
    paths: dict[str, list[tuple[str, str]]] = {}
    for c in captures:
        paths.setdefault(c.entity_kind, []).append((c.source_table, c.language))
    return paths


def _echo_kind(
    kind: KindStatus,
    check: KindCheck | None = None,
    versions: list[IndexVersion] | None = None,
    paths: list[tuple[str, str]] | None = None,
) -> None:
    origin = "" if kind.in_database else "  [configured, not yet in the database]"
    if not kind.configured:
        origin = "  [not in the config]"
    click.echo(f"{kind.entity_kind}{origin}")
    click.echo(f"  source table:   {kind.source_table or '-'}")
    click.echo(f"  model:          {kind.model_name or '-'}")
    _echo_versions(versions or [])
    click.echo(f"  refresh:        {kind.refresh_policy}")
    if paths:
        click.echo("  capture:        " + ", ".join(f"{lang} on {table}" for table, lang in paths))
    _echo_checks(kind, check)
    if kind.window:
        click.echo(f"  window:         {kind.window} UTC (processed only inside it)")
    if kind.paused:
        click.echo(
            f"  paused:         since {when(kind.paused_since)}: changes accumulate, nothing "
            f"is embedded (`idxr-pg resume {kind.entity_kind}`)"
        )
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
    click.echo(f"  last embedded:  {when(kind.last_embedded_at)} ({ago(kind.last_embedded_at)})")
    click.echo(f"  last refresh:   {when(kind.last_refresh_at)}")
    click.echo(f"  dead letters:   {kind.dead_letters:,}")
    if kind.last_backfill is not None:
        job = kind.last_backfill
        click.echo(
            f"  last backfill:  job #{job.id} {job.state}, {job_progress(job)}, "
            f"started {when(job.started_at)}"
        )
        if job.options.get("bulk") and job.state != "succeeded":
            click.echo(
                "  bulk mode:      on (HNSW index dropped: search of every kind is an exact "
                "scan until the backfill"
                + (
                    " ends)"
                    if job.state == "running"
                    else f" is resumed: backfill {job.entity_kind} --resume)"
                )
            )
    click.echo("")


def _stale_row(k: StaleKind) -> list[object]:
    return [
        k.entity_kind,
        k.refresh_policy,
        f"{k.queued_changes:,}",
        f"{k.queued_entities:,}",
        f"{k.ready_changes:,}",
        when(k.stale_since),
        age(k.lag),
        when(k.last_refresh_at),
    ]


@click.command()
@json_flag("Print the status as one JSON object.")
@pass_app
def status(app: AppContext, as_json: bool) -> None:
    """Per entity kind: what is indexed, by which index version (and any version being
    built), what is queued and since when, dead letters; and the live workers.

    Reads the idxr.status view; kinds in the config that the database has not seen yet are
    listed with zeros. A worker is live when its heartbeat is recent (a few poll intervals);
    a `running` worker whose heartbeat is older is marked `lost` in idxr.workers.

    Each configured kind is also checked against the config: a model changed since the
    kind's index was built shows the kind as STALE with what changed (fields added, removed,
    renamed, retyped; stored for idxr.status too), and capture triggers installed from
    another config (tables, keys, watch columns) are named, with `triggers install` to run.
    """
    config = app.config
    with app.db() as conn:
        writable = can_write(conn)
        if writable:  # housekeeping; a standby shows what the primary last wrote
            reconcile_abandoned(conn)
            mark_lost(conn, live_window_seconds(config))
        checks = check_kinds(conn, config.entities, store=writable) if config.entities else {}
        result = gather_status(conn, config)
        versions: dict[str, list[IndexVersion]] = {}
        for found in list_versions(conn):
            versions.setdefault(found.entity_kind, []).append(found)
        paths = _capture_paths(conn)
        indexes = index_states(conn)
    if as_json:
        data = result.as_dict()
        for kind in data["kinds"]:
            kind["versions"] = [v.as_dict() for v in versions.get(kind["entity_kind"], [])]
            check = checks.get(kind["entity_kind"])
            kind["config_drift"] = [d.as_dict() for d in check.drift] if check else []
            kind["model_check_problem"] = check.problem if check else None
            kind["capture"] = [
                {"table": table, "language": lang}
                for table, lang in paths.get(kind["entity_kind"], [])
            ]
        data["search_indexes"] = [
            {"dimensions": dimensions, "indexes": [asdict(state) for state in found]}
            for dimensions, found in indexes.items()
        ]
        print_json(data)
        return
    if not result.kinds:
        click.echo("no entity kinds configured or indexed yet")
    for kind in result.kinds:
        _echo_kind(
            kind,
            checks.get(kind.entity_kind),
            versions.get(kind.entity_kind),
            paths.get(kind.entity_kind),
        )
    click.echo("search indexes:")
    for line in _index_lines(indexes):
        click.echo(f"  {line}")
    live = f"live within {format_duration(result.live_within_seconds)}"
    if not result.workers:
        click.echo(f"workers: none ({live})")
        return
    click.echo(f"workers: {len(result.workers)} ({live})")
    print_table(
        WORKER_COLUMNS,
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


@click.command()
@json_flag("Print the stale kinds as a JSON list.")
@pass_app
def stale(app: AppContext, as_json: bool) -> None:
    """Entity kinds with unprocessed changes: how many, since when, and their refresh policy.

    Reads the idxr.stale view. Kinds with refresh 'manual' stay stale until
    `idxr-pg refresh KIND`; 'every <interval>' kinds are refreshed by the worker at most once
    per interval.
    """
    with app.db() as conn:
        kinds = gather_stale(conn)
    print_listing(
        kinds,
        as_json=as_json,
        to_json=lambda kind: kind.as_dict(),
        empty="nothing is stale: every queue is empty",
        columns=STALE_COLUMNS,
        to_row=_stale_row,
    )


COMMANDS = [status, stale]
