"""Which file field goes to which table column: the header (or JSON keys), ``--map``, the key.

Pure: it works on names and catalog facts handed to it, and raises `LoadError` with a message
naming the option, file, table or column at fault.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import json
import types
import typing
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from idxr_pg.loading.errors import LoadError

__all__ = [
    "Plan",
    "create_columns_from_fields",
    "create_columns_from_json",
    "create_columns_from_model",
    "parse_maps",
    "plan_load",
]


@dataclass(frozen=True)
class Plan:
    """The columns a load writes (sorted by name), the file field each one comes from, the key
    column, and the columns that need a value."""

    columns: tuple[str, ...]
    fields: tuple[str, ...]
    key: str
    required: tuple[tuple[int, str], ...]  # (index into columns, column name)

    @property
    def mapping(self) -> dict[str, str]:
        return dict(zip(self.columns, self.fields, strict=True))

    def in_field_order(self, header: Sequence[str]) -> list[str]:
        """The columns in the order of their fields in ``header`` (CSV: every field has one)."""
        by_field = dict(zip(self.fields, self.columns, strict=True))
        return [by_field[name] for name in header]

    def picks(self, header: Sequence[str]) -> list[int]:
        """The header position of each column's field (CSV)."""
        return [header.index(name) for name in self.fields]

    def signature(self, file_format: str, codec: str) -> str:
        """What must match for an earlier load of the same bytes to count as this load."""
        text = json.dumps([file_format, codec, self.key, self.columns, self.fields])
        return hashlib.sha256(text.encode()).hexdigest()


def parse_maps(maps: Sequence[str]) -> dict[str, str]:
    """``--map column=field`` options as ``{column: field}``."""
    out: dict[str, str] = {}
    for item in maps:
        column, sep, field = item.partition("=")
        column, field = column.strip(), field.strip()
        if not sep or not column or not field:
            raise LoadError(f"--map {item!r}: expected COLUMN=FIELD (e.g. --map name=full_name)")
        if column in out:
            raise LoadError(f"--map {item!r}: column {column} is mapped twice")
        out[column] = field
    return out


def plan_load(
    *,
    file_label: str,
    table: str,
    file_fields: Sequence[str],
    header: bool,
    columns: Mapping[str, bool],
    key: str,
    maps: Mapping[str, str],
) -> Plan:
    """The plan of a load.

    ``file_fields``: the CSV header (``header``: every field must land in a column) or the keys
    met in a JSONL sample (unknown keys are ignored); ``columns``: the table's writable columns,
    each with whether it needs a value (NOT NULL without default); ``key``: the key column.
    """
    for column, field in maps.items():
        if column not in columns:
            raise LoadError(f"--map {column}={field}: table {table} has no column {column}")
        if header and field not in file_fields:
            raise LoadError(
                f"--map {column}={field}: {file_label} has no field {field!r} "
                f"(its fields: {', '.join(file_fields)})"
            )
    if header:
        duplicates = sorted({f for f in file_fields if file_fields.count(f) > 1})
        if duplicates:
            raise LoadError(f"{file_label}: the header repeats {', '.join(duplicates)}")
        if "" in file_fields:
            raise LoadError(f"{file_label}: header field {file_fields.index('') + 1} has no name")
    by_field = {field: column for column, field in maps.items()}
    chosen: dict[str, str] = dict(maps)
    unplaced = []
    for field in file_fields:
        if field in by_field:
            continue
        if field in columns and field not in chosen:
            chosen[field] = field
        elif header:
            unplaced.append(field)
    if unplaced:
        raise LoadError(
            f"{file_label}: field(s) {', '.join(unplaced)} have no column in table {table} "
            "(map each with --map COLUMN=FIELD)"
        )
    if key not in chosen:
        raise LoadError(
            f"{file_label}: no field for the key column {key} of table {table} "
            f"(the file's fields: {', '.join(file_fields) or 'none'}; map one with --map "
            f"{key}=FIELD, or choose the key with --key)"
        )
    ordered = tuple(sorted(chosen))
    required = tuple(
        (i, column) for i, column in enumerate(ordered) if column == key or columns[column]
    )
    return Plan(ordered, tuple(chosen[c] for c in ordered), key, required)


# ---- --create ------------------------------------------------------------------------------


def create_columns_from_fields(
    fields: Sequence[str], maps: Mapping[str, str]
) -> list[tuple[str, str]]:
    """CSV header → ``[(column, 'text')]`` (a mapped field takes its column's name)."""
    by_field = {field: column for column, field in maps.items()}
    return [(by_field.get(field, field), "text") for field in fields]


_JSON_TYPES: tuple[tuple[type, str], ...] = (
    (bool, "boolean"),
    (int, "bigint"),
    (float, "double precision"),
    (str, "text"),
    (dict, "jsonb"),
    (list, "jsonb"),
)


def create_columns_from_json(
    keys: Mapping[str, object], maps: Mapping[str, str]
) -> list[tuple[str, str]]:
    """JSONL sample keys → columns typed from each key's first non-null value."""
    by_field = {field: column for column, field in maps.items()}
    out = []
    for key, value in keys.items():
        sql_type = next((t for py, t in _JSON_TYPES if isinstance(value, py)), "text")
        out.append((by_field.get(key, key), sql_type))
    return out


_MODEL_TYPES: tuple[tuple[Any, str], ...] = (
    (bool, "boolean"),
    (int, "bigint"),
    (float, "double precision"),
    (decimal.Decimal, "numeric"),
    (dt.datetime, "timestamptz"),
    (dt.date, "date"),
    (dt.time, "time"),
    (uuid.UUID, "uuid"),
    (str, "text"),
)


def _sql_type(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _sql_type(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _sql_type(args[0]) if len(args) == 1 else "jsonb"
    if origin is typing.Literal:
        return "text"
    if origin is not None:
        return "jsonb"  # list[...], dict[...]
    if isinstance(annotation, type):
        if issubclass(annotation, BaseModel):
            return "jsonb"
        for py, sql_type in _MODEL_TYPES:
            if issubclass(annotation, py):
                return sql_type
    return "text"


def create_columns_from_model(model: type[BaseModel]) -> list[tuple[str, str]]:
    """A Pydantic model's fields → typed columns (nested models, lists, dicts: jsonb)."""
    return [(name, _sql_type(info.annotation)) for name, info in model.model_fields.items()]
