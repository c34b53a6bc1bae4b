import dataclasses
import hashlib

import pytest

from idxr_pg.records.record import (
    FieldRecord,
    ValueType,
    content_hash,
    is_meaningful_text,
    make_record,
)


def test_value_type_labels_are_the_database_enum_in_order():
    assert [v.value for v in ValueType] == [
        "string",
        "integer",
        "float",
        "boolean",
        "uuid",
        "datetime",
        "date",
        "time",
        "decimal",
    ]
    assert f"{ValueType.UUID}" == "uuid"


def test_content_hash_is_sha256_of_path_value_lowercase_type():
    expected = hashlib.sha256(b"kind.a.b:hello:string").hexdigest()
    assert content_hash("kind.a.b", "hello", ValueType.STRING) == expected


@pytest.mark.parametrize(
    "other",
    [
        ("kind.a.c", "hello", ValueType.STRING),
        ("kind.a.b", "hello!", ValueType.STRING),
        ("kind.a.b", "hello", ValueType.UUID),
    ],
)
def test_content_hash_changes_with_each_component(other):
    assert content_hash(*other) != content_hash("kind.a.b", "hello", ValueType.STRING)


def test_content_hash_handles_non_ascii_and_lone_surrogates():
    assert (
        content_hash("k.x", "grüße", ValueType.STRING)
        == hashlib.sha256("k.x:grüße:string".encode()).hexdigest()
    )
    assert len(content_hash("k.x", "\ud800", ValueType.STRING)) == 64


def test_make_record_computes_hash_and_embedding_text():
    record = make_record("kind.name", "Simple Product", ValueType.STRING, True)
    assert record == FieldRecord(
        "kind.name",
        "Simple Product",
        ValueType.STRING,
        content_hash("kind.name", "Simple Product", ValueType.STRING),
        True,
    )
    assert record.embedding_text == "kind.name: Simple Product"
    assert FieldRecord.create("kind.name", "Simple Product", ValueType.STRING, True) == record


def test_field_record_is_frozen():
    record = make_record("k.v", "1", ValueType.INTEGER, False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.value = "2"  # type: ignore[misc]


@pytest.mark.parametrize(
    "text",
    [
        "Simple Product",
        "test-customer",
        "a",
        "Tuesday",
        "true love",
        "no way",
        "12 angry men",
        "2024 annual report",
        "T-shirt",
        "Tea",
        "naniwa",
        "Infinite Jest",
        "deadbeef",
    ],
)
def test_meaningful_text(text):
    assert is_meaningful_text(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "\n\t",
        "abc12345-6789-0000-0000-000000000000",
        "ABC12345-6789-0000-0000-000000000000",
        "{abc12345-6789-0000-0000-000000000000}",
        "abc12345678900000000000000000000",
        "42",
        "-3.5",
        "1e-07",
        "1,234,567.89",
        "1_000",
        "12%",
        "$5.00",
        "nan",
        "-Infinity",
        "True",
        "false",
        " YES ",
        "no",
        "off",
        "2024-01-31",
        "2024-01-31T10:00:00+02:00",
        "2024-01-31 10:00",
        "10:30",
        "10:30:15.123",
        "T10:30",
        "31/12/2024",
        "31.12.2024",
    ],
)
def test_not_meaningful_text(text):
    assert not is_meaningful_text(text)


# NUL (issue 12, item 4): PostgreSQL text cannot hold U+0000; the record builder strips it,
# and the hash is of the stored value.


def test_the_record_builder_strips_nul_and_hashes_the_stored_value():
    record = make_record("k.note", "a\x00b\x00", ValueType.STRING, True)
    assert record.value == "ab"
    assert record.content_hash == content_hash("k.note", "ab", ValueType.STRING)
    assert record.embedding_text == "k.note: ab"
    assert record.embeddable
    assert FieldRecord.create("k.note", "a\x00b", ValueType.STRING, True) == make_record(
        "k.note", "ab", ValueType.STRING, True
    )


def test_a_value_of_only_nul_is_not_embeddable():
    record = make_record("k.note", "\x00 \x00", ValueType.STRING, True)
    assert (record.value, record.embeddable) == (" ", False)
