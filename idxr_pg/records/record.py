"""The record model: one indexed ``path: value`` pair per leaf field of an entity.

This module is the one place for the hashing rule and for the "value carries meaning"
check that decides, together with the declared type, whether a field is embedded.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import date, datetime, time
from enum import StrEnum

__all__ = [
    "FieldRecord",
    "ValueType",
    "content_hash",
    "is_meaningful_text",
    "make_record",
]


class ValueType(StrEnum):
    """Type label of a record's value.

    The values are a database contract: the PostgreSQL enum ``idxr.value_type`` has
    exactly these labels, in this order.
    """

    STRING = "string"
    INTEGER = "integer"
    FLOAT = "float"
    BOOLEAN = "boolean"
    UUID = "uuid"
    DATETIME = "datetime"
    DATE = "date"
    TIME = "time"
    DECIMAL = "decimal"


def content_hash(path: str, value: str, value_type: ValueType) -> str:
    """Hex sha256 of ``f"{path}:{value}:{value_type}"`` with the lowercase type label."""
    payload = f"{path}:{value}:{value_type}"  # a StrEnum formats as its lowercase value
    # surrogatepass: a str taken from JSON may hold a lone surrogate; hash it rather than fail.
    return hashlib.sha256(payload.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class FieldRecord:
    """One leaf of a flattened entity, as stored in ``idxr.search_index``."""

    path: str
    value: str
    value_type: ValueType
    content_hash: str
    embeddable: bool

    @property
    def embedding_text(self) -> str:
        """The text handed to the embedding model."""
        return f"{self.path}: {self.value}"

    @classmethod
    def create(cls, path: str, value: str, value_type: ValueType, embeddable: bool) -> FieldRecord:
        """The record builder (every record is made here): the value as it will be stored,
        its content hash computed on that stored value.

        PostgreSQL text cannot hold U+0000, so NUL characters are stripped from the value;
        a text left without meaning by that (``"\\x00"``) is not embeddable.
        """
        if "\x00" in value:
            value = value.replace("\x00", "")
            embeddable = embeddable and is_meaningful_text(value)
        return cls(path, value, value_type, content_hash(path, value, value_type), embeddable)


def make_record(path: str, value: str, value_type: ValueType, embeddable: bool) -> FieldRecord:
    """Build a `FieldRecord` (see `FieldRecord.create`), computing its content hash."""
    return FieldRecord.create(path, value, value_type, embeddable)


_BOOLEAN_WORDS = frozenset({"true", "false", "yes", "no", "on", "off", "t", "f", "y", "n"})
_NUMBER_WORDS = frozenset({"nan", "inf", "infinity", "+inf", "-inf", "+infinity", "-infinity"})
_UUID_RE = re.compile(
    r"(?:urn:uuid:)?\{?[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}\}?",
    re.IGNORECASE,
)
# Numbers as people write them: grouped thousands, a currency sign or a percent.
_NUMBER_RE = re.compile(r"[+-]?[$€£¥]?\s?\d[\d,_ ]*(?:\.\d*)?(?:[eE][+-]?\d+)?\s?%?")
# Common non-ISO dates: 31/12/2024, 12-31-24, 31.12.2024, 2024/12/31.
_DATE_RE = re.compile(r"\d{1,4}[/.-]\d{1,2}[/.-]\d{1,4}")
_NUMERIC_START = frozenset("0123456789+-.$€£¥")


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return _NUMBER_RE.fullmatch(s) is not None
    return True


def _is_temporal(s: str) -> bool:
    if _DATE_RE.fullmatch(s):
        return True
    for parse in (datetime.fromisoformat, date.fromisoformat, time.fromisoformat):
        try:
            parse(s)
        except ValueError:
            continue
        return True
    return False


def is_meaningful_text(value: str) -> bool:
    """Whether a text value carries meaning worth embedding.

    False for blank text, UUIDs, numbers, date/time/datetime strings and boolean words
    (true/false, yes/no, on/off and their one-letter forms), case-insensitively.
    """
    s = value.strip()
    if not s:
        return False
    lowered = s.lower()
    if lowered in _BOOLEAN_WORDS or lowered in _NUMBER_WORDS:
        return False
    if len(s) >= 32 and _UUID_RE.fullmatch(s):
        return False
    if s[0] in _NUMERIC_START or (s[0] in "Tt" and s[1:2].isdigit()):
        return not (_is_number(s) or _is_temporal(s))
    return True
