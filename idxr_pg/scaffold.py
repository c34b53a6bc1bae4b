"""`idxr-pg init`: a first idxr.yaml from the Pydantic models of a module, for review.

Every model class defined in the module becomes one entity entry: name = snake_case of the
class, table = prefix + a plural of that name, key = the field named ``id``,
``<name>_id`` or ``uuid`` (else the first field). The model's fields are listed as YAML
comments with their types. Guesses are marked as such in the header.
"""

from __future__ import annotations

import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from idxr_pg.app_imports import ApplicationImportError, import_application_module
from idxr_pg.config import DEFAULT_MODEL, is_identifier, validate_table_name
from idxr_pg.errors import IdxrError


class ScaffoldError(IdxrError):
    """The models module cannot be scaffolded; the message names the module or file."""


_CAMEL_BOUNDARY_1 = re.compile(r"(.)([A-Z][a-z]+)")
_CAMEL_BOUNDARY_2 = re.compile(r"([a-z0-9])([A-Z])")
_NON_LABEL = re.compile(r"[^a-z0-9_]+")
_QUALIFIED = re.compile(r"\b(?:[A-Za-z_][A-Za-z0-9_]*\.)+([A-Za-z_][A-Za-z0-9_]*)")
_KEY_NAMES = ("id", "{name}_id", "uuid", "key")


def snake_case(name: str) -> str:
    """``ProductBlock`` -> ``product_block``, ``HTTPServer`` -> ``http_server``."""
    text = _CAMEL_BOUNDARY_2.sub(r"\1_\2", _CAMEL_BOUNDARY_1.sub(r"\1_\2", name)).lower()
    text = _NON_LABEL.sub("_", text).strip("_")
    return (text or "entity")[:63]


def pluralize(word: str) -> str:
    """A plural good enough for a table-name guess: ``category`` -> ``categories``."""
    if re.search(r"[^aeiou]y$", word):
        return word[:-1] + "ies"
    if re.search(r"(s|x|z|ch|sh)$", word):
        return word + "es"
    return word + "s"


def type_name(annotation: Any) -> str:
    """Readable type: ``str``, ``list[Block]``, ``int | None``, ``Literal['a', 'b']``."""
    if annotation is None or annotation is type(None):
        return "None"
    if isinstance(annotation, type) and not isinstance(annotation, types.GenericAlias):
        return annotation.__name__
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(arg) for arg in typing.get_args(annotation))
    text = repr(annotation).replace("typing.", "")
    return _QUALIFIED.sub(r"\1", text)


@dataclass(frozen=True)
class ScaffoldEntry:
    name: str
    model: str
    table: str
    key: str
    fields: list[tuple[str, str]]
    key_guessed_from_first_field: bool
    used_in: tuple[str, ...] = ()
    """Other models of the module with a field of this type (then likely not an entity)."""


def _column_name(field_name: str, info: Any) -> str:
    alias = getattr(info, "validation_alias", None) or getattr(info, "alias", None)
    return alias if isinstance(alias, str) and is_identifier(alias) else field_name


def guess_key(name: str, model: type[BaseModel]) -> tuple[str, bool]:
    """(column, guessed_from_first_field)."""
    columns = {field: _column_name(field, info) for field, info in model.model_fields.items()}
    for pattern in _KEY_NAMES:
        candidate = pattern.format(name=name)
        if candidate in columns:
            return columns[candidate], False
    if not columns:
        raise ScaffoldError(f"model {model.__module__}:{model.__qualname__} has no fields")
    return next(iter(columns.values())), True


def find_models(module_name: str) -> list[type[BaseModel]]:
    """Pydantic model classes defined in (not imported into) the module, in definition order."""
    try:
        module = import_application_module(module_name)
    except ApplicationImportError as exc:
        raise ScaffoldError(str(exc)) from exc
    models = [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, BaseModel)
        and value is not BaseModel
        and value.__module__ == module.__name__
        and not getattr(value, "__pydantic_generic_metadata__", {}).get("parameters")
    ]
    if not models:
        raise ScaffoldError(f"module {module_name!r} defines no Pydantic model classes")
    return models


def _referenced(annotation: Any) -> set[type]:
    found: set[type] = set()
    if isinstance(annotation, type):
        found.add(annotation)
    for arg in typing.get_args(annotation):
        found |= _referenced(arg)
    return found


def _users(models: list[type[BaseModel]]) -> dict[type, list[str]]:
    """For each model, the other models that have a field of its type."""
    users: dict[type, list[str]] = {}
    for owner in models:
        for info in owner.model_fields.values():
            for used in _referenced(info.annotation):
                if used is not owner and owner.__name__ not in users.setdefault(used, []):
                    users[used].append(owner.__name__)
    return users


def build_entries(module_name: str, table_prefix: str = "public.") -> list[ScaffoldEntry]:
    entries: list[ScaffoldEntry] = []
    seen: set[str] = set()
    models = find_models(module_name)
    users = _users(models)
    for model in models:
        name = snake_case(model.__name__)
        if name in seen:
            continue
        seen.add(name)
        table = f"{table_prefix}{pluralize(name)}"
        try:
            validate_table_name(table)
        except ValueError as exc:
            raise ScaffoldError(
                f"--table-prefix {table_prefix!r} gives table {table!r}, which {exc}"
            ) from None
        key, guessed = guess_key(name, model)
        fields = [
            (_column_name(field, info), type_name(info.annotation))
            for field, info in model.model_fields.items()
        ]
        entries.append(
            ScaffoldEntry(
                name=name,
                model=f"{model.__module__}:{model.__qualname__}",
                table=table,
                key=key,
                fields=fields,
                key_guessed_from_first_field=guessed,
                used_in=tuple(users.get(model, ())),
            )
        )
    return entries


def render(entries: list[ScaffoldEntry], module_name: str) -> str:
    """The YAML text: header comments, one entry per model with its fields as comments."""
    lines = [
        f"# idxr-pg config scaffolded by `idxr-pg init --models {module_name}`.",
        "# Review before use: table names and keys are guesses; delete the entries of models",
        "# that are not stored entities (nested parts of another model, for instance).",
        "# Each entry's fields are listed as comments for reference.",
        "# Docs: name = the root label of every indexed path; table = the source table;",
        "# key = its key column; refresh = on_change | manual | every <N><s|m|h|d>.",
        "",
        "embedding:",
        f"  model: {DEFAULT_MODEL}",
        "",
        "entities:",
    ]
    for entry in entries:
        data = {
            "name": entry.name,
            "model": entry.model,
            "table": entry.table,
            "key": entry.key,
            "refresh": "on_change",
        }
        dumped = yaml.safe_dump(data, sort_keys=False, default_flow_style=False).splitlines()
        if entry.used_in:
            lines.append(
                f"  # {entry.model.partition(':')[2]} is a field type of "
                f"{', '.join(entry.used_in)}: probably part of it, not an entity of its own"
            )
        lines.append(f"  - {dumped[0]}")
        for line in dumped[1:]:
            lines.append(f"    {line}")
            if line.startswith("key:") and entry.key_guessed_from_first_field:
                lines.append("    # ^ no id / <name>_id / uuid field: the first field is a guess")
        lines.append("    # fields:")
        lines.extend(f"    #   {field}: {kind}" for field, kind in entry.fields)
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def scaffold(
    module_name: str, output: Path | None, *, table_prefix: str = "public.", force: bool = False
) -> tuple[str, list[ScaffoldEntry]]:
    """Render the config for ``module_name``; write it to ``output`` unless None (stdout)."""
    if output is not None and output.exists() and not force:
        raise ScaffoldError(f"{output} already exists; pass --force to overwrite it")
    entries = build_entries(module_name, table_prefix)
    text = render(entries, module_name)
    if output is not None:
        try:
            output.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise ScaffoldError(f"cannot write {output}: {exc.strerror}") from None
    return text, entries
