"""Model shapes and their diff (records/shape.py): what `idxr-pg status` and `plan` report."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from idxr_pg.records.shape import ShapeChange, diff_shapes, model_shape, rename_path
from idxr_pg.records.traverse import flatten


class Color(StrEnum):
    RED = "red"


class Author(BaseModel):
    name: str
    email: str | None = None


class Node(BaseModel):
    label: str
    children: list[Node] = []


class Article(BaseModel):
    id: int
    title: str
    tags: list[str] = []
    author: Author
    color: Color = Color.RED
    level: Literal[1, 2] = 1
    file: Path | None = None
    scores: dict[str, float] = {}
    tree: Node | None = None
    secret: str = Field("x", exclude=True)


def test_shape_lists_every_path_pattern_with_its_type():
    assert model_shape(Article, "article") == {
        "article": "object",
        "article.id": "integer",
        "article.title": "string",
        "article.tags": "list",
        "article.tags.*": "string",
        "article.author": "object",
        "article.author.name": "string",
        "article.author.email": "string",
        "article.color": "enum(string)",
        "article.level": "literal(integer)",
        "article.file": "string:Path",
        "article.scores": "map",
        "article.scores.*": "float",
        "article.tree": "object",
        "article.tree.label": "string",
        "article.tree.children": "list",
        "article.tree.children.*": "object Node (recursive)",
    }


def test_every_flattened_path_matches_a_pattern_of_the_shape():
    shape = model_shape(Article, "article")
    article = Article(
        id=1,
        title="t",
        tags=["a", "b"],
        author=Author(name="n", email="e"),
        scores={"x": 1.0},
        tree=Node(label="root", children=[Node(label="leaf")]),
    )
    patterns = [p.split(".") for p in shape]
    for record in flatten(article, "article"):
        labels = record.path.split(".")
        if labels[:3] == ["article", "tree", "children"]:
            continue  # below the recursion cut
        assert any(
            len(p) == len(labels) and all(a in ("*", b) for a, b in zip(p, labels, strict=True))
            for p in patterns
        ), record.path


def _shape(**fields: str) -> dict[str, str]:
    return {"k": "object", **{f"k.{name}": t for name, t in fields.items()}}


def test_added_and_removed_fields():
    change = diff_shapes(_shape(a="string"), _shape(a="string", b="integer"))
    assert change.added == ["k.b"] and not change.removed and not change.renamed
    assert change.summary() == "added k.b"
    change = diff_shapes(_shape(a="string", b="integer"), _shape(a="string"))
    assert change.removed == ["k.b"] and change.summary() == "removed k.b"
    assert not diff_shapes(_shape(a="string"), _shape(a="string"))


def test_a_unique_same_typed_pair_under_one_parent_is_a_rename():
    change = diff_shapes(_shape(a="string", b="integer"), _shape(a="string", c="integer"))
    assert change.renamed == [("k.b", "k.c")] and not change.added and not change.removed


def test_an_ambiguous_or_differently_typed_pair_is_not_a_rename():
    two_new = diff_shapes(_shape(a="string"), _shape(b="string", c="string"))
    assert not two_new.renamed
    assert two_new.removed == ["k.a"] and two_new.added == ["k.b", "k.c"]
    other_type = diff_shapes(_shape(a="string"), _shape(b="integer"))
    assert not other_type.renamed and other_type.removed == ["k.a"]


def test_a_renamed_nested_object_is_one_rename_not_one_per_leaf():
    old = {"k": "object", "k.author": "object", "k.author.name": "string"}
    new = {"k": "object", "k.writer": "object", "k.writer.name": "string"}
    change = diff_shapes(old, new)
    assert change.renamed == [("k.author", "k.writer")]
    assert not change.added and not change.removed


def test_retyped_reports_the_top_path_only():
    old = {"k": "object", "k.tags": "list", "k.tags.*": "string"}
    new = {"k": "object", "k.tags": "string"}
    change = diff_shapes(old, new)
    assert change.retyped == [("k.tags", "list", "string")] and not change.removed
    assert change.summary() == "retyped k.tags (list -> string)"


def test_changed_exclude_paths_is_a_change():
    change = diff_shapes(_shape(a="string"), _shape(a="string"), new_excluded=["k.a"])
    assert change and change.exclude_paths == ([], ["k.a"])


def test_a_change_survives_its_json_form():
    change = ShapeChange(
        added=["k.a"],
        removed=["k.b"],
        renamed=[("k.c", "k.d")],
        retyped=[("k.e", "integer", "string")],
        exclude_paths=(["x"], []),
    )
    assert ShapeChange.from_dict(change.as_dict()) == change
    assert ShapeChange(unknown=True).summary().startswith("model changed")


def test_rename_path_maps_a_record_path_back_to_the_old_field():
    assert rename_path("k.writer.name", "k.author", "k.writer") == "k.author.name"
    assert rename_path("k.blocks.3.heading", "k.blocks.*.title", "k.blocks.*.heading") == (
        "k.blocks.3.title"
    )
    assert rename_path("k.other", "k.author", "k.writer") is None
