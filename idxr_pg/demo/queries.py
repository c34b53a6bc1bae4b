"""The demo's named SQL statements, kept in ``queries.sql`` (``-- name: <name>`` sections)."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

__all__ = ["query"]

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@cache
def _queries() -> dict[str, str]:
    text = resources.files("idxr_pg.demo").joinpath("queries.sql").read_text(encoding="utf-8")
    parts = _NAME.split(text)[1:]  # [name, body, name, body, ...]
    return {name: body.strip() for name, body in zip(parts[::2], parts[1::2], strict=True)}


def query(name: str) -> str:
    """The statement called ``name`` in queries.sql, without its trailing newline."""
    return _queries()[name]
