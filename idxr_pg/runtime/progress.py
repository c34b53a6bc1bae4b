"""Progress of a long job: a rich bar on a terminal, periodic log lines otherwise.

Both show entities done/total, fields embedded, rate and ETA. Log lines carry the same numbers
as structured ``extra`` fields, so ``--log-format json`` gives machine-readable progress.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Protocol

from idxr_pg.db.jobs import job_columns
from idxr_pg.records.counts import Counts

log = logging.getLogger("idxr_pg.progress")

DEFAULT_LOG_INTERVAL = 10.0


def format_duration(seconds: float | None) -> str:
    """``3s``, ``4m05s``, ``2h03m``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def eta_seconds(total: int | None, done: int, rate: float | None) -> float | None:
    if total is None or not rate:
        return None
    return max(0.0, (total - done) / rate)


class ProgressReporter(Protocol):
    def update(self, counts: Counts, total: int | None, rate: float | None) -> None: ...

    def close(self) -> None: ...


class LogProgress:
    """One INFO line every ``interval`` seconds (and none in between)."""

    def __init__(
        self,
        label: str,
        extra: dict[str, object],
        interval: float = DEFAULT_LOG_INTERVAL,
        unit: str = "entities",
        embedding: bool = True,
    ) -> None:
        self.label = label
        self.extra = extra
        self.interval = interval
        self.unit = unit
        self.embedding = embedding
        self._last = time.monotonic()

    def update(self, counts: Counts, total: int | None, rate: float | None) -> None:
        now = time.monotonic()
        if now - self._last < self.interval:
            return
        self._last = now
        eta = eta_seconds(total, counts.entities, rate)
        shown_total = "?" if total is None else str(total)
        percent = f" ({100.0 * counts.entities / total:.1f}%)" if total else ""
        embedded = (
            f", {counts.texts_embedded} fields embedded ({counts.cache_hits} from the cache)"
            if self.embedding
            else ""
        )
        log.info(
            "%s: %d/%s %s%s%s, %.1f %s/s, ETA %s",
            self.label,
            counts.entities,
            shown_total,
            self.unit,
            percent,
            embedded,
            rate or 0.0,
            self.unit,
            format_duration(eta),
            extra={
                **self.extra,
                **job_columns(counts),
                "total": total,
                "rate": None if rate is None else round(rate, 2),
                "eta_seconds": None if eta is None else round(eta, 1),
            },
        )

    def close(self) -> None:
        pass


class RichProgress:
    """A live bar on stderr; log records are printed above it while it runs."""

    def __init__(
        self, label: str, total: int | None, done: int = 0, embedding: bool = True
    ) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
        )

        embedded = (
            [TextColumn("{task.fields[embedded]} fields embedded (+{task.fields[cached]} cached)")]
            if embedding
            else []
        )
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            *embedded,
            TextColumn("{task.fields[rate]}/s"),
            TextColumn("ETA {task.fields[eta]}"),
            console=Console(stderr=True),
            redirect_stderr=True,
            transient=False,
        )
        self._task = self._progress.add_task(
            label, total=total, completed=done, embedded=0, cached=0, rate="-", eta="-"
        )
        self._progress.start()
        self._handlers = _point_log_handlers_at(sys.stderr)

    def update(self, counts: Counts, total: int | None, rate: float | None) -> None:
        self._progress.update(
            self._task,
            total=total,
            completed=counts.entities,
            embedded=counts.texts_embedded,
            cached=counts.cache_hits,
            rate="-" if rate is None else f"{rate:.1f}",
            eta=format_duration(eta_seconds(total, counts.entities, rate)),
        )

    def close(self) -> None:
        self._progress.stop()
        for handler, stream in self._handlers:
            handler.setStream(stream)


def _point_log_handlers_at(stream: object) -> list[tuple[logging.StreamHandler, object]]:
    """Send the root logger's stderr handlers to ``stream`` (rich's proxy); returns the old ones."""
    changed: list[tuple[logging.StreamHandler, object]] = []
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is sys.__stderr__:
            changed.append((handler, handler.setStream(stream)))  # type: ignore[arg-type]
    return changed


def make_progress(
    label: str,
    *,
    total: int | None,
    done: int = 0,
    extra: dict[str, object] | None = None,
    tty: bool | None = None,
    interval: float = DEFAULT_LOG_INTERVAL,
    unit: str = "entities",
    embedding: bool = True,
) -> ProgressReporter:
    """A bar when stderr is a terminal (or ``tty=True``), else periodic log lines. ``unit``
    names what ``Counts.entities`` counts; ``embedding=False`` leaves the embedding counts out
    (a file load embeds nothing)."""
    if tty is None:
        tty = sys.stderr.isatty()
    if tty:
        return RichProgress(label, total, done, embedding)
    return LogProgress(label, extra or {}, interval, unit, embedding)
