"""The normalised row and its fingerprint: what decides whether a loaded row changed.

A row is normalised as follows. Its values are the file's fields mapped to the load's
columns, in the columns' name order (so the file's field order does not matter). Each value is
text, or None for SQL NULL:

- the file is decoded first (any encoding, BOM dropped), so the same characters give the same
  value whatever the file's encoding;
- every line end inside a value (``\\r\\n``, ``\\r``) becomes ``\\n``;
- CSV: an empty field is None; every other field is its text as is (no trimming);
- JSONL: null or a missing key is None; a string is its text; true/false are ``true``/``false``;
  a number is its JSON text (``3``, ``2.5``); an object or array is its compact JSON
  (``{"a":1}``, key order as in the file).

The fingerprint is the sha256 of the UTF-8 bytes of ``C + "\\n" + V``, where ``C`` is the JSON
array of the column names and ``V`` the JSON array of the values (``null`` for None), both
compact (``separators=(",", ":")``, non-ASCII characters written as themselves).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

__all__ = ["Fingerprinter", "normalise_json_value", "normalise_text"]

_compact = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def normalise_text(value: str) -> str:
    """A text value with every line end as ``\\n``."""
    if "\r" in value:
        return value.replace("\r\n", "\n").replace("\r", "\n")
    return value


def normalise_json_value(value: Any) -> str | None:
    """A JSONL field's value as loaded text (see the module doc)."""
    if value is None:
        return None
    if isinstance(value, str):
        return normalise_text(value)
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, dict | list):
        return normalise_text(_compact(value))
    return _compact(value)


class Fingerprinter:
    """sha256 fingerprints of rows over fixed ``columns`` (see the module doc)."""

    def __init__(self, columns: Sequence[str]) -> None:
        self._seed = hashlib.sha256(_compact(list(columns)).encode() + b"\n")

    def __call__(self, values: Sequence[str | None]) -> bytes:
        digest = self._seed.copy()
        digest.update(_compact(list(values)).encode())
        return digest.digest()
