"""The YAML error file of a load: one list item per skipped line, written as it is met.

Each item has ``file`` (the loaded file), ``line`` (its first line number; ``last_line`` too
when a quoted CSV field spans lines), ``reason`` and ``raw`` (the line's text without its line
end). The file is a YAML list, appended to partition by partition, so it stays valid however
far a load got; its size after each partition is in the manifest, so `--resume` cuts off what
an interrupted partition wrote.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, NamedTuple

import yaml

__all__ = ["Reject", "RejectFile"]


class Reject(NamedTuple):
    """A skipped line (or lines: a CSV record spanning several) and why."""

    line: int
    last_line: int
    raw: str
    reason: str


def render(source: Path, reject: Reject) -> str:
    line, last_line, raw, reason = reject
    item: dict[str, object] = {"file": str(source), "line": line}
    if last_line != line:
        item["last_line"] = last_line
    item["reason"] = reason
    item["raw"] = raw.rstrip("\r\n")
    return yaml.safe_dump([item], allow_unicode=True, sort_keys=False, width=1 << 20)


class RejectFile:
    """Appends rejects of ``source`` to ``path``; created on the first one."""

    def __init__(self, path: Path, source: Path, *, keep_bytes: int = 0) -> None:
        """``keep_bytes``: the size to cut an existing file to (0: start it afresh)."""
        self.path = path
        self.source = source
        self._file: IO[str] | None = None
        self.size = 0
        if path.exists():
            if keep_bytes:
                with path.open("r+b") as f:
                    f.truncate(keep_bytes)
                self.size = keep_bytes
            else:
                path.unlink()

    def write(self, rejects: list[Reject]) -> int:
        """Write ``rejects`` and make them durable; returns the file's size."""
        if not rejects:
            return self.size
        if self._file is None:
            self._file = self.path.open("a", encoding="utf-8")
        self._file.write("".join(render(self.source, r) for r in rejects))
        self._file.flush()
        os.fsync(self._file.fileno())
        self.size = self._file.tell()
        return self.size

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
