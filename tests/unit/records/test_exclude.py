"""Excluded fields (issue 12, item 3): ``Field(exclude=True)`` and per-kind ``exclude_paths``
(lquery patterns) keep fields out of the index."""

from __future__ import annotations

from typing import Annotated

import pytest
from pydantic import BaseModel, Field

from idxr_pg.records.lquery import LqueryError, compile_lquery, path_matcher
from idxr_pg.records.traverse import flatten


class Profile(BaseModel):
    bio: str
    internal_notes: str = Field(exclude=True)


class User(BaseModel):
    name: str
    password: str = Field(exclude=True)
    token: Annotated[str, Field(exclude=True)]
    profile: Profile
    emails: list[str] = []


USER = User(
    name="Ada",
    password="hunter2",
    token="t0k3n",
    profile=Profile(bio="Mathematician", internal_notes="VIP, owes us money"),
    emails=["ada@example.com", "ada@work.example"],
)


def test_fields_marked_exclude_are_not_indexed() -> None:
    paths = [r.path for r in flatten(USER, "user")]
    assert paths == ["user.name", "user.profile.bio", "user.emails.0", "user.emails.1"]
    assert not any("hunter2" in r.value or "owes" in r.value for r in flatten(USER, "user"))


@pytest.mark.parametrize(
    ("patterns", "left"),
    [
        (["user.emails.*"], ["user.name", "user.profile.bio"]),
        (["*.bio"], ["user.name", "user.emails.0", "user.emails.1"]),
        (["user.emails.1"], ["user.name", "user.profile.bio", "user.emails.0"]),
        (["user.profile", "user.name"], ["user.profile.bio", "user.emails.0", "user.emails.1"]),
        (["user.profile|emails.*"], ["user.name"]),
        (["*.EMAILS@.*"], ["user.name", "user.profile.bio"]),
        (["user.!name.*"], ["user.name"]),
    ],
)
def test_exclude_paths_drop_matching_records(patterns: list[str], left: list[str]) -> None:
    assert [r.path for r in flatten(USER, "user", exclude_paths=patterns)] == left


def test_excluded_records_do_not_count_towards_max_records() -> None:
    class Many(BaseModel):
        keep: str
        noise: list[str]

    many = Many(keep="x", noise=[f"n{i}" for i in range(50)])
    records = flatten(many, "m", max_records=1, exclude_paths=["m.noise.*"])
    assert [r.path for r in records] == ["m.keep"]


# The lquery matcher; tests/integration/test_hardening_values.py checks it against PostgreSQL.


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("a.b", "a.b", True),
        ("a.b", "a.b.c", False),
        ("a.*", "a", True),
        ("a.*", "a.b.c", True),
        ("*.c", "a.b.c", True),
        ("*{1}.c", "a.b.c", False),
        ("*{2}.c", "a.b.c", True),
        ("*{1,}.b", "a.b", True),
        ("*{,1}.b", "x.y.b", False),
        ("a.b{2}.c", "a.b.b.c", True),
        ("a.!b.c", "a.x.c", True),
        ("a.!b.c", "a.b.c", False),
        ("a.!b|x.c", "a.x.c", False),
        ("a.pass*", "a.password", True),
        ("a.PASS*@", "a.password", True),
        ("a.secret%", "a.my_secret_key", True),
        ("a.secret_k*%", "a.my_secret_key", True),
        ("a.secret%", "a.secretkey", False),
    ],
)
def test_lquery_matching(pattern: str, path: str, matches: bool) -> None:
    assert compile_lquery(pattern)(path) is matches


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("", "empty"),
        ("a..b", "empty label"),
        ("a.b-c", "b-c"),
        ("a.{2}", "{2}"),
        ("a.b{3,1}", "b{3,1}"),
        ("a.b;drop", "b;drop"),
        ("a.!", "!"),
        ("a." + "x" * 256, "longer than 255"),
    ],
)
def test_invalid_patterns_are_refused_with_one_clear_line(pattern: str, reason: str) -> None:
    with pytest.raises(LqueryError) as info:
        compile_lquery(pattern)
    message = str(info.value)
    assert "\n" not in message and repr(pattern) in message and reason in message


def test_path_matcher_of_no_patterns_matches_nothing() -> None:
    assert path_matcher(()) is None
    matcher = path_matcher(("a.b", "*.c"))
    assert matcher is not None and matcher("a.b") and matcher("x.c") and not matcher("a")


def test_entity_config_refuses_an_invalid_exclude_pattern_in_one_line() -> None:
    from pydantic import ValidationError

    from idxr_pg.config import EntityConfig

    entity = {"name": "user", "model": "app.models:User", "table": "app.users", "key": "id"}
    assert EntityConfig(**entity, exclude_paths=["user.password", "*.notes.*"]).exclude_paths == [
        "user.password",
        "*.notes.*",
    ]
    with pytest.raises(ValidationError) as info:
        EntityConfig(**entity, exclude_paths=["user.password", "user..x"])
    (error,) = info.value.errors()
    assert error["loc"] == ("exclude_paths",)
    assert "exclude_paths[1]: invalid lquery pattern 'user..x': empty label" in error["msg"]
