"""CSV and JSONL records, the plan of a load (--map, the key), and the YAML error file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from idxr_pg.loading.errors import LoadError
from idxr_pg.loading.formats import csv_header, csv_records, json_keys, json_value, jsonl_records
from idxr_pg.loading.lines import Line
from idxr_pg.loading.plan import (
    create_columns_from_json,
    create_columns_from_model,
    parse_maps,
    plan_load,
)
from idxr_pg.loading.rejects import Reject, RejectFile


def lines(text: str, first: int = 1) -> list[Line]:
    out, offset = [], 0
    for number, part in enumerate(text.splitlines(keepends=True), start=first):
        out.append(Line(number, offset, offset + len(part.encode()), part))
        offset += len(part.encode())
    return out


def test_csv_header_and_records_with_bad_lines():
    header, last, end = csv_header(iter(lines("id, name ,n\n1,a,2\n")))
    assert (header, last, end) == (["id", "name", "n"], 1, 12)
    body = 'x\n1,a,2\n\n2,"multi\nline",3\n3,b\n4,\x00,5\n,c,6\n5,,7\n'
    records = list(csv_records(iter(lines(body, 2)), 3, [0, 1], [(0, "id")]))
    got = [(r.first_line, r.last_line, r.values, r.problem) for r in records]
    assert got == [
        (2, 2, None, "wrong column count: 1 fields, the header has 3"),
        (3, 3, ("1", "a"), None),
        (5, 6, ("2", "multi\nline"), None),
        (7, 7, None, "wrong column count: 2 fields, the header has 3"),
        (8, 8, None, "NUL byte"),
        (9, 9, None, "no value for column id (it needs one)"),
        (10, 10, ("5", None), None),  # an empty field is NULL
    ]
    assert records[2].raw == '2,"multi\nline",3\n'
    assert records[-1].end == len(body.encode())


def test_jsonl_records_and_values():
    body = '{"id": 1, "t": "x", "o": {"a": [1, 2]}}\n\nnot json\n[1]\n{"id": 2, "t": true}\n{"t": 1.5}\n'
    records = list(jsonl_records(iter(lines(body)), ["id", "t", "o"], [(0, "id")]))
    got = [(r.first_line, r.values, r.problem) for r in records]
    assert got[0] == (1, ("1", "x", '{"a":[1,2]}'), None)
    assert got[1][2].startswith("invalid JSON") and got[1][0] == 3
    assert got[2] == (4, None, "not a JSON object (a JSON list)")
    assert got[3] == (5, ("2", "true", None), None)
    assert got[4] == (6, None, "no value for column id (it needs one)")
    assert (
        json_value("é\r\n") == "é\r\n" and json_value(None) is None and json_value(False) == "false"
    )
    assert json_keys(iter(lines('{"a": null}\n{"a": 3, "b": "x"}\n'))) == {"a": 3, "b": "x"}


def test_parse_maps():
    assert parse_maps(["name=full_name", " id = key "]) == {"name": "full_name", "id": "key"}
    with pytest.raises(LoadError, match="--map 'name': expected COLUMN=FIELD"):
        parse_maps(["name"])
    with pytest.raises(LoadError, match="column name is mapped twice"):
        parse_maps(["name=a", "name=b"])


COLUMNS = {"id": False, "name": True, "note": False, "n": False}


def plan(fields, maps=None, header=True, key="id"):
    return plan_load(
        file_label="f.csv",
        table="public.t",
        file_fields=fields,
        header=header,
        columns=COLUMNS,
        key=key,
        maps=maps or {},
    )


def test_a_plan_sorts_columns_and_knows_which_need_a_value():
    p = plan(["note", "key", "name"], {"id": "key"})
    assert p.columns == ("id", "name", "note")
    assert p.fields == ("key", "name", "note")
    assert p.required == ((0, "id"), (1, "name"))
    assert p.in_field_order(["note", "key", "name"]) == ["note", "id", "name"]
    assert p.picks(["note", "key", "name"]) == [1, 2, 0]
    assert p.signature("csv", "utf-8") != p.signature("csv", "cp1252")


def test_jsonl_plans_ignore_unknown_keys():
    assert plan(["id", "extra", "n"], header=False).columns == ("id", "n")


@pytest.mark.parametrize(
    ("fields", "maps", "message"),
    [
        (["id", "colour"], {}, "field(s) colour have no column in table public.t"),
        (["id", "id"], {}, "the header repeats id"),
        (["id", ""], {}, "header field 2 has no name"),
        (["name"], {}, "no field for the key column id"),
        (["id"], {"colour": "id"}, "--map colour=id: table public.t has no column colour"),
        (["id"], {"name": "nom"}, "--map name=nom: f.csv has no field 'nom'"),
    ],
)
def test_plan_errors_name_the_option_file_or_column(fields, maps, message):
    with pytest.raises(LoadError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan(fields, maps)


def test_create_columns():
    assert create_columns_from_json({"id": 1, "x": 1.5, "ok": True, "t": None, "o": {}}, {}) == [
        ("id", "bigint"),
        ("x", "double precision"),
        ("ok", "boolean"),
        ("t", "text"),
        ("o", "jsonb"),
    ]
    import datetime
    import decimal

    from pydantic import BaseModel

    class Inner(BaseModel):
        a: int

    class M(BaseModel):
        id: int
        price: decimal.Decimal | None = None
        at: datetime.datetime
        day: datetime.date
        inner: Inner
        tags: list[str] = []
        name: str

    assert create_columns_from_model(M) == [
        ("id", "bigint"),
        ("price", "numeric"),
        ("at", "timestamptz"),
        ("day", "date"),
        ("inner", "jsonb"),
        ("tags", "jsonb"),
        ("name", "text"),
    ]


def test_the_error_file_is_a_yaml_list_cut_back_on_resume(tmp_path: Path):
    path = tmp_path / "e.yaml"
    source = tmp_path / "f.csv"
    errors = RejectFile(path, source)
    assert not path.exists()  # created on the first reject
    first = errors.write([Reject(3, 3, "a,\x00\r\n", "NUL byte")])
    errors.write([Reject(9, 10, 'x,"y\nz"\n', "why: not")])
    errors.close()
    items = yaml.safe_load(path.read_text())
    assert items == [
        {"file": str(source), "line": 3, "reason": "NUL byte", "raw": "a,\x00"},
        {"file": str(source), "line": 9, "last_line": 10, "reason": "why: not", "raw": 'x,"y\nz"'},
    ]
    RejectFile(path, source, keep_bytes=first).close()  # a resumed load keeps partition 1's
    assert len(yaml.safe_load(path.read_text())) == 1
    RejectFile(path, source).close()  # a new load starts afresh
    assert not path.exists()
