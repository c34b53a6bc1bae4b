"""LTree ``lquery`` patterns matched in Python (PostgreSQL 15 semantics), for the paths a kind
keeps out of its index (``exclude_paths`` in the entity config).

A pattern is items separated by dots. An item is ``*`` (any labels, zero or more), or one or
more label alternatives separated by ``|``, optionally negated by a leading ``!``; a label may
end with ``*`` (prefix), ``@`` (case-insensitive) and ``%`` (match underscore-separated words),
in any combination. Any item may end with a quantifier ``{n}``, ``{n,}``, ``{,m}`` or
``{n,m}`` (how many labels it spans; ``*`` defaults to ``{0,}``, a label item to ``{1}``).
A pattern matches a whole path, as ``path ~ lquery`` does in SQL.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache

from idxr_pg.records.labels import MAX_LABEL_LENGTH

__all__ = ["LqueryError", "compile_lquery", "path_matcher"]

_MAX_COUNT = 65535
_QUANTIFIER = re.compile(r"\{(\d*)(,?)(\d*)\}\Z")
_ALTERNATIVE = re.compile(r"([A-Za-z0-9_]+)([@*%]*)\Z")


class LqueryError(ValueError):
    """A pattern that is not a valid lquery; the message is one line naming it."""

    def __init__(self, pattern: str, reason: str) -> None:
        super().__init__(f"invalid lquery pattern {pattern!r}: {reason}")
        self.pattern = pattern
        self.reason = reason

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.pattern, self.reason))


@dataclass(frozen=True, slots=True)
class _Alternative:
    label: str
    prefix: bool
    case_insensitive: bool
    words: bool

    def matches(self, label: str) -> bool:
        pattern, text = self.label, label
        if self.case_insensitive:
            pattern, text = pattern.lower(), text.lower()
        if not self.words:
            return text.startswith(pattern) if self.prefix else text == pattern
        # PostgreSQL's compare_subnode: every word of the pattern matches some word of the
        # label (exactly, or as a prefix with '*').
        label_words = [w for w in text.split("_") if w]
        for word in (w for w in pattern.split("_") if w):
            if not any((lw.startswith(word) if self.prefix else lw == word) for lw in label_words):
                return False
        return True


@dataclass(frozen=True, slots=True)
class _Item:
    alternatives: tuple[_Alternative, ...] | None  # None: '*', any label
    negated: bool
    low: int
    high: int

    def accepts(self, label: str) -> bool:
        if self.alternatives is None:
            return True
        hit = any(a.matches(label) for a in self.alternatives)
        return hit != self.negated


def _quantified(pattern: str, item: str) -> tuple[str, tuple[int, int] | None]:
    match = _QUANTIFIER.search(item)
    if match is None:
        return item, None
    low, comma, high = match.groups()
    if not low and not high:
        raise LqueryError(pattern, f"item {item!r} has an empty quantifier")
    lo = int(low) if low else 0
    hi = int(high) if high else (_MAX_COUNT if comma else lo)
    if lo > hi or hi > _MAX_COUNT:
        raise LqueryError(pattern, f"item {item!r} has an invalid quantifier")
    return item[: match.start()], (lo, hi)


def _parse_item(pattern: str, item: str) -> _Item:
    if not item:
        raise LqueryError(pattern, "empty label (two dots, or a dot at an end)")
    body, counts = _quantified(pattern, item)
    if body == "*":
        low, high = counts or (0, _MAX_COUNT)
        return _Item(None, False, low, high)
    negated = body.startswith("!")
    if negated:
        body = body[1:]
    if not body:
        raise LqueryError(pattern, f"item {item!r} has no label")
    alternatives = []
    for text in body.split("|"):
        match = _ALTERNATIVE.match(text)
        if match is None:
            raise LqueryError(
                pattern,
                f"item {item!r}: {text!r} is not a label (letters, digits, '_') "
                "with optional '*', '@' or '%'",
            )
        label, flags = match.groups()
        if len(label) > MAX_LABEL_LENGTH:
            raise LqueryError(pattern, f"label {label[:20]}... is longer than {MAX_LABEL_LENGTH}")
        alternatives.append(_Alternative(label, "*" in flags, "@" in flags, "%" in flags))
    low, high = counts or (1, 1)
    return _Item(tuple(alternatives), negated, low, high)


@lru_cache(maxsize=1024)
def compile_lquery(pattern: str) -> Callable[[str], bool]:
    """A predicate ``path -> bool`` for one lquery ``pattern``; `LqueryError` if invalid."""
    if not isinstance(pattern, str) or not pattern.strip():
        raise LqueryError(str(pattern), "empty pattern")
    items = tuple(_parse_item(pattern, item) for item in pattern.split("."))

    def matches(path: str) -> bool:
        labels = path.split(".")
        n_items, n_labels = len(items), len(labels)

        @cache
        def rest(i: int, j: int) -> bool:
            if i == n_items:
                return j == n_labels
            item = items[i]
            span = 0
            if item.low == 0 and rest(i + 1, j):
                return True
            while span < item.high and j + span < n_labels:
                if not item.accepts(labels[j + span]):
                    return False
                span += 1
                if span >= item.low and rest(i + 1, j + span):
                    return True
            return False

        return rest(0, 0)

    return matches


@lru_cache(maxsize=256)
def _matcher(patterns: tuple[str, ...]) -> Callable[[str], bool]:
    compiled = [compile_lquery(p) for p in patterns]
    return lambda path: any(match(path) for match in compiled)


def path_matcher(patterns: Sequence[str]) -> Callable[[str], bool] | None:
    """A predicate true for a path any of ``patterns`` matches; None when there are none."""
    if not patterns:
        return None
    return _matcher(tuple(patterns))
