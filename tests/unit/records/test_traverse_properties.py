"""Property tests: flattening is deterministic, and paths are unique, valid ltree paths."""

from __future__ import annotations

import random
import re
from datetime import datetime
from decimal import Decimal
from enum import Enum
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from idxr_pg.records.labels import unique_labels
from idxr_pg.records.record import content_hash
from idxr_pg.records.traverse import flatten

PROPS = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
LABEL = re.compile(r"[A-Za-z0-9_]{1,255}")


class Tone(Enum):
    CALM = "calm"
    LOUD = "loud"


class Leaf(BaseModel):
    text: str
    number: int | None = None
    ratio: float | None = None
    flag: bool | None = None
    when: datetime | None = None
    amount: Decimal | None = None
    tone: Tone | None = None
    tags: set[str] = set()


class Tree(BaseModel):
    name: str
    attrs: dict[str, str | int | None] = {}
    leaves: list[Leaf] = []
    grid: list[list[int]] = []
    loose: Any = None
    children: list[Tree] = []


keys = st.text(max_size=8)  # any text: exercises sanitisation and collisions
json_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=10)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
    max_leaves=10,
)
leaves = st.builds(
    Leaf,
    text=st.text(max_size=12),
    number=st.none() | st.integers(),
    ratio=st.none() | st.floats(allow_nan=False),
    flag=st.none() | st.booleans(),
    when=st.none() | st.datetimes(),
    amount=st.none() | st.decimals(allow_nan=False, allow_infinity=False, places=2),
    tone=st.none() | st.sampled_from(Tone),
    tags=st.sets(st.text(max_size=5), max_size=4),
)
trees = st.recursive(
    st.builds(
        Tree,
        name=st.text(max_size=10),
        attrs=st.dictionaries(keys, st.none() | st.integers() | st.text(max_size=6), max_size=4),
        leaves=st.lists(leaves, max_size=3),
        grid=st.lists(st.lists(st.integers(), max_size=3), max_size=3),
        loose=json_values,
    ),
    lambda inner: st.builds(Tree, name=st.text(max_size=5), children=st.lists(inner, max_size=3)),
    max_leaves=6,
)
roots = st.sampled_from(["tree", "entity-kind", "Ünïcode", "a.b"])


@PROPS
@given(trees, roots)
def test_paths_are_unique_valid_ltree_under_one_root(tree: Tree, root: str) -> None:
    records = flatten(tree, root)
    paths = [r.path for r in records]
    assert len(set(paths)) == len(paths)
    first_labels = {p.split(".")[0] for p in paths}
    assert len(first_labels) <= 1
    for record in records:
        assert all(LABEL.fullmatch(label) for label in record.path.split(".")), record.path
        assert record.content_hash == content_hash(record.path, record.value, record.value_type)
        assert record.embedding_text == f"{record.path}: {record.value}"


@PROPS
@given(trees)
def test_flattening_is_deterministic(tree: Tree) -> None:
    first = flatten(tree, "tree")
    assert flatten(tree, "tree") == first
    # An equal instance built afresh (sets rebuilt, so iteration order may differ).
    rebuilt = Tree.model_validate(tree.model_dump())
    assert flatten(rebuilt, "tree") == first


def _shuffled(value: Any, rng: random.Random) -> Any:
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return {k: _shuffled(v, rng) for k, v in items}
    if isinstance(value, list):
        return [_shuffled(v, rng) for v in value]
    return value


@PROPS
@given(trees, st.randoms(use_true_random=False))
def test_dict_key_order_does_not_change_records(tree: Tree, rng: random.Random) -> None:
    shuffled = Tree.model_validate(_shuffled(tree.model_dump(), rng))
    by_path = lambda records: sorted(records, key=lambda r: r.path)  # noqa: E731
    assert by_path(flatten(shuffled, "tree")) == by_path(flatten(tree, "tree"))


@PROPS
@given(st.lists(st.text(max_size=6), max_size=12))
def test_unique_labels_are_distinct_valid_and_keep_valid_names(names: list[str]) -> None:
    labels = unique_labels(names)
    assert len(labels) == len(names)
    assert len(set(labels)) == len(labels)
    assert all(LABEL.fullmatch(label) for label in labels)
    seen: set[str] = set()
    for name, label in zip(names, labels, strict=True):
        if LABEL.fullmatch(name) and name not in seen:
            assert label == name
        seen.add(name)
