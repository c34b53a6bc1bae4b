"""`idxr-pg load --create --model M --add-kind NAME`: the entity kind of a created table, added
to the YAML config.

The entry is appended as text, so the file's comments and layout stay; the result must parse
to the old config plus the new kind (with the list indented either way), else nothing is
written and the error shows the entry to add by hand.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from idxr_pg.config import ConfigError, EntityConfig, load_config, parse_config
from idxr_pg.loading.errors import LoadError

__all__ = ["add_kind"]


def _entry(name: str, model: str, table: str, key: str, indent: str) -> str:
    pad = indent + "  "
    return f"{indent}- name: {name}\n{pad}model: {model}\n{pad}table: {table}\n{pad}key: {key}\n"


_ENTITIES = re.compile(r"^entities:[ \t]*(#.*)?$", re.M)


def _split_after_entities(text: str) -> tuple[str, str]:
    """The text up to the end of the top-level ``entities:`` list, and the rest."""
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if _ENTITIES.match(line)), None)
    if start is None:
        return text, ""
    end = start + 1
    while end < len(lines) and (
        not lines[end].strip() or lines[end].startswith((" ", "\t", "-", "#"))
    ):
        end += 1
    while end > start + 1 and not lines[end - 1].strip():
        end -= 1
    return "".join(lines[:end]), "".join(lines[end:])


def add_kind(path: Path, name: str, model: str, table: str, key: str) -> bool:
    """Add the kind to the config at ``path`` (created if missing); False when a kind of that
    name is there already (then nothing changes). Raises `LoadError` when it cannot."""
    wanted = EntityConfig(name=name, model=model, table=table, key=key)
    if not path.exists():
        path.write_text("entities:\n" + _entry(name, model, table, key, "  "), encoding="utf-8")
        return True
    try:
        config = load_config(path)
    except ConfigError as exc:
        raise LoadError(f"--add-kind {name}: {exc}") from None
    if any(entity.name == name for entity in config.entities):
        return False
    text = path.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        text += "\n"
    head, tail = _split_after_entities(text)
    candidates = [head + _entry(name, model, table, key, indent) + tail for indent in ("  ", "")]
    if not re.search(r"^entities\s*:", text, re.M):  # no entities key at all
        candidates.insert(0, text + "entities:\n" + _entry(name, model, table, key, "  "))
    for candidate in candidates:
        try:
            parsed = parse_config(yaml.safe_load(candidate), str(path))
        except (yaml.YAMLError, ConfigError):
            continue
        if list(parsed.entities) == [*config.entities, wanted] and parsed.model_dump(
            exclude={"entities"}
        ) == config.model_dump(exclude={"entities"}):
            path.write_text(candidate, encoding="utf-8")
            return True
    raise LoadError(
        f"--add-kind {name}: cannot append to the entities of {path}; add it by hand:\n"
        + _entry(name, model, table, key, "  ")
    )
