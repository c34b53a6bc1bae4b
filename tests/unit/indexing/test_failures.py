"""Pure parts of failure handling: the backoff schedule and the YAML dead-letter payload."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from idxr_pg.indexing.failures import DOCUMENT_LIMIT, Backoff, build_payload


def test_backoff_doubles_from_the_base_up_to_the_cap():
    backoff = Backoff(base_seconds=2.0, max_seconds=30.0)
    assert [backoff.delay(n) for n in range(1, 7)] == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert backoff.delay(0) == 0.0
    assert backoff.delay(10_000) == 30.0  # no overflow for absurd attempt counts


def test_zero_base_means_retry_at_once():
    assert Backoff(0.0, 600.0).delay(3) == 0.0


class Thing(BaseModel):
    id: int
    name: str


def _validation_error() -> ValidationError:
    try:
        Thing.model_validate({"id": "x", "name": None})
    except ValidationError as exc:
        return exc
    raise AssertionError("expected a validation error")


FIRST = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
LAST = datetime(2024, 5, 1, 12, 5, tzinfo=UTC)


def test_payload_is_readable_yaml_with_everything_an_operator_needs():
    exc = _validation_error()
    text = build_payload(
        entity_kind="thing",
        entity_id="42",
        stage="validate",
        exc=exc,
        attempts=5,
        first_failed_at=FIRST,
        last_failed_at=LAST,
        document={"id": "x", "name": None, "nested": {"list": [1, 2]}},
    )
    data = yaml.safe_load(text)
    assert data["entity_kind"] == "thing" and data["entity_id"] == "42"
    assert data["stage"] == "validate" and data["attempts"] == 5
    assert data["error_type"] == "pydantic_core._pydantic_core.ValidationError"
    assert "2 validation errors for Thing" in data["error_message"]
    assert "Traceback" in data["traceback"] and "_validation_error" in data["traceback"]
    assert data["first_failed_at"] == FIRST.isoformat()
    assert data["last_failed_at"] == LAST.isoformat()
    assert data["document"] == {"id": "x", "name": None, "nested": {"list": [1, 2]}}
    # Multi-line texts are literal blocks: the traceback reads as it printed.
    assert "traceback: |" in text
    assert list(data)[:3] == ["entity_kind", "entity_id", "stage"]


def test_a_large_document_is_cut_to_an_excerpt():
    document = {"body": "x" * (DOCUMENT_LIMIT * 2)}
    data = yaml.safe_load(
        build_payload(
            entity_kind="thing",
            entity_id="1",
            stage="embed",
            exc=RuntimeError("model said no"),
            attempts=1,
            first_failed_at=FIRST,
            last_failed_at=LAST,
            document=document,
        )
    )
    assert "document" not in data
    assert data["document_truncated"] is True
    assert data["document_size"] > DOCUMENT_LIMIT * 2
    assert len(data["document_excerpt"]) == DOCUMENT_LIMIT
    assert data["error_type"] == "RuntimeError" and data["error_message"] == "model said no"


@pytest.mark.parametrize("document", [None, {"when": datetime(2024, 1, 1)}])
def test_missing_or_non_json_documents_still_make_a_payload(document):
    data = yaml.safe_load(
        build_payload(
            entity_kind="thing",
            entity_id="1",
            stage="load",
            exc=KeyError("k"),
            attempts=2,
            first_failed_at=FIRST,
            last_failed_at=LAST,
            document=document,
        )
    )
    assert data["document"] == (None if document is None else {"when": "2024-01-01 00:00:00"})


def _nested(levels: int) -> dict:
    document: dict = {"leaf": "x"}
    for _ in range(levels):
        document = {"a": document}
    return document


@pytest.mark.parametrize("levels", [500, 1200, 5000])
def test_a_deep_document_still_gives_a_readable_bounded_payload(levels):
    payload = build_payload(
        entity_kind="nest",
        entity_id="4",
        stage="flatten",
        exc=RecursionError("maximum recursion depth exceeded"),
        attempts=2,
        first_failed_at=FIRST,
        last_failed_at=LAST,
        document={"id": 4, "data": _nested(levels)},
    )
    data = yaml.safe_load(payload)
    assert data["entity_id"] == "4" and data["document_truncated"] is True
    assert data["document_excerpt"].startswith('{"id": 4, "data": {"a": {"a":')
    assert len(payload) < 64_000


def test_a_wide_document_is_cut_to_fit_and_nul_is_shown_not_stored():
    document = {f"k{i}": [{"v": "x" * 40}] * 3 for i in range(2000)}
    payload = build_payload(
        entity_kind="nest",
        entity_id="5",
        stage="write",
        exc=ValueError("bad \x00 byte"),
        attempts=2,
        first_failed_at=FIRST,
        last_failed_at=LAST,
        document=document,
    )
    assert len(payload) < 64_000 and "\x00" not in payload
    data = yaml.safe_load(payload)
    assert data["document_truncated"] is True and "\\x00" in data["error_message"]
