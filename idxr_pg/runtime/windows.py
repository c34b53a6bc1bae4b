"""Off-peak windows: the time of day in which a kind's queue may be processed (issue 18).

An entity's ``window: "22:00-06:00"`` (config) lets the worker claim the kind's changes only
while the clock of day is inside [start, end); outside it, changes accumulate. A window whose
end is before its start crosses midnight (22:00-06:00 is 22:00..23:59 and 00:00..05:59). The
times are UTC, so every worker agrees whatever the time zone of its machine. Pure: the clock is
passed in (`is_open(now)`), the worker passes ``datetime.now(timezone.utc)``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, time

__all__ = ["TimeWindow", "WindowError", "parse_window"]

_WINDOW = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


class WindowError(ValueError):
    """A window that is not 'HH:MM-HH:MM' (24-hour clock, UTC) or is empty."""


def _clock(hours: str, minutes: str, text: str) -> time:
    h, m = int(hours), int(minutes)
    if h == 24 and m == 0:
        return time(0, 0)  # "24:00" as an end means midnight
    if h > 23 or m > 59:
        raise WindowError(f"{text!r}: {hours}:{minutes} is not a time of day (00:00-23:59)")
    return time(h, m)


@dataclass(frozen=True)
class TimeWindow:
    start: time
    end: time

    @property
    def crosses_midnight(self) -> bool:
        return self.end < self.start

    def contains(self, clock: time) -> bool:
        """Whether the time of day ``clock`` (UTC) is inside [start, end)."""
        clock = clock.replace(tzinfo=None)
        if self.crosses_midnight:
            return clock >= self.start or clock < self.end
        return self.start <= clock < self.end

    def is_open(self, now: datetime) -> bool:
        """Whether the moment ``now`` is inside the window; a naive ``now`` is taken as UTC."""
        if now.tzinfo is not None:
            now = now.astimezone(UTC)
        return self.contains(now.time())

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


def parse_window(text: str) -> TimeWindow:
    """'HH:MM-HH:MM' (UTC) → TimeWindow; WindowError says what is wrong."""
    match = _WINDOW.match(text) if isinstance(text, str) else None
    if not match:
        raise WindowError(
            f"{text!r}: a window is 'HH:MM-HH:MM' in UTC on a 24-hour clock, e.g. '22:00-06:00'"
        )
    start = _clock(match[1], match[2], text)
    end = _clock(match[3], match[4], text)
    if start == end:
        raise WindowError(
            f"{text!r}: start and end are the same time, so the window is empty "
            "(leave `window` out to process at any time)"
        )
    return TimeWindow(start, end)
