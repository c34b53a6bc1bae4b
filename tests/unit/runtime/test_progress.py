"""Progress reporting: periodic log lines without a terminal, a rich bar with one."""

from __future__ import annotations

import io
import logging
import sys

import pytest

from idxr_pg.db.jobs import job_counts
from idxr_pg.runtime.progress import LogProgress, RichProgress, format_duration, make_progress


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "-"), (0, "0s"), (59.4, "59s"), (61, "1m01s"), (3600, "1h00m"), (7384, "2h03m"),
     (3 * 86400 + 3600, "3d01h")],
)  # fmt: skip
def test_format_duration(seconds: float | None, text: str):
    assert format_duration(seconds) == text


def test_log_progress_logs_at_most_once_per_interval(caplog: pytest.LogCaptureFixture):
    progress = LogProgress("backfill doc", {"entity_kind": "doc", "job_id": 7}, interval=0.0)
    with caplog.at_level(logging.INFO, logger="idxr_pg.progress"):
        progress.update(job_counts(done=50, embedded=120, cache_hits=3), total=200, rate=25.0)
    (record,) = caplog.records
    assert record.getMessage() == (
        "backfill doc: 50/200 entities (25.0%), 120 fields embedded (3 from the cache), "
        "25.0 entities/s, ETA 6s"
    )
    assert record.entity_kind == "doc" and record.job_id == 7
    assert record.done == 50 and record.total == 200 and record.eta_seconds == 6.0

    rows = LogProgress("load f.csv", {}, interval=0.0, unit="rows", embedding=False)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="idxr_pg.progress"):
        rows.update(job_counts(done=500), total=1000, rate=250.0)
    assert (
        caplog.records[0].getMessage() == "load f.csv: 500/1000 rows (50.0%), 250.0 rows/s, ETA 2s"
    )

    quiet = LogProgress("backfill doc", {}, interval=3600)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="idxr_pg.progress"):
        for done in range(10):
            quiet.update(job_counts(done=done), total=10, rate=1.0)
    assert caplog.records == []


def test_without_a_terminal_progress_is_log_lines():
    assert isinstance(make_progress("x", total=1, tty=False), LogProgress)


def test_rich_bar_renders_and_gives_the_log_handlers_back(monkeypatch: pytest.MonkeyPatch):
    terminal = io.StringIO()
    monkeypatch.setattr(sys, "stderr", terminal)
    handler = logging.StreamHandler(sys.__stderr__)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        bar = make_progress("backfill doc", total=100, tty=True)
        assert isinstance(bar, RichProgress)
        bar.update(job_counts(done=40, embedded=99, cache_hits=5), total=100, rate=20.0)
        bar.close()
    finally:
        root.removeHandler(handler)
    assert handler.stream is sys.__stderr__
    assert "backfill doc" in terminal.getvalue()
    assert "99 fields embedded (+5 cached)" in terminal.getvalue()
    assert "40/100" in terminal.getvalue()
