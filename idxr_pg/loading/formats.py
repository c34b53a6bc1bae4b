"""CSV and JSONL records from a file's lines: values in the plan's column order, or why not.

A bad line is one with the wrong number of CSV fields, invalid JSON (or JSON that is not an
object), a NUL byte, bytes the file's encoding cannot decode, or no value for a column that
needs one (the key, a NOT NULL column without default). It becomes a record with ``problem``
set and no values; blank lines are skipped. A CSV field that is empty is NULL. Type casts are
checked by PostgreSQL when the rows are copied (`idxr_pg.db.loads.copy_staging`).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from itertools import islice
from typing import NamedTuple

from idxr_pg.loading.lines import Line

__all__ = [
    "FORMATS",
    "Record",
    "csv_header",
    "csv_records",
    "json_keys",
    "json_value",
    "jsonl_records",
]

FORMATS = ("csv", "jsonl")
SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


_compact = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def json_value(value: object) -> str | None:
    """A JSONL field's value as the text COPY gets: None for null (or a missing key), a string
    as it is, ``true``/``false``, a number's JSON text, an object or array as compact JSON."""
    if value is None or isinstance(value, str):
        return value
    if value is True:
        return "true"
    if value is False:
        return "false"
    return _compact(value)


class Record(NamedTuple):
    first_line: int
    last_line: int
    end: int  # byte offset just past the record
    raw: str
    values: tuple[str | None, ...] | None  # None when the record is rejected
    problem: str | None = None


class _Feed:
    """The lines handed to csv.reader, kept until the record they make is taken."""

    __slots__ = ("_lines", "pending")

    def __init__(self, lines: Iterator[Line]) -> None:
        self._lines = lines
        self.pending: list[Line] = []

    def __iter__(self) -> _Feed:
        return self

    def __next__(self) -> str:
        line = next(self._lines)
        self.pending.append(line)
        return line.text


def csv_header(lines: Iterator[Line], delimiter: str = ",") -> tuple[list[str], int, int]:
    """The header's field names (stripped), its last line number and end offset."""
    feed = _Feed(lines)
    reader = csv.reader(feed, delimiter=delimiter)
    for row in reader:
        if row:
            last = feed.pending[-1]
            return [name.strip() for name in row], last.number, last.end
        feed.pending.clear()
    return [], 0, 0


def _missing(values: Sequence[str | None], required: Sequence[tuple[int, str]]) -> str | None:
    for index, column in required:
        if values[index] is None:
            return f"no value for column {column} (it needs one)"
    return None


def csv_records(
    lines: Iterator[Line],
    width: int,
    picks: Sequence[int],
    required: Sequence[tuple[int, str]],
    delimiter: str = ",",
) -> Iterator[Record]:
    """Records of a CSV body; ``width``: the header's field count; ``picks``: the field index of
    each column; ``required``: ``(column index, name)`` that must not be NULL."""
    feed = _Feed(lines)
    reader = csv.reader(feed, delimiter=delimiter)
    while True:
        try:
            row = next(reader)
            problem = None
        except StopIteration:
            return
        except csv.Error as exc:
            row = None
            problem = f"not valid CSV: {exc}"
        pending = feed.pending
        feed.pending = []
        if not pending:
            return
        last = pending[-1]
        raw = pending[0].text if len(pending) == 1 else "".join(line.text for line in pending)
        if row is not None and not row:
            continue  # a blank line
        values = None
        for line in pending:
            if line.bad:
                problem = line.bad
                break
        if problem is None:
            if "\x00" in raw:
                problem = "NUL byte"
            elif len(row) != width:
                problem = f"wrong column count: {len(row)} fields, the header has {width}"
            else:
                values = tuple(row[i] or None for i in picks)
                problem = _missing(values, required)
                if problem:
                    values = None
        yield Record(pending[0].number, last.number, last.end, raw, values, problem)


def _parse_object(text: str) -> tuple[dict | None, str | None]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        return None, f"invalid JSON: {exc}"
    if not isinstance(data, dict):
        return None, f"not a JSON object (a JSON {type(data).__name__})"
    return data, None


def jsonl_records(
    lines: Iterator[Line], fields: Sequence[str], required: Sequence[tuple[int, str]]
) -> Iterator[Record]:
    """Records of a JSONL file: one JSON object per line; ``fields``: the key of each column."""
    for line in lines:
        text = line.text
        stripped = text.strip()
        if not stripped:
            continue
        values = None
        if line.bad:
            problem = line.bad
        elif "\x00" in text or "\\u0000" in text:
            problem = "NUL byte"
        else:
            data, problem = _parse_object(stripped)
            if data is not None:
                values = tuple(json_value(data.get(name)) for name in fields)
                problem = _missing(values, required)
                if problem:
                    values = None
        yield Record(line.number, line.number, line.end, text, values, problem)


def json_keys(lines: Iterator[Line], sample: int = 1000) -> dict[str, object]:
    """The keys of the first ``sample`` JSON objects, in order of appearance, each with its
    first non-null value (to guess column types for --create)."""
    keys: dict[str, object] = {}
    for line in islice(lines, sample):
        if not line.text.strip() or line.bad:
            continue
        data, _ = _parse_object(line.text.strip())
        for key, value in (data or {}).items():
            if keys.get(key) is None:
                keys[key] = value
    return keys
