"""Flatten a Pydantic model instance into `FieldRecord`\\ s.

Types come from the declared annotations, compiled once per annotation into a small
"plan" and cached; values are only inspected where the annotation leaves the choice open:

- ``Any``, ``object``, unresolved forward references, unconstrained type variables,
  extra fields (``extra="allow"``) and untyped dict values are inferred from the value's
  runtime type. A runtime ``str`` counts as declared text there (so it can be embeddable).
- ``Union``/``Optional``: the first member the value is an exact instance of, then the
  first it is compatible with (an int for a float); if none, runtime inference.
- Enums render their member's value, typed by that value (str → string, int → integer).
- Other declared scalar types (``Path``, URLs, IP addresses, ``timedelta`` as ISO 8601,
  ``bytes``…) become non-embeddable strings. Secret types, lazy iterators and objects with
  only the default ``object`` repr (which would embed a memory address) emit nothing.

Numbers keep their exact text: a ``Decimal`` renders in positional notation with its own
scale (``Decimal("29.90")`` → ``"29.90"``, as PostgreSQL writes a numeric) and an ``int`` of
any size as its digits. Documents are loaded with JSON numbers as ``Decimal``
(`idxr_pg.db.source.load_documents`), so precision survives up to the model; a field declared
``float`` is converted by Pydantic to the float the user declared (``29.90`` → ``"29.9"``,
value type ``float``), so declare ``Decimal`` (or ``int``) where the exact text matters.

Fields marked ``Field(exclude=True)`` are not indexed, nor are paths matching the kind's
``exclude_paths`` (lquery patterns).

Paths are ``root.field.0.key``; labels are sanitised by `idxr_pg.records.labels`. ``None`` and
empty collections emit nothing. Sets are emitted in a canonical sorted order.
The walk is iterative, so deep data cannot hit Python's recursion limit, and plans for
nested models are built lazily, so self-referencing models compile in finite time.
"""

from __future__ import annotations

import collections
import collections.abc as cabc
import dataclasses
import hashlib
import json
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from enum import Enum
from functools import cached_property
from typing import Any
from uuid import UUID

import typing_extensions as tx
from pydantic import BaseModel, RootModel, TypeAdapter
from pydantic import types as pydantic_types
from pydantic.json_schema import GenerateJsonSchema
from pydantic_core import PydanticUndefined

from idxr_pg.records.labels import is_valid_label, sanitize_label, unique_labels
from idxr_pg.records.lquery import path_matcher
from idxr_pg.records.record import FieldRecord, ValueType, is_meaningful_text, make_record

__all__ = [
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_RECORDS",
    "FlattenError",
    "flatten",
    "schema_fingerprint",
]

DEFAULT_MAX_DEPTH = 32
"""Most labels a path may have below the root label."""
DEFAULT_MAX_RECORDS = 10_000
"""Most records one entity may flatten to."""


class FlattenError(ValueError):
    """An entity tripped a guard (depth or record count) while being flattened."""

    def __init__(self, entity_kind: str, path: str, reason: str) -> None:
        super().__init__(f"cannot flatten entity kind {entity_kind!r} at path {path!r}: {reason}")
        self.entity_kind = entity_kind
        self.path = path
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.entity_kind, self.path, self.reason))


# --------------------------------------------------------------------------- plans

_SCALAR, _SKIP, _RUNTIME, _UNION, _ALIAS, _MODEL, _SEQ, _TUPLE, _MAP, _FIELDS = range(10)


class _Plan:
    kind: int

    def matches(self, value: Any, exact: bool) -> bool:
        return True


class _Scalar(_Plan):
    """A leaf. ``exact``/``lax`` decide whether a value fits; ``render`` makes its text."""

    kind = _SCALAR

    def __init__(
        self,
        value_type: ValueType,
        render: Callable[[Any], str],
        exact: Callable[[Any], bool],
        lax: Callable[[Any], bool] | None = None,
        *,
        text: bool = False,
        label: str | None = None,
    ) -> None:
        self.value_type = value_type
        self.render = render
        self.exact = exact
        self.lax = lax or exact
        self.text = text
        self.label = label or value_type.value  # the type's name in a model shape

    def matches(self, value: Any, exact: bool) -> bool:
        return self.exact(value) if exact else self.lax(value)


class _Skip(_Plan):
    """Emits nothing for instances of ``cls`` (secrets, lazy iterators, objects without a
    meaningful str). Values of other types (e.g. a ``datetime`` under pydantic's marker
    class ``AwareDatetime``) fall back to runtime inference."""

    kind = _SKIP

    def __init__(self, cls: type | None = None) -> None:
        self.cls = cls

    def matches(self, value: Any, exact: bool) -> bool:
        return self.cls is None or isinstance(value, self.cls)


class _Runtime(_Plan):
    """Type decided by the value (Any, Enum, Literal); ``allowed`` restricts union matching."""

    kind = _RUNTIME

    def __init__(self, allowed: Callable[[Any], bool] | None = None, label: str = "any") -> None:
        self.allowed = allowed
        self.label = label  # the type's name in a model shape

    def matches(self, value: Any, exact: bool) -> bool:
        return self.allowed is None or self.allowed(value)


class _Union(_Plan):
    kind = _UNION

    def __init__(self, members: list[_Plan]) -> None:
        self.members = members

    def choose(self, value: Any) -> _Plan:
        for exact in (True, False):
            for member in self.members:
                if member.matches(value, exact):
                    return member
        return _RUNTIME_ANY

    def matches(self, value: Any, exact: bool) -> bool:
        return any(m.matches(value, exact) for m in self.members)


class _Alias(_Plan):
    """A type alias, compiled on first use so recursive aliases terminate."""

    kind = _ALIAS

    def __init__(self, alias: Any) -> None:
        self.alias = alias

    @cached_property
    def target(self) -> _Plan:
        return _compile(self.alias.__value__)

    def matches(self, value: Any, exact: bool) -> bool:
        return self.target.matches(value, exact)


class _Model(_Plan):
    kind = _MODEL

    def __init__(self, cls: type[BaseModel]) -> None:
        self.cls = cls

    def matches(self, value: Any, exact: bool) -> bool:
        return isinstance(value, self.cls)


class _Seq(_Plan):
    kind = _SEQ

    def __init__(self, item: _Plan, accept: tuple[type, ...], is_set: bool) -> None:
        self.item = item
        self.accept = accept
        self.is_set = is_set

    def matches(self, value: Any, exact: bool) -> bool:
        return isinstance(value, self.accept)


class _Tuple(_Plan):
    kind = _TUPLE

    def __init__(self, items: list[_Plan]) -> None:
        self.items = items

    def matches(self, value: Any, exact: bool) -> bool:
        return isinstance(value, tuple) and len(value) == len(self.items)


class _Map(_Plan):
    kind = _MAP

    def __init__(self, value_plan: _Plan) -> None:
        self.value_plan = value_plan

    def matches(self, value: Any, exact: bool) -> bool:
        return isinstance(value, Mapping)


class _Fields(_Plan):
    """Named fields of a model, dataclass or TypedDict, with their labels."""

    kind = _FIELDS

    def __init__(
        self,
        cls: type,
        names: list[str],
        plans: list[_Plan],
        *,
        computed: int = 0,
        from_mapping: bool = False,
    ) -> None:
        self.cls = cls
        self.names = names
        self.labels = unique_labels(names)
        self.plans = plans
        self.by_name = dict(zip(names, plans, strict=True))
        self.computed = computed  # the last `computed` names are read with getattr
        self.from_mapping = from_mapping

    def matches(self, value: Any, exact: bool) -> bool:
        return isinstance(value, Mapping if self.from_mapping else self.cls)


# --------------------------------------------------------------------------- scalars


def _render_str(v: Any) -> str:
    if type(v) is str:
        return v
    return str(v.value) if isinstance(v, Enum) else str.__str__(v)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


_TIMEDELTA = TypeAdapter(timedelta)


def _render_other(v: Any) -> str:
    if isinstance(v, bytes | bytearray | memoryview):
        return bytes(v).decode("utf-8", "backslashreplace")
    if isinstance(v, timedelta):
        return _TIMEDELTA.dump_python(v, mode="json")
    return str(v)


_STR = _Scalar(ValueType.STRING, _render_str, lambda v: isinstance(v, str), text=True)
_INT = _Scalar(ValueType.INTEGER, int.__repr__, _is_int)
_BOOL = _Scalar(
    ValueType.BOOLEAN, lambda v: "True" if v else "False", lambda v: v is True or v is False
)
_FLOAT = _Scalar(
    ValueType.FLOAT,
    lambda v: float.__repr__(float(v)),
    lambda v: isinstance(v, float),
    lambda v: isinstance(v, float) or _is_int(v),
)
# PostgreSQL numeric's range: 131072 digits before the point, 16383 after.
_NUMERIC_MAX_ADJUSTED = 131_071
_NUMERIC_MIN_EXPONENT = -16_383


def _render_decimal(v: Decimal) -> str:
    """The exact text of a Decimal in positional notation, as PostgreSQL writes a numeric
    (``Decimal('29.90')`` → ``"29.90"``, ``Decimal('1E-10')`` → ``"0.0000000001"``); values
    beyond numeric's range (and NaN/Infinity) keep ``str``'s form."""
    if not isinstance(v, Decimal):  # an int where a Decimal is declared
        return str(v)
    if v.is_finite() and (
        v.adjusted() <= _NUMERIC_MAX_ADJUSTED and v.as_tuple().exponent >= _NUMERIC_MIN_EXPONENT
    ):
        return format(v, "f")
    return str(v)


_DECIMAL = _Scalar(
    ValueType.DECIMAL,
    _render_decimal,
    lambda v: isinstance(v, Decimal),
    lambda v: isinstance(v, Decimal) or _is_int(v),
)
_UUID = _Scalar(ValueType.UUID, str, lambda v: isinstance(v, UUID))
_DATETIME = _Scalar(ValueType.DATETIME, datetime.isoformat, lambda v: isinstance(v, datetime))
_DATE = _Scalar(
    ValueType.DATE,
    date.isoformat,
    lambda v: isinstance(v, date) and not isinstance(v, datetime),
)
_TIME = _Scalar(ValueType.TIME, time.isoformat, lambda v: isinstance(v, time))

# Order matters: bool before int, datetime before date.
_SCALARS: list[tuple[type, _Scalar]] = [
    (bool, _BOOL),
    (str, _STR),
    (int, _INT),
    (float, _FLOAT),
    (Decimal, _DECIMAL),
    (UUID, _UUID),
    (datetime, _DATETIME),
    (date, _DATE),
    (time, _TIME),
]
_RUNTIME_ANY = _Runtime()
_SKIP_ANY = _Skip()
_SECRET_TYPES: tuple[type, ...] = tuple(
    t
    for t in (getattr(pydantic_types, n, None) for n in ("_SecretBase", "SecretStr", "SecretBytes"))
    if isinstance(t, type)
)

# --------------------------------------------------------------------------- compiling

_SET_TYPES = (set, frozenset)
_ANY_SEQ = (list, tuple, set, frozenset, collections.deque)
_UNWRAP = {typing.Required, typing.NotRequired, typing.Final, tx.Required, tx.NotRequired}
_UNWRAP.update(x for x in (getattr(tx, "ReadOnly", None),) if x is not None)
_UNION_ORIGINS = {typing.Union, types.UnionType}
_cache: dict[Any, _Plan] = {}


def _compile(tp: Any) -> _Plan:
    """The plan for an annotation, cached when the annotation is hashable."""
    try:
        return _cache[tp]
    except KeyError:
        plan = _cache[tp] = _build(tp)
        return plan
    except TypeError:  # unhashable annotation metadata
        return _build(tp)


def _build(tp: Any) -> _Plan:
    if tp is Any or tp is object or tp is None or tp is PydanticUndefined:
        return _RUNTIME_ANY
    if isinstance(tp, str | typing.ForwardRef | typing.TypeVar):
        bound = getattr(tp, "__bound__", None)
        return _compile(bound) if bound is not None else _RUNTIME_ANY
    if isinstance(tp, tx.TypeAliasType) or type(tp).__name__ == "TypeAliasType":
        return _Alias(tp)
    if isinstance(tp, typing.NewType):
        return _compile(tp.__supertype__)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated or origin in _UNWRAP:
        return _compile(args[0])
    if origin in _UNION_ORIGINS:
        members = [_compile(a) for a in args if a is not type(None)]
        return members[0] if len(members) == 1 else _Union(members)
    if origin is typing.Literal:
        values = args
        return _Runtime(
            lambda v: any(type(v) is type(x) and v == x for x in values),
            _member_label("literal", values),
        )
    if origin is not None:
        return _build_generic(origin, args)
    if isinstance(tp, type):
        return _build_class(tp)
    return _RUNTIME_ANY


def _build_generic(origin: Any, args: tuple[Any, ...]) -> _Plan:
    if not isinstance(origin, type):
        return _RUNTIME_ANY
    if issubclass(origin, BaseModel):  # a parametrised generic model
        return _Model(origin)
    if issubclass(origin, Mapping):
        return _Map(_compile(args[1]) if len(args) == 2 else _RUNTIME_ANY)
    if issubclass(origin, tuple) and not (len(args) == 2 and args[1] is Ellipsis):
        return _Tuple([_compile(a) for a in args if a != ()])
    if issubclass(origin, cabc.Iterable) and not issubclass(origin, str | bytes):
        item = _compile(args[0]) if args else _RUNTIME_ANY
        return _Seq(item, *_seq_accept(origin))
    return _build_class(origin)


def _seq_accept(origin: type) -> tuple[tuple[type, ...], bool]:
    """Which runtime types a declared (or inferred) sequence type accepts, and if it is a set."""
    for concrete in (list, tuple, collections.deque):
        if issubclass(origin, concrete):
            return (concrete,), False
    is_set = issubclass(origin, cabc.Set)
    if origin.__module__ not in ("collections.abc", "typing"):  # a concrete class
        return (origin,), is_set
    if is_set:
        return _SET_TYPES, True
    if issubclass(origin, cabc.Sequence):
        return (list, tuple, collections.deque), False
    return _ANY_SEQ, False


def _build_class(cls: type) -> _Plan:
    if issubclass(cls, BaseModel):
        return _Model(cls)
    if issubclass(cls, Enum):
        members = tuple(cls)
        return _Runtime(
            lambda v: (
                isinstance(v, cls)
                or any(type(m.value) is type(v) and m.value == v for m in members)
            ),
            _member_label("enum", [m.value for m in members]),
        )
    for base, plan in _SCALARS:
        if issubclass(cls, base):
            return plan
    if _SECRET_TYPES and issubclass(cls, _SECRET_TYPES):
        return _Skip(cls)
    if tx.is_typeddict(cls):
        hints = typing.get_type_hints(cls, include_extras=True)
        return _Fields(cls, list(hints), [_compile(t) for t in hints.values()], from_mapping=True)
    if dataclasses.is_dataclass(cls):
        return _dataclass_plan(cls)
    if issubclass(cls, Mapping):
        return _Map(_RUNTIME_ANY)
    if issubclass(cls, cabc.Iterator):
        return _Skip(cls)
    if issubclass(cls, cabc.Iterable) and not issubclass(cls, str | bytes | bytearray):
        return _Seq(_RUNTIME_ANY, *_seq_accept(cls))
    if cls.__str__ is object.__str__ and cls.__repr__ is object.__repr__:
        return _Skip(cls)
    return _Scalar(
        ValueType.STRING,
        _render_other,
        lambda v: isinstance(v, cls),
        label=f"string:{cls.__name__}",
    )


def _member_label(what: str, values: Sequence[Any]) -> str:
    """``enum(string)``, ``literal(integer|string)``: the value types of an enum's or a
    Literal's members (their values themselves are data, not shape)."""
    names = sorted({getattr(_compile(type(v)), "label", type(v).__name__) for v in values})
    return f"{what}({'|'.join(names)})"


def _dataclass_plan(cls: type) -> _Fields:
    try:
        hints = typing.get_type_hints(cls, include_extras=True)
    except Exception:  # unresolvable forward references: infer from values
        hints = {}
    names = [f.name for f in dataclasses.fields(cls)]
    return _Fields(cls, names, [_compile(hints.get(n, Any)) for n in names])


_model_plans: dict[type, _Fields] = {}


def _model_plan(cls: type[BaseModel]) -> _Fields:
    plan = _model_plans.get(cls)
    if plan is None:
        # Fields marked Field(exclude=True) are left out of dumps, and of the index too.
        fields = {n: f for n, f in cls.model_fields.items() if f.exclude is not True}
        computed = cls.model_computed_fields
        names = [*fields, *computed]
        plans = [_compile(f.annotation) for f in fields.values()]
        plans += [_compile(c.return_type) for c in computed.values()]
        plan = _model_plans[cls] = _Fields(cls, names, plans, computed=len(computed))
    return plan


# --------------------------------------------------------------------------- walking


def _resolve(value: Any, plan: _Plan) -> tuple[Any, _Plan]:
    """Narrow ``plan`` to a concrete one that fits ``value`` (falling back to inference)."""
    inferred = False
    while True:
        if value is None:  # e.g. a RootModel or an enum member holding None
            return value, _SKIP_ANY
        kind = plan.kind
        if kind == _SCALAR:
            if plan.lax(value):  # type: ignore[attr-defined]
                return value, plan
            if inferred:
                return value, _SKIP_ANY
            plan = _RUNTIME_ANY
        elif kind == _RUNTIME:
            if isinstance(value, Enum):
                value = value.value
                continue
            if inferred:  # the value's own type gave no concrete plan
                return value, _SKIP_ANY
            plan, inferred = _compile(type(value)), True
        elif kind == _UNION:
            plan = plan.choose(value)  # type: ignore[attr-defined]
        elif kind == _ALIAS:
            plan = plan.target  # type: ignore[attr-defined]
        elif kind == _MODEL:
            if not isinstance(value, plan.cls):  # type: ignore[attr-defined]
                plan = _RUNTIME_ANY
            elif isinstance(value, RootModel):
                value, plan = value.root, _model_plan(type(value)).plans[0]
            else:
                return value, _model_plan(type(value))
        elif plan.matches(value, False):
            return value, plan
        elif inferred:
            return value, _SKIP_ANY
        else:
            plan = _RUNTIME_ANY


def _key_text(key: Any) -> str:
    if type(key) is str:
        return key
    key, plan = _resolve(key, _RUNTIME_ANY)
    return plan.render(key) if plan.kind == _SCALAR else str(key)  # type: ignore[attr-defined]


def _canon(v: Any) -> str:
    """A process-independent text for ordering set members deterministically."""
    if isinstance(v, Enum):
        v = v.value
    tag = type(v).__qualname__
    if isinstance(v, BaseModel):
        return f"{tag}:{_canon(tuple(v.__dict__.values()))}"
    if isinstance(v, list | tuple):
        return f"{tag}:(" + ",".join(map(_canon, v)) + ")"
    if isinstance(v, set | frozenset):
        return f"{tag}:{{" + ",".join(sorted(map(_canon, v))) + "}"
    if isinstance(v, Mapping):
        return (
            f"{tag}:{{" + ",".join(sorted(f"{_canon(k)}={_canon(x)}" for k, x in v.items())) + "}"
        )
    return f"{tag}:{_key_text(v)}"


def _children(value: Any, plan: _Plan) -> list[tuple[Any, _Plan, str]]:
    """(value, plan, label) of a container's non-None members, in output order."""
    kind = plan.kind
    if kind == _SEQ:
        item = plan.item  # type: ignore[attr-defined]
        if isinstance(value, set | frozenset):
            value = sorted(value, key=_canon)
        return [(v, item, str(i)) for i, v in enumerate(value) if v is not None]
    if kind == _TUPLE:
        plans = plan.items  # type: ignore[attr-defined]
        n = len(plans)
        return [
            (v, plans[i] if i < n else _RUNTIME_ANY, str(i))
            for i, v in enumerate(value)
            if v is not None
        ]
    if kind == _MAP:
        return _label_mapping(value, lambda _k: plan.value_plan)  # type: ignore[attr-defined]
    assert isinstance(plan, _Fields)
    if plan.from_mapping:
        by_name = plan.by_name
        return _label_mapping(value, lambda k: by_name.get(k, _RUNTIME_ANY))
    return _field_children(value, plan)


def _label_mapping(
    value: Mapping[Any, Any], plan_for: Callable[[Any], _Plan]
) -> list[tuple[Any, _Plan, str]]:
    keys = list(value)
    texts = [_key_text(k) for k in keys]
    if not (all(map(is_valid_label, texts)) and len(set(texts)) == len(texts)):
        texts = unique_labels(texts)
    return [
        (v, plan_for(k), label)
        for k, label in zip(keys, texts, strict=True)
        if (v := value[k]) is not None
    ]


def _field_children(value: Any, plan: _Fields) -> list[tuple[Any, _Plan, str]]:
    names, labels, plans = plan.names, plan.labels, plan.plans
    extra = getattr(value, "__pydantic_extra__", None)
    if extra:  # extra keys are siblings of the fields: label them together
        extra_keys = list(extra)
        all_labels = unique_labels([*names, *map(str, extra_keys)])
        labels = all_labels[: len(names)]
    stored = getattr(value, "__dict__", None)
    n_stored = len(names) - plan.computed
    out = []
    for i, name in enumerate(names):
        if i >= n_stored:  # computed field: errors inside it propagate
            v = getattr(value, name)
        elif stored is not None:
            v = stored.get(name)
        else:
            v = getattr(value, name, None)
        if v is not None:
            out.append((v, plans[i], labels[i]))
    if extra:
        for key, label in zip(extra_keys, all_labels[len(names) :], strict=True):
            if (v := extra[key]) is not None:
                out.append((v, _RUNTIME_ANY, label))
    return out


def flatten(
    instance: BaseModel,
    root: str,
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_records: int = DEFAULT_MAX_RECORDS,
    exclude_paths: Sequence[str] = (),
) -> list[FieldRecord]:
    """Flatten ``instance`` into records whose paths start with ``root`` (sanitised).

    Fields marked ``Field(exclude=True)`` are skipped, and so is every record whose path
    matches one of the lquery ``exclude_paths`` (`idxr_pg.records.lquery`; the kind's
    ``exclude_paths`` config); excluded records do not count towards ``max_records``.

    Raises `FlattenError` when a non-empty value lies more than ``max_depth`` labels below
    the root, or when the entity would produce more than ``max_records`` records.
    """
    if max_depth < 0 or max_records < 0:
        raise ValueError("max_depth and max_records must not be negative")
    excluded = path_matcher(exclude_paths)
    records: list[FieldRecord] = []
    append = records.append
    stack: list[tuple[Any, _Plan, str, int]] = [(instance, _RUNTIME_ANY, sanitize_label(root), 0)]
    pop, push = stack.pop, stack.extend
    while stack:
        value, plan, path, depth = pop()
        value, plan = _resolve(value, plan)
        kind = plan.kind
        if kind == _SKIP:
            continue
        if kind == _SCALAR:
            if excluded is not None and excluded(path):
                continue
            if depth > max_depth:
                raise FlattenError(root, path, f"deeper than max_depth={max_depth}")
            if len(records) >= max_records:
                raise FlattenError(root, path, f"more than max_records={max_records} records")
            text = plan.render(value)  # type: ignore[attr-defined]
            vt = plan.value_type  # type: ignore[attr-defined]
            embeddable = plan.text and is_meaningful_text(text)  # type: ignore[attr-defined]
            append(make_record(path, text, vt, embeddable))
            continue
        children = _children(value, plan)
        if not children:
            continue
        if depth > max_depth:
            raise FlattenError(root, path, f"deeper than max_depth={max_depth}")
        depth += 1
        push([(v, p, f"{path}.{label}", depth) for v, p, label in reversed(children)])
    return records


# --------------------------------------------------------------------------- fingerprint


class _FingerprintSchema(GenerateJsonSchema):
    """JSON schema generation that describes, instead of rejecting, non-JSON types."""

    def handle_invalid_for_json_schema(self, schema: Any, error_info: str) -> dict[str, Any]:
        return {"x-idxr-not-json": error_info}


def schema_fingerprint(model_cls: type[BaseModel]) -> str:
    """Stable hex sha256 of the model's JSON schema (validation and serialization modes).

    Serialization mode is included because it carries computed fields, which are indexed.
    """
    schema = {
        mode: model_cls.model_json_schema(mode=mode, schema_generator=_FingerprintSchema)
        for mode in ("validation", "serialization")
    }
    text = json.dumps(schema, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()
