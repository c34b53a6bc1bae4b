"""A CSV file's body cut into raw byte chunks at record ends, for COPY to parse as they are.

A chunk ends at a line end once it holds ``rows`` lines and an even number of ``"``
characters: CSV doubles a quote inside a quoted field, so an odd count means a quoted field
(with a line end in it) is still open. A file with a stray quote would never balance: a chunk
is cut anyway at ``rows * MAX_FACTOR`` lines (the bad record is then found line by line).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from idxr_pg.loading.lines import raw_lines

__all__ = ["Chunk", "csv_chunks"]

MAX_FACTOR = 4


class Chunk(NamedTuple):
    start: int  # byte offset of its first line
    end: int  # byte offset just past its last line
    first_line: int
    last_line: int
    lines: list[bytes]

    @property
    def data(self) -> bytes:
        return b"".join(self.lines)


def csv_chunks(
    path: Path, *, start: int, first_number: int, rows: int, cr_only: bool
) -> Iterator[Chunk]:
    """Chunks of ``path`` from byte ``start`` (a record start), lines numbered from
    ``first_number``, of about ``rows`` lines each."""
    with path.open("rb") as f:
        f.seek(start)
        lines: list[bytes] = []
        quotes = size = 0
        for raw in raw_lines(f, cr_only):
            lines.append(raw)
            size += len(raw)
            quotes += raw.count(b'"')
            if len(lines) >= rows and (quotes % 2 == 0 or len(lines) >= rows * MAX_FACTOR):
                yield Chunk(start, start + size, first_number, first_number + len(lines) - 1, lines)
                start += size
                first_number += len(lines)
                lines, quotes, size = [], 0, 0
        if lines:
            yield Chunk(start, start + size, first_number, first_number + len(lines) - 1, lines)
