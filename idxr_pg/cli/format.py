"""How commands print: JSON, tables, times. The one place that decides what output looks like.

Tables are rich tables on a terminal and plain left-aligned columns everywhere else (pipes,
files, tests), so scripts can split the lines: no colours, no box drawing, one line per row.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import click

from idxr_pg.runtime.progress import format_duration

if TYPE_CHECKING:
    from idxr_pg.db.jobs import Job

__all__ = [
    "Column",
    "age",
    "ago",
    "format_duration",
    "job_progress",
    "print_json",
    "print_listing",
    "print_table",
    "when",
]

T = TypeVar("T")


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


# ---- times -------------------------------------------------------------------------------------


def when(value: datetime | None) -> str:
    """Local wall-clock time to the second; ``-`` when unknown."""
    return "-" if value is None else value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def ago(value: datetime | None) -> str:
    """``4m05s ago``; ``never`` when unknown."""
    if value is None:
        return "never"
    return f"{format_duration((datetime.now(UTC) - value).total_seconds())} ago"


def age(value: timedelta | None) -> str:
    """A duration such as a lag; ``-`` when unknown."""
    return "-" if value is None else format_duration(value.total_seconds())


def job_progress(job: Job) -> str:
    """``250/1,000 (25.0%)``: a job's entities done of its total."""
    total = "?" if job.total is None else f"{job.total:,}"
    percent = "" if job.percent is None else f" ({job.percent:.1f}%)"
    return f"{job.counts.entities:,}/{total}{percent}"


# ---- tables ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """A table column. The other fields shape it on a terminal only: ``no_wrap`` keeps cells
    on one line, ``fold`` breaks long words (paths) anywhere, ``max_width`` caps the column."""

    header: str
    justify: Literal["left", "right"] = "left"
    no_wrap: bool = False
    fold: bool = False
    max_width: int | None = None


def print_table(
    columns: Sequence[Column | str],
    rows: Sequence[Sequence[object]],
    *,
    title: str | None = None,
    terminal: bool | None = None,
) -> None:
    """Print ``rows`` under ``columns``: rich on a terminal (or ``terminal=True``), else plain."""
    cols = [c if isinstance(c, Column) else Column(c) for c in columns]
    cells = [["" if cell is None else str(cell) for cell in row] for row in rows]
    if terminal is None:
        terminal = sys.stdout.isatty()
    if terminal:
        _print_rich(cols, cells, title)
        return
    if title:
        click.echo(title)
    click.echo(plain_table(cols, cells))


def plain_table(columns: Sequence[Column], rows: Sequence[Sequence[str]]) -> str:
    """Columns two spaces apart, padded to the widest cell, trailing blanks stripped."""
    lines = [[c.header for c in columns], *rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(columns))]
    return "\n".join(
        "  ".join(
            cell.rjust(width) if column.justify == "right" else cell.ljust(width)
            for cell, width, column in zip(line, widths, columns, strict=True)
        ).rstrip()
        for line in lines
    )


def _print_rich(
    columns: Sequence[Column], rows: Sequence[Sequence[str]], title: str | None
) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    # Text(...): cells and title are shown as they are, never read as rich markup ("[x]").
    table = Table(
        title=None if title is None else Text(title), title_justify="left", header_style="bold"
    )
    for column in columns:
        table.add_column(
            column.header,
            justify=column.justify,
            no_wrap=column.no_wrap,
            overflow="fold" if column.fold else "ellipsis",
            max_width=column.max_width,
        )
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    Console(soft_wrap=False).print(table)


def print_listing(
    items: Sequence[T],
    *,
    as_json: bool,
    to_json: Callable[[T], Any],
    empty: str,
    columns: Sequence[Column | str],
    to_row: Callable[[T], Sequence[object]],
    title: str | None = None,
) -> None:
    """What a listing command prints: a JSON list with --json, else ``empty`` when there is
    nothing, else a table with a row per item."""
    if as_json:
        print_json([to_json(item) for item in items])
    elif not items:
        click.echo(empty)
    else:
        print_table(columns, [to_row(item) for item in items], title=title)
