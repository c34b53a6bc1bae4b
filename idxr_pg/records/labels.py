"""LTree label sanitisation (PostgreSQL 15 rules).

In PostgreSQL 15 an ltree label is 1 to 255 characters from ``[A-Za-z0-9_]`` (hyphens and
longer labels only arrived in PostgreSQL 16; non-ASCII letters depend on the database
locale, so they are treated as invalid here).

A name that is already a valid label is kept as is. Any other name becomes its valid
characters with the rest replaced by ``_``, plus ``_`` and the first 8 hex digits of the
sha256 of the original name: ``"first-name"`` → ``"first_name_<hash8>"``. Among siblings,
`unique_labels` guarantees distinct labels: valid names keep theirs and any sanitised name
that would clash is re-suffixed deterministically (never a silent overwrite).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

__all__ = ["MAX_LABEL_LENGTH", "is_valid_label", "sanitize_label", "unique_labels"]

MAX_LABEL_LENGTH = 255
_VALID_RE = re.compile(rf"[A-Za-z0-9_]{{1,{MAX_LABEL_LENGTH}}}")
_INVALID_CHAR_RE = re.compile(r"[^A-Za-z0-9_]")
_SUFFIX_LEN = 8


def is_valid_label(label: str) -> bool:
    """Whether ``label`` is a valid PostgreSQL 15 ltree label."""
    return _VALID_RE.fullmatch(label) is not None


def _hashed(name: str, salt: int) -> str:
    seed = name if salt == 0 else f"{salt}\x00{name}"
    digest = hashlib.sha256(seed.encode("utf-8", "surrogatepass")).hexdigest()[:_SUFFIX_LEN]
    base = _INVALID_CHAR_RE.sub("_", name)[: MAX_LABEL_LENGTH - _SUFFIX_LEN - 1]
    return f"{base}_{digest}"


def sanitize_label(name: str) -> str:
    """A valid ltree label for ``name``: ``name`` itself when valid, else a hashed form."""
    if _VALID_RE.fullmatch(name):
        return name
    return _hashed(name, 0)


def unique_labels(names: Sequence[str]) -> list[str]:
    """Distinct valid labels for sibling ``names``, in the same order.

    Valid names keep their label (the first occurrence, if a name repeats). Every other
    name gets `sanitize_label`'s form unless that is taken, in which case it is re-hashed
    with a salt until free. Sanitised names are settled in sorted order, so a name's label
    depends only on the set of its siblings, never on their order.
    """
    result: list[str | None] = [None] * len(names)
    used: set[str] = set()
    pending: list[int] = []
    for i, name in enumerate(names):
        if name not in used and _VALID_RE.fullmatch(name):
            result[i] = name
            used.add(name)
        else:
            pending.append(i)
    for i in sorted(pending, key=lambda i: (names[i], i)):
        name = names[i]
        salt = 0
        label = _hashed(name, salt)
        while label in used:
            salt += 1
            label = _hashed(name, salt)
        result[i] = label
        used.add(label)
    return result  # type: ignore[return-value]
