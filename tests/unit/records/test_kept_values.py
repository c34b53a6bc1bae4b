"""Issue 12, "behaving correctly today, and to keep": hostile values through the traverser
(no database). Colliding keys, NaN/Inf, RTL and combining characters, lone surrogates and a
200k-item list each give a concrete, stable outcome."""

from __future__ import annotations

import time
import unicodedata
from decimal import Decimal
from typing import Any

import pytest
from pydantic import BaseModel, Field

from idxr_pg.records.labels import is_valid_label
from idxr_pg.records.record import ValueType, content_hash
from idxr_pg.records.traverse import FlattenError, flatten


class Doc(BaseModel):
    id: int
    title: str | None = None
    ratio: float | None = None
    amount: Decimal | None = Field(None, allow_inf_nan=True)
    data: Any = None


def by_path(doc: Doc) -> dict[str, Any]:
    return {r.path: r for r in flatten(doc, "doc")}


def test_colliding_dict_keys_keep_every_value_under_distinct_valid_labels() -> None:
    keys = {"a-b": "one", "a_b": "two", "A B": "three", "a b": "four", "a.b": "five"}
    records = [r for r in flatten(Doc(id=1, data=keys), "doc") if r.path.startswith("doc.data.")]
    assert sorted(r.value for r in records) == sorted(keys.values())
    paths = [r.path for r in records]
    assert len(set(paths)) == len(keys)
    # The valid name keeps its label; the others get a hashed suffix, never a silent overwrite.
    assert next(r.path for r in records if r.value == "two") == "doc.data.a_b"
    assert all(is_valid_label(p.rsplit(".", 1)[1]) for p in paths)
    # Stable: the same keys in another order give the same records.
    reordered = dict(reversed(list(keys.items())))
    again = [r for r in flatten(Doc(id=1, data=reordered), "doc") if r.path.startswith("doc.data.")]
    assert sorted((r.path, r.value) for r in again) == sorted((r.path, r.value) for r in records)


@pytest.mark.parametrize(
    ("ratio", "text"), [(float("nan"), "nan"), (float("inf"), "inf"), (float("-inf"), "-inf")]
)
def test_float_nan_and_infinities_are_plain_float_records(ratio: float, text: str) -> None:
    record = by_path(Doc(id=1, ratio=ratio))["doc.ratio"]
    assert (record.value, record.value_type, record.embeddable) == (text, ValueType.FLOAT, False)
    assert record.content_hash == content_hash("doc.ratio", text, ValueType.FLOAT)


@pytest.mark.parametrize("amount", ["NaN", "Infinity", "-Infinity"])
def test_decimal_nan_and_infinities_are_plain_decimal_records(amount: str) -> None:
    record = by_path(Doc(id=1, amount=Decimal(amount)))["doc.amount"]
    assert (record.value, record.value_type, record.embeddable) == (
        amount,
        ValueType.DECIMAL,
        False,
    )


RTL = "שלום עולם \u200fRTL\u200e مرحبا بالعالم"
COMBINING = "e\u0301te\u0301 cafe\u0301 n\u0303"


@pytest.mark.parametrize("text", [RTL, COMBINING], ids=["rtl", "combining"])
def test_rtl_and_combining_text_is_kept_code_point_for_code_point(text: str) -> None:
    record = by_path(Doc(id=1, title=text))["doc.title"]
    assert record.value == text  # not normalised (NFC would change the combining text)
    assert record.embeddable
    assert record.content_hash == content_hash("doc.title", text, ValueType.STRING)
    if text is COMBINING:
        assert unicodedata.normalize("NFC", text) != text
        assert content_hash("doc.title", unicodedata.normalize("NFC", text), ValueType.STRING) != (
            record.content_hash
        )


def test_rtl_and_combining_dict_keys_become_distinct_valid_labels() -> None:
    keys = {"שלום": "rtl", "cafe\u0301": "decomposed", "caf\u00e9": "composed", "مرحبا": "arabic"}
    records = [r for r in flatten(Doc(id=1, data=keys), "doc") if r.path.startswith("doc.data.")]
    assert sorted(r.value for r in records) == sorted(keys.values())
    assert len({r.path for r in records}) == len(keys)
    assert all(is_valid_label(r.path.rsplit(".", 1)[1]) for r in records)


def test_a_lone_surrogate_flattens_and_hashes_without_error() -> None:
    record = by_path(Doc(id=1, title="broken \ud800 text"))["doc.title"]
    assert record.value == "broken \ud800 text"
    assert record.content_hash == content_hash("doc.title", "broken \ud800 text", ValueType.STRING)


def test_a_200k_item_list_trips_the_record_guard_quickly_naming_the_path() -> None:
    doc = Doc(id=1, data=list(range(200_000)))
    started = time.monotonic()
    with pytest.raises(FlattenError) as raised:
        flatten(doc, "doc", max_records=10_000)
    assert time.monotonic() - started < 5
    message = str(raised.value)
    assert message == (
        "cannot flatten entity kind 'doc' at path 'doc.data.9999': more than max_records=10000 records"
    )
    assert "\n" not in message
    # Under a guard that allows it, every item is a record with its index label.
    records = flatten(doc, "doc", max_records=300_000)
    items = [r for r in records if r.path.startswith("doc.data.")]
    assert len(items) == 200_000
    assert items[-1].path == "doc.data.199999" and items[-1].value == "199999"
