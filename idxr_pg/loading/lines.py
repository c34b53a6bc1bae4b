"""A file's physical lines: raw (with their byte ranges) or decoded, with their numbers.

Every newline style is a line end: ``\\n``, ``\\r\\n``, and ``\\r`` in a file whose only line
ends are ``\\r`` (old Mac files; ``cr_only``). A line keeps its line end (the CSV reader needs
it inside quoted fields); byte offsets let a load start again at any line boundary (`--resume`,
an appended file). A line that does not decode is still yielded, with ``bad`` saying why.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple

from idxr_pg.loading.encoding import Encoding
from idxr_pg.loading.errors import LoadError

__all__ = ["Line", "decode_lines", "raw_lines", "read_lines"]

_READ = 1 << 20


class Line(NamedTuple):
    number: int  # 1-based, counted from the start of the file
    start: int  # byte offset of its first byte
    end: int  # byte offset just past its line end
    text: str  # decoded, line end included
    bad: str | None = None  # why it does not decode, if it does not


def raw_lines(f: BinaryIO, cr_only: bool) -> Iterator[bytes]:
    """The lines of an ASCII-compatible binary file from its current position, line ends kept."""
    if not cr_only:
        yield from f
        return
    pending = b""
    while block := f.read(_READ):
        pending += block
        parts = pending.split(b"\r")
        pending = parts.pop()
        for part in parts:
            yield part + b"\r"
    if pending:
        yield pending


def decode_lines(
    lines: Iterable[bytes], codec: str, start: int, first_number: int
) -> Iterator[Line]:
    """Decode raw ``lines`` that begin at byte ``start`` and line ``first_number``."""
    offset = start
    number = first_number
    for raw in lines:
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


def read_lines(
    path: Path, encoding: Encoding, *, start: int = 0, first_number: int = 1, cr_only: bool = False
) -> Iterator[Line]:
    """The lines of ``path`` from byte ``start`` (0: after the BOM), numbered from
    ``first_number``."""
    offset = max(start, encoding.bom)
    if not encoding.ascii_compatible:
        yield from _wide_lines(path, encoding.codec, offset, first_number)
        return
    with path.open("rb") as f:
        f.seek(offset)
        yield from decode_lines(raw_lines(f, cr_only), encoding.codec, offset, first_number)


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
