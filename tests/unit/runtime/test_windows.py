"""Off-peak windows (issue 18): parsing, the clock inside/outside, windows crossing midnight."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta, timezone

import pytest

from idxr_pg.config import ConfigError, parse_config
from idxr_pg.runtime.windows import TimeWindow, WindowError, parse_window


def at(hour: int, minute: int = 0, tz: timezone = UTC) -> datetime:
    return datetime(2026, 12, 1, hour, minute, tzinfo=tz)


def test_a_daytime_window_is_start_inclusive_end_exclusive():
    window = parse_window("09:30-17:00")
    assert window == TimeWindow(time(9, 30), time(17, 0))
    assert not window.crosses_midnight
    assert not window.is_open(at(9, 29))
    assert window.is_open(at(9, 30))
    assert window.is_open(at(16, 59))
    assert not window.is_open(at(17, 0))
    assert not window.is_open(at(0, 0))


def test_a_window_crossing_midnight_is_open_late_and_early():
    window = parse_window("22:00-06:00")
    assert window.crosses_midnight
    for hour, minute in [(22, 0), (23, 59), (0, 0), (3, 15), (5, 59)]:
        assert window.is_open(at(hour, minute)), (hour, minute)
    for hour, minute in [(6, 0), (12, 0), (21, 59)]:
        assert not window.is_open(at(hour, minute)), (hour, minute)


def test_times_are_utc_whatever_the_zone_of_the_clock_passed_in():
    window = parse_window("22:00-06:00")
    plus_two = timezone(timedelta(hours=2))
    assert window.is_open(at(1, 0, plus_two))  # 23:00 UTC
    assert not window.is_open(at(9, 0, plus_two))  # 07:00 UTC
    assert window.is_open(datetime(2026, 12, 1, 23, 0))  # naive: taken as UTC


def test_24_00_ends_at_midnight_and_spaces_are_allowed():
    window = parse_window(" 18:00 - 24:00 ")
    assert str(window) == "18:00-00:00"
    assert window.is_open(at(23, 59)) and not window.is_open(at(0, 0))


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("22-06", "HH:MM-HH:MM"),
        ("22:00", "HH:MM-HH:MM"),
        ("10pm-6am", "HH:MM-HH:MM"),
        ("25:00-06:00", "25:00 is not a time of day"),
        ("22:60-06:00", "22:60 is not a time of day"),
        ("08:00-08:00", "empty"),
    ],
)
def test_bad_windows_are_refused_with_a_clear_message(text, says):
    with pytest.raises(WindowError, match=says):
        parse_window(text)


def entity(**extra):
    return {"name": "item", "model": "m:Item", "table": "public.items", "key": "id", **extra}


def test_the_config_validates_the_window_and_names_the_entity():
    config = parse_config({"entities": [entity(window="22:00-06:00")]}, "idxr.yaml")
    assert config.entities[0].time_window == parse_window("22:00-06:00")
    assert parse_config({"entities": [entity()]}, "idxr.yaml").entities[0].time_window is None
    with pytest.raises(ConfigError, match=r"entities\[0\]\.window.*HH:MM-HH:MM"):
        parse_config({"entities": [entity(window="nightly")]}, "idxr.yaml")
