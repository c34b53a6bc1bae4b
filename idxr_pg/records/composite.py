"""The composite text of an entity: one more record, at the kind's root path (issue 16).

A kind may configure a template over its fields (``composite: "{title}\\n{body}"``). Its text
is stored as one more record of the entity whose path is the kind's root label alone (no
flattened field has that path: every field lies below the root), embedded like any text, so
entity search compares the query with the entity as a whole as well as with each field. Its
content hash follows the record rule, so it is re-embedded only when the text changes.

Placeholders name top-level fields (``{title}``) or reach into nested ones with format's item
syntax (``{product[name]}``, ``{blocks[0][name]}``); a missing or None field gives "".
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from idxr_pg.records.labels import sanitize_label
from idxr_pg.records.record import FieldRecord, ValueType

__all__ = ["CompositeError", "composite_record", "template_fields"]


class CompositeError(ValueError):
    """A composite template that cannot be used (the message names the template)."""


def template_fields(template: str) -> list[str]:
    """The top-level field names a template uses; raises CompositeError for a bad template."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise CompositeError(f"composite template {template!r}: {exc}") from None
    names = []
    for _, field, spec, conversion in parsed:
        if field is None:
            continue
        if not field or spec or conversion:
            raise CompositeError(
                f"composite template {template!r}: use named fields only, without format "
                "specs or conversions (e.g. '{title}\\n{body}')"
            )
        names.append(field.split("[", 1)[0].split(".", 1)[0])
    if not names:
        raise CompositeError(f"composite template {template!r} names no field")
    return names


class _Blank(dict):
    """Format arguments: a missing key, an index past the end or None read as ""."""

    def __missing__(self, key: str) -> str:
        return ""


def _wrap(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, Mapping):
        return _Blank({k: _wrap(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return _BlankList(_wrap(v) for v in value)
    return value


class _BlankList(list):
    def __getitem__(self, index: Any) -> Any:
        try:
            return super().__getitem__(index)
        except (IndexError, TypeError):
            return ""


def composite_record(instance: BaseModel, root: str, template: str) -> FieldRecord | None:
    """The entity's composite record, or None when the template leaves no text."""
    values = _wrap(instance.model_dump(mode="json"))
    try:
        text = template.format_map(values)
    except (KeyError, AttributeError, ValueError) as exc:
        raise CompositeError(f"composite template {template!r}: {exc}") from None
    text = text.strip()
    if not text:
        return None
    return FieldRecord.create(sanitize_label(root), text, ValueType.STRING, embeddable=True)
