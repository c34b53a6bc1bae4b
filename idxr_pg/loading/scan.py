"""One pass over a file: size, sha256, and what encoding detection and append checks need."""

from __future__ import annotations

import codecs
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["BLOCK_SIZE", "FileScan", "scan_file"]

BLOCK_SIZE = 1 << 20
HEAD_BYTES = 256 * 1024  # the start of the file, kept as a sample
NON_ASCII_SAMPLE_BYTES = 512 * 1024  # blocks with non-ASCII bytes, kept for detection
_ASCII = bytes(range(128))
# Bytes that cp1252 leaves undefined (latin-1 maps them to C1 control characters).
CP1252_UNDEFINED = frozenset((0x81, 0x8D, 0x8F, 0x90, 0x9D))


@dataclass(frozen=True)
class FileScan:
    """What one read of the whole file found."""

    path: Path
    size: int
    sha256: str
    head: bytes  # the first HEAD_BYTES
    non_ascii_sample: bytes  # up to NON_ASCII_SAMPLE_BYTES of 64 KiB windows with non-ASCII bytes
    valid_utf8: bool
    non_ascii_bytes: frozenset[int]  # every byte value >= 0x80 that occurs
    newlines: int  # b"\n" bytes (an estimate of the line count for progress)
    carriage_returns: int
    last_bytes: bytes  # the file's last 4 bytes
    prefix_sha256: dict[int, str] = field(default_factory=dict)  # sha256 of the first N bytes

    def ends_with_newline(self, codec: str) -> bool:
        """Whether the last line is terminated (an append then starts a new line)."""
        width = 4 if codec.startswith("utf-32") else 2 if codec.startswith("utf-16") else 1
        tail = self.last_bytes[-width:]
        return bool(tail) and tail.decode(codec, "replace") in ("\n", "\r")


def scan_file(path: Path, prefixes: Iterable[int] = ()) -> FileScan:
    """Read ``path`` once; ``prefixes``: sizes whose prefix sha256 to record (appends)."""
    wanted = sorted({p for p in prefixes if p > 0})
    digest = hashlib.sha256()
    prefix_sha: dict[int, str] = {}
    utf8 = codecs.getincrementaldecoder("utf-8")()
    valid_utf8 = True
    seen: set[int] = set()
    head = bytearray()
    sample = bytearray()
    newlines = crs = size = 0
    last = b""
    with path.open("rb") as f:
        while True:
            block = f.read(BLOCK_SIZE)
            if not block:
                break
            # Record the prefix hashes that end inside this block.
            offset = 0
            while wanted and wanted[0] <= size + len(block):
                cut = wanted.pop(0) - size
                digest.update(block[offset:cut])
                offset = cut
                prefix_sha[size + cut] = digest.copy().hexdigest()
            digest.update(block[offset:])
            if len(head) < HEAD_BYTES:
                head += block[: HEAD_BYTES - len(head)]
            if not block.isascii():
                seen.update(block.translate(None, _ASCII))
                if valid_utf8:
                    try:
                        utf8.decode(block)
                    except UnicodeDecodeError:
                        valid_utf8 = False
                if len(sample) < NON_ASCII_SAMPLE_BYTES:
                    _sample_non_ascii(block, sample)
            newlines += block.count(b"\n")
            crs += block.count(b"\r")
            last = (last + block)[-4:]
            size += len(block)
    if valid_utf8:
        try:
            utf8.decode(b"", final=True)
        except UnicodeDecodeError:
            valid_utf8 = False
    return FileScan(
        path=path,
        size=size,
        sha256=digest.hexdigest(),
        head=bytes(head),
        non_ascii_sample=bytes(sample),
        valid_utf8=valid_utf8,
        non_ascii_bytes=frozenset(seen),
        newlines=newlines,
        carriage_returns=crs,
        last_bytes=last,
        prefix_sha256=prefix_sha,
    )


def _sample_non_ascii(block: bytes, sample: bytearray, window: int = 64 * 1024) -> None:
    for start in range(0, len(block), window):
        piece = block[start : start + window]
        if not piece.isascii():
            sample += piece
            if len(sample) >= NON_ASCII_SAMPLE_BYTES:
                return
