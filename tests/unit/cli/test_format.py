"""The CLI's one table formatter: plain columns for pipes and tests, rich on a terminal."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import click
import pytest
from click.testing import CliRunner

from idxr_pg.cli import format as fmt
from idxr_pg.cli.format import Column, age, ago, plain_table, print_listing, print_table, when


def _printed(func, *args, **kwargs) -> str:
    @click.command()
    def show() -> None:
        func(*args, **kwargs)

    result = CliRunner().invoke(show, catch_exceptions=False)
    return result.output


def test_plain_columns_are_left_aligned_two_spaces_apart_without_trailing_blanks() -> None:
    text = plain_table(
        [Column("ID"), Column("KIND"), Column("NOTE")],
        [["1", "alpha", ""], ["12", "b", "resumed from #1"]],
    )
    assert text.splitlines() == [
        "ID  KIND   NOTE",
        "1   alpha",
        "12  b      resumed from #1",
    ]


def test_right_justified_columns_and_none_cells() -> None:
    out = _printed(
        print_table, [Column("#", justify="right"), "value"], [[1, None], [10, "x"]], terminal=False
    )
    assert out == " #  value\n 1\n10  x\n"


def test_a_pipe_gets_the_title_then_plain_lines_without_box_drawing_or_colour() -> None:
    rows = [[str(i), "a very long value " * 10] for i in range(3)]
    out = _printed(print_table, ["#", "value"], rows, title="fields nearest to 'x'")
    lines = out.splitlines()
    assert lines[0] == "fields nearest to 'x'"
    assert len(lines) == 5  # one line per row, however long
    assert "\x1b[" not in out and not set("─━│┃┏┡└") & set(out)


def test_a_terminal_gets_a_rich_table_that_shows_markup_as_text(monkeypatch) -> None:
    buffer = io.StringIO()
    real_console = __import__("rich.console", fromlist=["Console"]).Console
    monkeypatch.setattr(
        "rich.console.Console", lambda **kw: real_console(file=buffer, width=100, **kw)
    )
    fmt.print_table(["KIND", "NOTE"], [["alpha", "[bold]not markup[/bold]"]], terminal=True)
    out = buffer.getvalue()
    assert "alpha" in out and "[bold]not markup[/bold]" in out
    assert set("━│") & set(out)  # box drawing, for people


@pytest.mark.parametrize(
    ("as_json", "items", "expected"),
    [
        (True, [], "[]\n"),
        (True, [2], "[\n  4\n]\n"),
        (False, [], "nothing here\n"),
        (False, [2, 3], "N  DOUBLE\n2  4\n3  6\n"),
    ],
)
def test_a_listing_is_json_or_the_empty_message_or_a_table(as_json, items, expected) -> None:
    out = _printed(
        print_listing,
        items,
        as_json=as_json,
        to_json=lambda n: n * 2,
        empty="nothing here",
        columns=["N", "DOUBLE"],
        to_row=lambda n: [n, n * 2],
    )
    assert out == expected


def test_times() -> None:
    assert when(None) == "-" and ago(None) == "never" and age(None) == "-"
    assert age(timedelta(minutes=10)) == "10m00s"
    assert ago(datetime.now(UTC) - timedelta(hours=2)) == "2h00m ago"
    moment = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    assert when(moment) == moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")
