"""The shape of an entity model, and what changed between two shapes.

A shape is what `idxr_pg.records.traverse.flatten` can emit for a model, read from the same
compiled plans: ``{path pattern: type}``. Patterns are record paths with ``*`` for a list
index or a mapping key (``article.tags.*``); types are the value type labels (``string``,
``integer``...), ``string:Path`` for other classes stored as text, ``enum(string)`` /
``literal(integer)``, ``any``, unions as ``integer|string``, and for containers ``object``,
``list``, ``tuple``, ``map`` (their members are patterns of their own). A model that contains
itself is cut at the repetition (``object Node (recursive)``).

`diff_shapes` says what changed, by these rules:

- **retyped**: a pattern in both shapes whose type differs (what lies below it is not
  listed again);
- **removed** / **added**: the top-most patterns only in the old / new shape;
- **renamed**: a removed and an added field under the same parent whose whole subtree is the
  same (same types, same member patterns), when that pairing is unique under the parent
  (one removed and one added field of that subtree). Two removed strings and one added
  string under one parent stay removed + added: the shape cannot tell which one was renamed.
  The values can: `idxr-pg plan` checks each rename against the stored content hashes (a
  record at the new path hashes, as if at the old path, to the stored hash there).

Renames are descriptive: indexing has the same work either way (the record path is part of
the embedding text, so a renamed field's texts are new texts).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, RootModel

from idxr_pg.records import traverse as _t
from idxr_pg.records.labels import sanitize_label

__all__ = ["Shape", "ShapeChange", "diff_shapes", "model_shape", "rename_path"]

Shape = dict[str, str]
"""``{path pattern: type}``; see the module docstring."""

ANY_LABEL = "*"
_MAX_DEPTH = _t.DEFAULT_MAX_DEPTH


def model_shape(model_cls: type[BaseModel], root: str) -> Shape:
    """The shape of ``model_cls`` flattened under root label ``root`` (the kind name)."""
    shape: Shape = {}
    _walk(_t._compile(model_cls), sanitize_label(root), shape, (), 0)
    return shape


def _merge(shape: Shape, path: str, label: str) -> None:
    before = shape.get(path)
    if before is None or before == label:
        shape[path] = label
    else:
        shape[path] = "|".join(sorted(set(before.split("|")) | set(label.split("|"))))


def _walk(
    plan: Any, path: str, shape: Shape, models: tuple[type, ...], depth: int, aliases: int = 0
) -> None:
    """Add what ``plan`` emits at ``path`` (and below) to ``shape``."""
    kind = plan.kind
    if kind == _t._SKIP:
        return
    if kind in (_t._SCALAR, _t._RUNTIME):
        _merge(shape, path, plan.label)
        return
    if kind == _t._ALIAS:
        if aliases > _MAX_DEPTH:  # a recursive alias: cut like a recursive model
            _merge(shape, path, "any (recursive)")
            return
        _walk(plan.target, path, shape, models, depth, aliases + 1)
        return
    if kind == _t._UNION:
        for member in plan.members:
            _walk(member, path, shape, models, depth, aliases)
        return
    if depth > _MAX_DEPTH:
        _merge(shape, path, "any (too deep)")
        return
    if kind == _t._MODEL:
        cls = plan.cls
        if cls in models:
            _merge(shape, path, f"object {cls.__name__} (recursive)")
            return
        fields = _t._model_plan(cls)
        if issubclass(cls, RootModel):
            _walk(fields.plans[0], path, shape, (*models, cls), depth, aliases)
            return
        _walk(fields, path, shape, (*models, cls), depth, aliases)
        return
    if kind == _t._SEQ:
        _merge(shape, path, "list")
        _walk(plan.item, f"{path}.{ANY_LABEL}", shape, models, depth + 1, aliases)
    elif kind == _t._TUPLE:
        _merge(shape, path, "tuple")
        for index, item in enumerate(plan.items):
            _walk(item, f"{path}.{index}", shape, models, depth + 1, aliases)
    elif kind == _t._MAP:
        _merge(shape, path, "map")
        _walk(plan.value_plan, f"{path}.{ANY_LABEL}", shape, models, depth + 1, aliases)
    elif kind == _t._FIELDS:
        _merge(shape, path, "object")
        for label, member in zip(plan.labels, plan.plans, strict=True):
            _walk(member, f"{path}.{label}", shape, models, depth + 1, aliases)


# --------------------------------------------------------------------------- diff


def _parent(path: str) -> str:
    return path.rpartition(".")[0]


def _under(path: str, ancestors: Iterable[str]) -> bool:
    return any(path.startswith(a + ".") for a in ancestors)


def _subtree(shape: Mapping[str, str], top: str) -> tuple[tuple[str, str], ...]:
    """The patterns at and below ``top``, relative to it, with their types."""
    return tuple(
        sorted((p[len(top) :], t) for p, t in shape.items() if p == top or p.startswith(top + "."))
    )


@dataclass(frozen=True)
class ShapeChange:
    """What differs from the recorded shape to the model's; empty: nothing. ``unknown``: the
    recorded fingerprint differs but no shape was recorded (an index from before shapes)."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    renamed: list[tuple[str, str]] = field(default_factory=list)  # (old, new)
    retyped: list[tuple[str, str, str]] = field(default_factory=list)  # (path, old, new)
    exclude_paths: tuple[list[str], list[str]] | None = None  # (old, new) when they differ
    unknown: bool = False

    def __bool__(self) -> bool:
        return bool(
            self.added
            or self.removed
            or self.renamed
            or self.retyped
            or self.exclude_paths
            or self.unknown
        )

    def summary(self) -> str:
        """One line: ``added article.summary; renamed article.body -> article.text``."""
        if self.unknown:
            return "model changed (its earlier shape was not recorded)"
        parts = []
        if self.added:
            parts.append("added " + ", ".join(self.added))
        if self.removed:
            parts.append("removed " + ", ".join(self.removed))
        if self.renamed:
            parts.append("renamed " + ", ".join(f"{old} -> {new}" for old, new in self.renamed))
        if self.retyped:
            parts.append(
                "retyped " + ", ".join(f"{p} ({old} -> {new})" for p, old, new in self.retyped)
            )
        if self.exclude_paths is not None:
            old, new = self.exclude_paths
            parts.append(f"exclude_paths {old} -> {new}")
        return "; ".join(parts) or "no change"

    def as_dict(self) -> dict[str, Any]:
        return {
            "summary": self.summary(),
            "added": list(self.added),
            "removed": list(self.removed),
            "renamed": [list(pair) for pair in self.renamed],
            "retyped": [list(item) for item in self.retyped],
            "exclude_paths": None if self.exclude_paths is None else list(self.exclude_paths),
            "unknown": self.unknown,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ShapeChange:
        excluded = data.get("exclude_paths")
        return cls(
            added=list(data.get("added", ())),
            removed=list(data.get("removed", ())),
            renamed=[(a, b) for a, b in data.get("renamed", ())],
            retyped=[(p, a, b) for p, a, b in data.get("retyped", ())],
            exclude_paths=None if excluded is None else (list(excluded[0]), list(excluded[1])),
            unknown=bool(data.get("unknown", False)),
        )


def diff_shapes(
    old: Mapping[str, str],
    new: Mapping[str, str],
    *,
    old_excluded: Iterable[str] = (),
    new_excluded: Iterable[str] = (),
) -> ShapeChange:
    """What changed from ``old`` to ``new`` (rules in the module docstring)."""
    retyped = sorted((p, old[p], new[p]) for p in old.keys() & new.keys() if old[p] != new[p])
    retyped_paths = [p for p, _, _ in retyped]
    retyped = [item for item in retyped if not _under(item[0], retyped_paths)]
    gone = set(old) - set(new)
    came = set(new) - set(old)
    removed = sorted(p for p in gone if not _under(p, gone) and not _under(p, retyped_paths))
    added = sorted(p for p in came if not _under(p, came) and not _under(p, retyped_paths))
    renamed = _renames(old, new, removed, added)
    paired_old = {a for a, _ in renamed}
    paired_new = {b for _, b in renamed}
    old_x, new_x = sorted(old_excluded), sorted(new_excluded)
    return ShapeChange(
        added=[p for p in added if p not in paired_new],
        removed=[p for p in removed if p not in paired_old],
        renamed=renamed,
        retyped=retyped,
        exclude_paths=None if old_x == new_x else (old_x, new_x),
    )


def _renames(
    old: Mapping[str, str], new: Mapping[str, str], removed: list[str], added: list[str]
) -> list[tuple[str, str]]:
    def groups(shape: Mapping[str, str], paths: list[str]) -> dict[tuple[Any, ...], list[str]]:
        out: dict[tuple[Any, ...], list[str]] = {}
        for path in paths:
            if path.rpartition(".")[2] == ANY_LABEL:  # a list item or map value, not a field
                continue
            out.setdefault((_parent(path), _subtree(shape, path)), []).append(path)
        return out

    gone, came = groups(old, removed), groups(new, added)
    return sorted(
        (gone[key][0], came[key][0])
        for key in gone.keys() & came.keys()
        if len(gone[key]) == 1 and len(came[key]) == 1
    )


def rename_path(path: str, old_field: str, new_field: str) -> str | None:
    """The path ``path`` (a record path under the renamed field ``new_field``, a pattern) had
    under ``old_field``; None when ``path`` is not under ``new_field``."""
    labels = path.split(".")
    pattern = new_field.split(".")
    if len(labels) < len(pattern):
        return None
    for label, want in zip(labels, pattern, strict=False):
        if want != ANY_LABEL and label != want:
            return None
    labels[len(pattern) - 1] = old_field.rpartition(".")[2]
    return ".".join(labels)
