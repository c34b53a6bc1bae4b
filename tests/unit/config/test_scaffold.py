"""`idxr-pg init`: scaffolding idxr.yaml from a module of Pydantic models."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from idxr_pg.cli import main
from idxr_pg.config import load_config
from idxr_pg.scaffold import ScaffoldError, pluralize, scaffold, snake_case, type_name

MODELS = """
from datetime import datetime
from enum import Enum
from typing import Literal, Optional
from uuid import UUID

from pydantic import BaseModel, Field
from pydantic import BaseModel as ImportedBase  # an import, not a model of this module


class Status(str, Enum):
    ACTIVE = "active"


class ProductBlock(BaseModel):
    name: str
    tags: list[str] = []


class Product(BaseModel):
    product_id: int
    name: str
    blocks: list[ProductBlock]


class Subscription(BaseModel):
    subscription_id: UUID
    customer: Optional[str]
    status: Status
    kind: Literal["x", "y"]
    product: Product
    created: datetime


class Category(BaseModel):
    title: str = Field(alias="Title")
    rank: int


class HTTPEndpoint(BaseModel):
    uuid: UUID
    url: str


class Address(BaseModel):
    id: int
    city: str
"""


@pytest.fixture
def models_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh importable package ``pkg_<random>.models`` holding MODELS."""
    package = f"pkg_{uuid.uuid4().hex[:8]}"
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / package / "models.py").write_text(MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    return f"{package}.models"


def test_names_tables_and_keys_are_guessed(models_module: str, tmp_path: Path):
    output = tmp_path / "idxr.yaml"
    _, entries = scaffold(models_module, output)
    by_name = {e.name: e for e in entries}
    assert list(by_name) == [
        "product_block", "product", "subscription", "category", "http_endpoint", "address"
    ]  # fmt: skip
    assert by_name["subscription"].table == "public.subscriptions"
    assert by_name["subscription"].key == "subscription_id"
    assert by_name["product"].key == "product_id"
    assert by_name["http_endpoint"].key == "uuid"
    assert by_name["address"].key == "id"
    assert by_name["address"].table == "public.addresses"
    assert by_name["category"].table == "public.categories"
    # no id-like field: the first field (its column is the alias)
    assert by_name["category"].key == "Title" and by_name["category"].key_guessed_from_first_field
    assert by_name["product_block"].used_in == ("Product",)
    assert by_name["product"].used_in == ("Subscription",)
    assert by_name["subscription"].used_in == ()


def test_output_loads_with_load_config(models_module: str, tmp_path: Path):
    output = tmp_path / "idxr.yaml"
    scaffold(models_module, output, table_prefix="app.")
    config = load_config(output)
    subscription = config.entity("subscription")
    assert subscription.model == f"{models_module}:Subscription"
    assert subscription.table == "app.subscriptions"
    assert subscription.key == "subscription_id"
    assert subscription.refresh == "on_change"
    assert len(config.entities) == 6


def test_fields_are_listed_as_comments(models_module: str, tmp_path: Path):
    text, _ = scaffold(models_module, None)
    block = text.split("- name: subscription")[1].split("- name:")[0]
    assert "    # fields:" in block
    for line in [
        "#   subscription_id: UUID",
        "#   customer: str | None",
        "#   status: Status",
        "#   kind: Literal['x', 'y']",
        "#   product: Product",
        "#   created: datetime",
    ]:
        assert line in block
    assert "Product is a field type of Subscription" in text
    category = text.split("- name: category")[1].split("- name:")[0]
    assert "the first field is a guess" in category


def test_refuses_to_overwrite_without_force(models_module: str, tmp_path: Path):
    output = tmp_path / "idxr.yaml"
    output.write_text("entities: []\n")
    with pytest.raises(ScaffoldError, match="already exists; pass --force"):
        scaffold(models_module, output)
    assert output.read_text() == "entities: []\n"
    scaffold(models_module, output, force=True)
    assert len(load_config(output).entities) == 6


def test_cli_writes_the_file_and_refuses_a_second_time(models_module: str, tmp_path: Path):
    output = tmp_path / "out.yaml"
    runner = CliRunner()
    args = ["init", "--models", models_module, "--output", str(output), "--table-prefix", "s."]
    first = runner.invoke(main, args)
    assert first.exit_code == 0, first.output
    assert f"wrote {output} with 6 entity kinds" in first.output
    assert load_config(output).entity("address").table == "s.addresses"
    second = runner.invoke(main, args)
    assert second.exit_code == 1
    assert "already exists; pass --force" in second.output
    third = runner.invoke(main, [*args, "--force"])
    assert third.exit_code == 0, third.output


def test_cli_prints_to_stdout_with_dash(models_module: str):
    result = CliRunner().invoke(main, ["init", "--models", models_module, "--output", "-"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("# idxr-pg config scaffolded by")
    assert "- name: subscription" in result.output


def test_clear_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    with pytest.raises(ScaffoldError, match="cannot import module 'no_such_module_xyz'"):
        scaffold("no_such_module_xyz", None)
    (tmp_path / "empty_models_xyz.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ScaffoldError, match="defines no Pydantic model classes"):
        scaffold("empty_models_xyz", None)
    (tmp_path / "broken_models_xyz.py").write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ScaffoldError, match="RuntimeError: boom"):
        scaffold("broken_models_xyz", None)


def test_bad_table_prefix_names_the_option(models_module: str):
    with pytest.raises(ScaffoldError, match="--table-prefix 'a.b.'"):
        scaffold(models_module, None, table_prefix="a.b.")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Subscription", "subscription"),
        ("ProductBlock", "product_block"),
        ("HTTPServer", "http_server"),
        ("Order2Line", "order2_line"),
    ],
)
def test_snake_case(name: str, expected: str):
    assert snake_case(name) == expected


@pytest.mark.parametrize(
    ("word", "plural"),
    [("subscription", "subscriptions"), ("category", "categories"), ("day", "days"),
     ("address", "addresses"), ("box", "boxes"), ("branch", "branches")],
)  # fmt: skip
def test_pluralize(word: str, plural: str):
    assert pluralize(word) == plural


def test_type_name():
    from typing import Optional

    assert type_name(int) == "int"
    assert type_name(list[str]) == "list[str]"
    assert type_name(Optional[int]) == "int | None"  # noqa: UP045 - the old spelling on purpose
    assert type_name(dict[str, list[int]]) == "dict[str, list[int]]"
