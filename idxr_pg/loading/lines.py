"""A file's physical lines, decoded, with their numbers and byte ranges.

Every newline style is a line end: ``\\n``, ``\\r\\n`` and ``\\r`` (a file whose only line
ends are ``\\r``, as old Mac files have). The text keeps its line end (the CSV reader needs it
inside quoted fields); byte offsets let a load start again at any line boundary (`--resume`,
an appended file). A line that does not decode is still yielded, with ``bad`` saying why.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from idxr_pg.loading.encoding import Encoding
from idxr_pg.loading.errors import LoadError

__all__ = ["Line", "read_lines"]

_READ = 1 << 20


class Line(NamedTuple):
    number: int  # 1-based, counted from the start of the file
    start: int  # byte offset of its first byte
    end: int  # byte offset just past its line end
    text: str  # decoded, line end included
    bad: str | None = None  # why it does not decode, if it does not


def read_lines(
    path: Path, encoding: Encoding, *, start: int = 0, first_number: int = 1, cr_only: bool = False
) -> Iterator[Line]:
    """The lines of ``path`` from byte ``start`` (0: after the BOM), numbered from
    ``first_number``. ``cr_only``: lines end with a lone ``\\r`` (ASCII-compatible codecs)."""
    offset = max(start, encoding.bom)
    if not encoding.ascii_compatible:
        yield from _wide_lines(path, encoding.codec, offset, first_number)
        return
    codec = encoding.codec
    number = first_number
    with path.open("rb") as f:
        f.seek(offset)
        raw_lines = _split(f, b"\r") if cr_only else f
        for raw in raw_lines:
            end = offset + len(raw)
            try:
                yield Line(number, offset, end, raw.decode(codec))
            except UnicodeDecodeError as exc:
                yield Line(
                    number,
                    offset,
                    end,
                    raw.decode(codec, "backslashreplace"),
                    f"not valid {codec}: {exc.reason} at byte {offset + exc.start}",
                )
            offset = end
            number += 1


def _split(f: io.BufferedReader, separator: bytes) -> Iterator[bytes]:
    pending = b""
    while True:
        block = f.read(_READ)
        if not block:
            break
        pending += block
        parts = pending.split(separator)
        pending = parts.pop()
        for part in parts:
            yield part + separator
    if pending:
        yield pending


def _wide_lines(path: Path, codec: str, offset: int, number: int) -> Iterator[Line]:
    """UTF-16/32: decoded by the codec, each line's byte length measured by re-encoding it.
    Bytes that do not decode end the load (a line's length is then unknown)."""
    with path.open("rb") as f:
        f.seek(offset)
        text = io.TextIOWrapper(f, encoding=codec, newline="")
        try:
            for line in text:
                end = offset + len(line.encode(codec))
                yield Line(number, offset, end, line)
                offset = end
                number += 1
        except UnicodeDecodeError as exc:
            raise LoadError(
                f"{path}: line {number} is not valid {codec} ({exc.reason}); "
                "give the file's encoding with --encoding"
            ) from None
