from __future__ import annotations

import dataclasses
import pickle
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from enum import Enum, IntEnum, StrEnum
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal, Optional, Union
from uuid import UUID

import pytest
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    IPvAnyAddress,
    PastDate,
    RootModel,
    SecretStr,
    computed_field,
)
from typing_extensions import TypeAliasType, TypedDict

from idxr_pg.records.labels import is_valid_label, sanitize_label, unique_labels
from idxr_pg.records.record import ValueType, content_hash
from idxr_pg.records.traverse import (
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_RECORDS,
    FlattenError,
    flatten,
    schema_fingerprint,
)

STR, INT, FLT, BOOL = ValueType.STRING, ValueType.INTEGER, ValueType.FLOAT, ValueType.BOOLEAN


def rows(instance: Any, root: str = "e", **kw: Any) -> list[tuple[str, str, ValueType]]:
    return [(r.path, r.value, r.value_type) for r in flatten(instance, root, **kw)]


def by_path(instance: Any, root: str = "e") -> dict[str, Any]:
    return {r.path: r for r in flatten(instance, root)}


# --------------------------------------------------------------------------- spec example


class BasicBlock(BaseModel):
    name: str
    value: int
    enabled: bool


class SimpleProduct(BaseModel):
    product_id: UUID
    name: str
    basic_block: BasicBlock


class SimpleSubscription(BaseModel):
    subscription_id: UUID
    customer_id: str
    product: SimpleProduct


def test_spec_example_flattens_exactly():
    obj = SimpleSubscription(
        subscription_id=UUID("abc12345-6789-0000-0000-000000000000"),
        customer_id="test-customer",
        product=SimpleProduct(
            product_id=UUID("99999999-aaaa-0000-0000-000000000000"),
            name="Simple Product",
            basic_block=BasicBlock(name="SimpleBlock", value=42, enabled=True),
        ),
    )
    records = flatten(obj, root="subscription")
    assert [(r.path, r.value, r.value_type.value) for r in records] == [
        ("subscription.subscription_id", "abc12345-6789-0000-0000-000000000000", "uuid"),
        ("subscription.customer_id", "test-customer", "string"),
        ("subscription.product.product_id", "99999999-aaaa-0000-0000-000000000000", "uuid"),
        ("subscription.product.name", "Simple Product", "string"),
        ("subscription.product.basic_block.name", "SimpleBlock", "string"),
        ("subscription.product.basic_block.value", "42", "integer"),
        ("subscription.product.basic_block.enabled", "True", "boolean"),
    ]
    assert [r.path for r in records if r.embeddable] == [
        "subscription.customer_id",
        "subscription.product.name",
        "subscription.product.basic_block.name",
    ]
    for r in records:
        assert r.content_hash == content_hash(r.path, r.value, r.value_type)
        assert r.embedding_text == f"{r.path}: {r.value}"


# --------------------------------------------------------------------------- scalars


class Scalars(BaseModel):
    s: str
    i: int
    f: float
    b: bool
    u: UUID
    dt: datetime
    d: date
    t: time
    dec: Decimal


def test_every_scalar_type_and_rendering():
    obj = Scalars(
        s="hello world",
        i=-7,
        f=2.5,
        b=False,
        u=UUID(int=1),
        dt=datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=timezone(timedelta(hours=2))),
        d=date(2024, 2, 29),
        t=time(23, 59, 1),
        dec=Decimal("10.50"),
    )
    assert rows(obj) == [
        ("e.s", "hello world", STR),
        ("e.i", "-7", INT),
        ("e.f", "2.5", FLT),
        ("e.b", "False", BOOL),
        ("e.u", "00000000-0000-0000-0000-000000000001", ValueType.UUID),
        ("e.dt", "2024-05-06T07:08:09.123456+02:00", ValueType.DATETIME),
        ("e.d", "2024-02-29", ValueType.DATE),
        ("e.t", "23:59:01", ValueType.TIME),
        ("e.dec", "10.50", ValueType.DECIMAL),
    ]
    assert [r.path for r in flatten(obj, "e") if r.embeddable] == ["e.s"]


class Texts(BaseModel):
    a: str
    b: str
    c: str
    d: str
    e: str


def test_declared_strings_are_embeddable_only_when_meaningful():
    obj = Texts(a="Mountain bike", b="  ", c="42", d="2024-01-01", e="yes")
    embeddable = {r.path: r.embeddable for r in flatten(obj, "k")}
    assert embeddable == {"k.a": True, "k.b": False, "k.c": False, "k.d": False, "k.e": False}


class Others(BaseModel):
    p: PurePosixPath
    td: timedelta
    raw: bytes
    secret: SecretStr


def test_other_scalar_types_are_plain_strings_and_secrets_are_skipped():
    obj = Others(
        p="/srv/data/file name", td=timedelta(days=1, hours=2), raw=b"caf\xc3\xa9", secret="hunter2"
    )
    records = flatten(obj, "o")
    assert [(r.path, r.value, r.value_type) for r in records] == [
        ("o.p", "/srv/data/file name", STR),
        ("o.td", "P1DT2H", STR),
        ("o.raw", "café", STR),
    ]
    assert not any(r.embeddable for r in records)
    assert all("hunter2" not in r.value for r in records)


class Markers(BaseModel):
    aware: AwareDatetime
    past: PastDate
    url: HttpUrl
    ip: IPvAnyAddress


def test_pydantic_marker_types_resolve_by_the_validated_value():
    obj = Markers(
        aware=datetime(2020, 1, 1, tzinfo=UTC),
        past=date(2000, 1, 2),
        url="https://example.com/x",
        ip="10.0.0.1",
    )
    assert rows(obj) == [
        ("e.aware", "2020-01-01T00:00:00+00:00", ValueType.DATETIME),
        ("e.past", "2000-01-02", ValueType.DATE),
        ("e.url", "https://example.com/x", STR),
        ("e.ip", "10.0.0.1", STR),
    ]


class Opaque:
    """No __str__/__repr__ of its own: its text would be a memory address."""


class Loose(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)
    opaque: Opaque
    anything: Any = None
    lazy: Iterable[int] = ()


def test_values_without_stable_text_emit_nothing():
    obj = Loose(opaque=Opaque(), anything=Opaque(), lazy=[1, 2])
    assert rows(obj) == []
    assert list(obj.lazy) == [1, 2]  # the lazy iterator was not consumed


# --------------------------------------------------------------------------- enums, literals


class Color(Enum):
    RED = "red"
    BLUE = "blue"


class Size(IntEnum):
    S = 1
    L = 3


class Level(Enum):
    LOW = 10
    HIGH = 20


class Mood(StrEnum):
    HAPPY = "quite happy"


class Enums(BaseModel):
    color: Color
    size: Size
    level: Level
    mood: Mood
    lit_s: Literal["pending review", "done"]
    lit_i: Literal[1, 2]
    lit_mixed: Literal["x", 5]


def test_enums_render_member_values_typed_by_value():
    obj = Enums(
        color="blue",
        size=3,
        level=20,
        mood="quite happy",
        lit_s="pending review",
        lit_i=2,
        lit_mixed=5,
    )
    records = flatten(obj, "e")
    assert [(r.path, r.value, r.value_type, r.embeddable) for r in records] == [
        ("e.color", "blue", STR, True),
        ("e.size", "3", INT, False),
        ("e.level", "20", INT, False),
        ("e.mood", "quite happy", STR, True),
        ("e.lit_s", "pending review", STR, True),
        ("e.lit_i", "2", INT, False),
        ("e.lit_mixed", "5", INT, False),
    ]


def test_use_enum_values_gives_the_same_records():
    class Plain(BaseModel):
        color: Color
        size: Size

    class Valued(Plain):
        model_config = ConfigDict(use_enum_values=True)

    assert rows(Plain(color="red", size=1)) == rows(Valued(color="red", size=1))
    assert rows(Valued(color="red", size=1)) == [("e.color", "red", STR), ("e.size", "1", INT)]


# --------------------------------------------------------------------------- unions


class Cat(BaseModel):
    meow: str


class Dog(BaseModel):
    bark: int


class Unions(BaseModel):
    opt: Optional[int] = None  # noqa: UP045 - the typing spelling is under test
    pipe: str | None = None
    num_or_text: Union[int, str] = 0  # noqa: UP007
    text_or_num: str | int = ""
    float_or_int: float | int = 0
    day: date | datetime | None = None
    pet: Cat | Dog | None = None
    annotated: Optional[Annotated[str, Field(min_length=1)]] = None  # noqa: UP045


def test_optional_none_emits_nothing():
    assert rows(Unions(num_or_text=1, text_or_num="a", float_or_int=1.5)) == [
        ("e.num_or_text", "1", INT),
        ("e.text_or_num", "a", STR),
        ("e.float_or_int", "1.5", FLT),
    ]


def test_union_member_is_chosen_by_the_actual_value():
    obj = Unions(
        opt=3,
        pipe="x",
        num_or_text="seven",
        text_or_num=7,
        float_or_int=4,
        day=datetime(2024, 1, 2, 3, 4, tzinfo=UTC),
        pet={"bark": 2},
        annotated="Annotated text",
    )
    assert rows(obj) == [
        ("e.opt", "3", INT),
        ("e.pipe", "x", STR),
        ("e.num_or_text", "seven", STR),
        ("e.text_or_num", "7", INT),
        ("e.float_or_int", "4", INT),
        ("e.day", "2024-01-02T03:04:00+00:00", ValueType.DATETIME),
        ("e.pet.bark", "2", INT),
        ("e.annotated", "Annotated text", STR),
    ]
    assert by_path(obj)["e.annotated"].embeddable
    assert rows(Unions(day=date(2024, 1, 2), pet=Cat(meow="purr")))[-2:] == [
        ("e.day", "2024-01-02", ValueType.DATE),
        ("e.pet.meow", "purr", STR),
    ]


# --------------------------------------------------------------------------- containers


class Item(BaseModel):
    label: str
    qty: int | None = None


class Containers(BaseModel):
    items: list[Item] = []
    grid: list[list[int]] = []
    cube: list[list[list[str]]] = []
    pair: tuple[int, str] | None = None
    many: tuple[float, ...] = ()
    tags: set[str] = set()
    frozen: frozenset[int] = frozenset()
    sparse: list[int | None] = []


def test_lists_of_models_and_lists_of_lists_use_index_labels():
    obj = Containers(
        items=[Item(label="first"), Item(label="second", qty=2)],
        grid=[[1, 2], [], [3]],
        cube=[[["a"]], [[], ["b", "c"]]],
        pair=(1, "one"),
        many=(0.5, 1.5),
    )
    assert rows(obj) == [
        ("e.items.0.label", "first", STR),
        ("e.items.1.label", "second", STR),
        ("e.items.1.qty", "2", INT),
        ("e.grid.0.0", "1", INT),
        ("e.grid.0.1", "2", INT),
        ("e.grid.2.0", "3", INT),
        ("e.cube.0.0.0", "a", STR),
        ("e.cube.1.1.0", "b", STR),
        ("e.cube.1.1.1", "c", STR),
        ("e.pair.0", "1", INT),
        ("e.pair.1", "one", STR),
        ("e.many.0", "0.5", FLT),
        ("e.many.1", "1.5", FLT),
    ]


def test_empty_collections_emit_nothing_and_none_items_keep_their_index():
    assert rows(Containers()) == []
    assert rows(Containers(sparse=[None, 5, None, 7])) == [
        ("e.sparse.1", "5", INT),
        ("e.sparse.3", "7", INT),
    ]


def test_sets_are_emitted_in_sorted_order():
    obj = Containers(tags={"pear", "apple", "fig"}, frozen=frozenset({30, 4, 100}))
    assert rows(obj) == [
        ("e.tags.0", "apple", STR),
        ("e.tags.1", "fig", STR),
        ("e.tags.2", "pear", STR),
        ("e.frozen.0", "100", INT),
        ("e.frozen.1", "30", INT),
        ("e.frozen.2", "4", INT),
    ]


def test_set_order_does_not_depend_on_string_hash_seed():
    """The same set must flatten identically in processes with different hash seeds."""
    script = textwrap.dedent(
        """
        from pydantic import BaseModel
        from idxr_pg.records.traverse import flatten
        class M(BaseModel):
            tags: set[str]
            nested: set[frozenset[str]]
        m = M(tags={f"tag{i}" for i in range(40)}, nested={frozenset({"a", "b"}), frozenset({"c"})})
        print([r.path + "=" + r.value for r in flatten(m, "m")])
        """
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", script],
            env={"PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2", "3")
    }
    assert len(outputs) == 1


class Maps(BaseModel):
    attrs: dict[str, str] = {}
    counts: dict[int, int] = {}
    by_color: dict[Color, Item] = {}
    anything: dict[str, Any] = {}


def test_dict_keys_become_labels():
    obj = Maps(
        attrs={"colour": "dark green", "material": "oak"},
        counts={7: 1, 11: 2},
        by_color={Color.RED: Item(label="a red item")},
        anything={"n": 1, "t": "text here", "deep": {"list": [True, None, 2.5]}},
    )
    assert rows(obj) == [
        ("e.attrs.colour", "dark green", STR),
        ("e.attrs.material", "oak", STR),
        ("e.counts.7", "1", INT),
        ("e.counts.11", "2", INT),
        ("e.by_color.red.label", "a red item", STR),
        ("e.anything.n", "1", INT),
        ("e.anything.t", "text here", STR),
        ("e.anything.deep.list.0", "True", BOOL),
        ("e.anything.deep.list.2", "2.5", FLT),
    ]
    # Any: inferred from the runtime value; runtime strings count as text.
    assert by_path(obj)["e.anything.t"].embeddable


# --------------------------------------------------------------------------- labels


def test_label_sanitisation_rules():
    assert sanitize_label("valid_Name_1") == "valid_Name_1"
    hashed = sanitize_label("first-name")
    assert re.fullmatch(r"first_name_[0-9a-f]{8}", hashed)
    assert sanitize_label("first-name") == hashed  # deterministic
    assert sanitize_label("first name") != hashed  # different originals differ
    for name in ["", "a.b", "ümlaut", "x" * 300, "🙂", "has space", "-", "a" * 255]:
        label = sanitize_label(name)
        assert is_valid_label(label), name
        assert len(label) <= 255
    assert sanitize_label("a" * 255) == "a" * 255
    assert sanitize_label("a" * 256) != "a" * 255


def test_unique_labels_never_collide_and_valid_names_win():
    tricky = sanitize_label("a-b")  # a valid name that looks like the sanitised "a-b"
    names = ["a-b", tricky, "a b", "a_b", "a_b"]
    labels = unique_labels(names)
    assert len(set(labels)) == len(labels)
    assert labels[1] == tricky and labels[3] == "a_b"
    assert all(map(is_valid_label, labels))
    # Labels depend on the set of siblings, not their order.
    distinct = ["a-b", tricky, "a b", "a_b", "x.y"]
    mapping = dict(zip(distinct, unique_labels(distinct), strict=True))
    reordered = list(reversed(distinct))
    assert dict(zip(reordered, unique_labels(reordered), strict=True)) == mapping


def test_dict_keys_are_sanitised_without_silent_overwrite():
    tricky = sanitize_label("a-b")
    obj = Maps(attrs={"a-b": "one", "a_b": "two", "a b": "three", tricky: "four", "ok": "five"})
    records = flatten(obj, "e")
    assert len({r.path for r in records}) == 5
    values = {r.path.split(".")[-1]: r.value for r in records}
    assert values["a_b"] == "two"
    assert values[tricky] == "four"
    assert values["ok"] == "five"
    assert sorted(values.values()) == sorted(["one", "two", "three", "four", "five"])
    assert all(is_valid_label(label) for r in records for label in r.path.split("."))


def test_non_ascii_field_names_and_root_are_sanitised():
    class Weird(BaseModel):
        größe: int
        gr__e: int

    records = flatten(Weird(größe=1, gr__e=2), root="my-kind")
    root = sanitize_label("my-kind")
    assert all(r.path.startswith(root + ".") for r in records)
    assert len({r.path for r in records}) == 2
    assert {r.path: r.value for r in records}[f"{root}.gr__e"] == "2"
    assert all(is_valid_label(label) for r in records for label in r.path.split("."))
    assert rows(Weird(größe=1, gr__e=2), root="plain")[0][0] != "plain.größe"


def test_extra_fields_are_flattened_beside_declared_ones():
    class Open(BaseModel):
        model_config = ConfigDict(extra="allow")
        name: str

    obj = Open(name="declared", **{"free-text": "an extra value", "n": 3})
    assert rows(obj) == [
        ("e.name", "declared", STR),
        (f"e.{sanitize_label('free-text')}", "an extra value", STR),
        ("e.n", "3", INT),
    ]


# --------------------------------------------------------------------------- other shapes


class WithComputed(BaseModel):
    first: str
    last: str

    @computed_field  # type: ignore[prop-decorator]
    @property
    def full_name(self) -> str:
        return f"{self.first} {self.last}"

    @computed_field  # type: ignore[prop-decorator]
    @property
    def length(self) -> int:
        return len(self.first) + len(self.last)


def test_computed_fields_come_after_declared_fields():
    obj = WithComputed(first="Ada", last="Lovelace")
    records = flatten(obj, "p")
    assert [(r.path, r.value, r.value_type, r.embeddable) for r in records] == [
        ("p.first", "Ada", STR, True),
        ("p.last", "Lovelace", STR, True),
        ("p.full_name", "Ada Lovelace", STR, True),
        ("p.length", "11", INT, False),
    ]


@dataclasses.dataclass
class Dim:
    width: float
    unit: str


class Address(TypedDict):
    street: str
    number: int


class Shapes(BaseModel):
    dim: Dim
    address: Address
    scores: RootModel[list[int]]
    anything: Any = None


def test_dataclasses_typeddicts_root_models_and_any():
    obj = Shapes(
        dim=Dim(width=2, unit="cm"),
        address={"street": "Main Street", "number": 5},
        scores=[3, 4],
        anything=Item(label="an item held in Any"),
    )
    assert rows(obj) == [
        ("e.dim.width", "2.0", FLT),
        ("e.dim.unit", "cm", STR),
        ("e.address.street", "Main Street", STR),
        ("e.address.number", "5", INT),
        ("e.scores.0", "3", INT),
        ("e.scores.1", "4", INT),
        ("e.anything.label", "an item held in Any", STR),
    ]
    assert rows(RootModel[list[int]]([9]), "r") == [("r.0", "9", INT)]
    assert rows(RootModel[int | None](None), "r") == []


Json = TypeAliasType("Json", "dict[str, Json] | list[Json] | str | int | bool | None")


class Doc(BaseModel):
    body: Json


def test_recursive_type_alias():
    obj = Doc(body={"a": [1, {"b": "deep text"}], "c": None})
    assert rows(obj) == [("e.body.a.0", "1", INT), ("e.body.a.1.b", "deep text", STR)]


def test_model_construct_values_that_break_their_annotation_are_inferred():
    obj = Item.model_construct(label=12, qty="lots")
    assert rows(obj) == [("e.label", "12", INT), ("e.qty", "lots", STR)]
    assert rows(Item.model_construct(qty=1)) == [("e.qty", "1", INT)]


# --------------------------------------------------------------------------- guards


class Node(BaseModel):
    name: str
    children: list[Node] = []


def chain(length: int) -> Node:
    root = node = Node(name="n0")
    for i in range(1, length):
        child = Node(name=f"n{i}")
        node.children.append(child)
        node = child
    return root


def test_self_referencing_model_flattens():
    tree = Node(
        name="top", children=[Node(name="left"), Node(name="right", children=[Node(name="leaf")])]
    )
    assert rows(tree, "node") == [
        ("node.name", "top", STR),
        ("node.children.0.name", "left", STR),
        ("node.children.1.name", "right", STR),
        ("node.children.1.children.0.name", "leaf", STR),
    ]


def test_depth_guard_names_entity_kind_and_path():
    # chain(n): the deepest record lies 2 * (n - 1) + 1 labels below the root.
    assert len(flatten(chain(3), "node", max_depth=5)) == 3
    with pytest.raises(FlattenError) as info:
        flatten(chain(4), "node", max_depth=5)
    err = info.value
    assert err.entity_kind == "node"
    assert err.path == "node.children.0.children.0.children.0"
    assert "node" in str(err) and err.path in str(err)
    assert isinstance(err, ValueError)


def test_default_depth_guard_and_deep_data_without_recursion_error():
    with pytest.raises(FlattenError):
        flatten(chain(DEFAULT_MAX_DEPTH), "node")
    deep = chain(2_000)  # far beyond Python's recursion limit when walked recursively
    assert len(flatten(deep, "node", max_depth=5_000)) == 2_000


def test_cyclic_data_trips_the_depth_guard():
    node = Node(name="self")
    node.children.append(node)
    with pytest.raises(FlattenError, match="max_depth"):
        flatten(node, "node")


def test_record_guard_names_entity_kind_and_path():
    obj = Containers(grid=[[1, 2, 3], [4, 5]])
    assert len(flatten(obj, "big", max_records=5)) == 5
    with pytest.raises(FlattenError) as info:
        flatten(obj, "big", max_records=4)
    assert (info.value.entity_kind, info.value.path) == ("big", "big.grid.1.1")
    assert "max_records=4" in str(info.value)
    assert DEFAULT_MAX_RECORDS >= 1_000


def test_flatten_error_pickles():
    err = FlattenError("kind", "kind.a.b", "too deep")
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.entity_kind, copy.path, str(copy)) == ("kind", "kind.a.b", str(err))


# --------------------------------------------------------------------------- fingerprint


def test_schema_fingerprint_is_stable_and_sensitive():
    def make(extra_field: bool, computed: bool) -> type[BaseModel]:
        namespace: dict[str, Any] = {"__annotations__": {"name": "str", "age": "int"}}
        if extra_field:
            namespace["__annotations__"]["email"] = "str"
        if computed:
            namespace["upper"] = computed_field(
                property(lambda self: self.name.upper()), return_type=str
            )
        return type("Person", (BaseModel,), namespace)

    base = schema_fingerprint(make(False, False))
    assert re.fullmatch(r"[0-9a-f]{64}", base)
    assert schema_fingerprint(make(False, False)) == base
    assert schema_fingerprint(make(True, False)) != base
    assert schema_fingerprint(make(False, True)) != base


def test_schema_fingerprint_of_recursive_and_non_json_models():
    assert schema_fingerprint(Node) == schema_fingerprint(Node)

    class Opaque:
        def __repr__(self) -> str:
            return "Opaque()"

    class Arbitrary(BaseModel):
        model_config = ConfigDict(arbitrary_types_allowed=True)
        thing: Opaque

    assert re.fullmatch(r"[0-9a-f]{64}", schema_fingerprint(Arbitrary))


# --------------------------------------------------------------------------- exact numbers (issue 12, item 2)


class _Amounts(BaseModel):
    price: Decimal
    fine: Decimal
    count: int
    approx: float
    anything: Any = None


class _DecimalHolder(TypedDict):
    d: Decimal


class _DecimalWrap(BaseModel):
    h: _DecimalHolder


def test_numbers_keep_their_exact_text() -> None:
    import json

    document = json.loads(
        '{"price": 29.90, "fine": 0.0000000001, "count": 123456789012345678901234567890,'
        ' "approx": 29.90, "anything": 12345678901234567.89}',
        parse_float=Decimal,
    )
    records = {r.path: r for r in flatten(_Amounts.model_validate(document), "a")}
    assert (records["a.price"].value, records["a.price"].value_type) == ("29.90", ValueType.DECIMAL)
    assert records["a.fine"].value == "0.0000000001"
    assert records["a.count"].value == "123456789012345678901234567890"
    assert (records["a.anything"].value, records["a.anything"].value_type) == (
        "12345678901234567.89",
        ValueType.DECIMAL,
    )
    # float is the declared type: Pydantic converts the Decimal, and the float's text is kept.
    assert (records["a.approx"].value, records["a.approx"].value_type) == ("29.9", ValueType.FLOAT)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (Decimal("1234567890123456789.0123456789"), "1234567890123456789.0123456789"),
        (Decimal("1E+2"), "100"),
        (Decimal("-0.00"), "-0.00"),
        (Decimal("NaN"), "NaN"),
        (Decimal("Infinity"), "Infinity"),
        (Decimal("1E-20000"), "1E-20000"),  # beyond numeric's scale: str's form, still exact
        (2**64 + 1, str(2**64 + 1)),  # an int under a Decimal annotation (TypedDict)
    ],
)
def test_decimal_text(value: Any, text: str) -> None:
    (record,) = flatten(_DecimalWrap.model_construct(h=_DecimalHolder(d=value)), "w")
    assert (record.path, record.value, record.value_type) == ("w.h.d", text, ValueType.DECIMAL)


def test_flatten_strips_nul_from_values() -> None:
    class Note(BaseModel):
        text: str
        tags: list[str]

    records = flatten(Note(text="a\x00b", tags=["\x00"]), "n")
    assert [(r.path, r.value, r.embeddable) for r in records] == [
        ("n.text", "ab", True),
        ("n.tags.0", "", False),
    ]
    assert records[0].content_hash == content_hash("n.text", "ab", ValueType.STRING)
