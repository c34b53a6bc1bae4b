"""`idxr-pg worker` and `idxr-pg refresh KIND`: processing the queue."""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import click

from idxr_pg.cli.context import AppContext, pass_app
from idxr_pg.cli.options import allow_superuser_flag, batch_size_option, kinds_option
from idxr_pg.errors import IdxrError
from idxr_pg.runtime.signals import StopRequest, stop_on_signals

if TYPE_CHECKING:
    from idxr_pg.embedding import Embedder
    from idxr_pg.records.counts import Counts
    from idxr_pg.runtime.metrics import WorkerMetrics
    from idxr_pg.runtime.worker import Worker

BATCH_SIZE_HELP = "Entities per batch [default: worker.batch_size from the config, 64]."


def _worker(
    app: AppContext,
    kinds: tuple[str, ...],
    *,
    embedder: Embedder | None = None,
    **overrides: object,
) -> Worker:
    from idxr_pg.runtime.worker import Worker

    config = app.config
    if not config.entities:
        raise IdxrError("no entity kinds configured: add `entities:` to the config file")
    settings = config.worker.model_copy(
        update={k: v for k, v in overrides.items() if v is not None}
    )
    return Worker(
        app.database_url, config, kinds=list(kinds) or None, settings=settings, embedder=embedder
    )


def _metrics(app: AppContext, port: int | None) -> tuple[WorkerMetrics | None, Embedder | None]:
    """With a metrics port: the worker's metrics, and its embedder timed by them."""
    if port is None:
        return None, None
    from idxr_pg.embedding import load_embedder
    from idxr_pg.runtime.metrics import WorkerMetrics

    metrics = WorkerMetrics()
    return metrics, metrics.timed(load_embedder(app.config.embedding))


def _serve_metrics(metrics: WorkerMetrics, w: Worker, host: str, port: int) -> None:
    """Feed ``metrics`` from ``w``'s batches and serve them on host:port (a daemon thread)."""
    metrics.set_worker(w.worker_id, socket.gethostname())
    metrics.watch_queue(w.database_url, w.kind_names, w.worker_id)
    metrics.prime(w.kind_names)
    w.on_batch = metrics.observe_batch
    try:
        bound = metrics.serve(port, host)
    except OSError as exc:
        raise IdxrError(f"cannot serve metrics on {host}:{port}: {exc}") from exc
    click.echo(f"serving Prometheus metrics on http://{host}:{bound}/metrics", err=True)


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
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Serve Prometheus metrics at http://HOST:PORT/metrics [default: no metrics].",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    help="Address the metrics server binds (0.0.0.0: every interface).",
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
    metrics_port: int | None,
    metrics_host: str,
    kinds: tuple[str, ...],
) -> None:
    """Keep idxr.search_index in sync with the watched tables.

    Listens on the idxr_queue channel (and polls every --poll-interval seconds), claims
    batches of changed entities, re-embeds only changed fields and upserts them. Run as many
    workers as you like: leases keep one entity with one worker at a time. Kinds with
    `refresh: manual` are left to `idxr-pg refresh KIND`; `every <interval>` kinds are
    processed at most once per interval. SIGTERM or Ctrl-C finishes the current batch and
    exits 0; a lost database connection is retried until it comes back. Run it against the
    primary: a hot standby (read-only) is refused; searches can use a standby.
    """
    metrics, embedder = _metrics(app, metrics_port)
    w = _worker(
        app,
        kinds,
        embedder=embedder,
        batch_size=batch_size,
        poll_interval=poll_interval,
        give_up_after_seconds=give_up_after_seconds,
    )
    if metrics is not None and metrics_port is not None:
        _serve_metrics(metrics, w, metrics_host, metrics_port)
    try:
        totals = _run_until_signalled(w, w.drain if once else w.run)
    finally:
        if metrics is not None:
            metrics.close()
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
