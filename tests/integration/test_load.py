"""`idxr-pg load` and `idxr-pg loads` against a real PostgreSQL (issue 17).

Files are generated into tmp_path. The bulk tests use the deterministic embedder where a worker
runs; one small end-to-end load is indexed and searched with the real model.
"""

from __future__ import annotations

import hashlib
import json
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from click.testing import CliRunner

from idxr_pg.cli import main
from idxr_pg.db.loads import fingerprint_sql
from tests.integration.worker_support import (
    IDXR,
    ITEMS_DDL,
    execute,
    install_triggers,
    item_entity,
    make_config,
    subprocess_env,
    wait_until,
    write_config,
)

ITEMS_HEADER = "id,title,body,n\n"


def item_line(i: int, suffix: str = "") -> str:
    return f'{i},title {i}{suffix},"body of item {i}, with a comma",{i % 97}\n'


def write_items(path: Path, ids: range, suffix: str = "") -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        f.write(ITEMS_HEADER)
        for i in ids:
            f.write(item_line(i, suffix))
    return path


def cli(url: str, *args: str, config: Path | None = None) -> Any:
    base = ["--database-url", url]
    if config is not None:
        base += ["--config", str(config)]
    return CliRunner().invoke(main, [*base, *args], catch_exceptions=False)


def load_json(url: str, *args: str, exit_code: int = 0) -> list[dict[str, Any]]:
    result = cli(url, "load", "--json", *args)
    assert result.exit_code == exit_code, result.output
    return json.loads(result.stdout)


def rows(url: str, query: str, params: Any = None) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(query, params).fetchall()


def items(url: str) -> dict[int, tuple]:
    return {r[0]: r[1:] for r in rows(url, "SELECT id, title, body, n FROM public.items")}


def xmins(url: str) -> dict[int, str]:
    return dict(rows(url, "SELECT id, xmin::text FROM public.items"))


def expected_items(ids: range, suffix: str = "") -> dict[int, tuple]:
    return {i: (f"title {i}{suffix}", f"body of item {i}, with a comma", i % 97) for i in ids}


@pytest.fixture
def items_db(isolated_database_url: str) -> str:
    execute(isolated_database_url, ITEMS_DDL)
    return isolated_database_url


# ---- bulk CSV: first load, unchanged re-load, forced re-read, append --------------------------


def test_a_100k_row_csv_loads_reloads_as_a_no_op_and_an_append_loads_only_its_lines(
    items_db: str, tmp_path: Path
):
    url = items_db
    path = write_items(tmp_path / "items.csv", range(100_000))

    [first] = load_json(url, str(path), "--table", "public.items")
    assert first["state"] == "done"
    assert (first["rows_read"], first["rows_inserted"], first["rows_rejected"]) == (
        100_000,
        100_000,
        0,
    )
    assert first["partitions"] == 5  # 20,000 rows each
    assert items(url) == expected_items(range(100_000))
    before = xmins(url)

    [again] = load_json(url, str(path), "--table", "public.items")
    assert again["state"] == "unchanged"
    assert again["rows_read"] == again["rows_inserted"] == again["rows_updated"] == 0
    assert xmins(url) == before  # not one row written

    # Forced: every row is read and compared, none is written (same fingerprints).
    [forced] = load_json(url, str(path), "--table", "public.items", "--force")
    assert (forced["rows_read"], forced["rows_unchanged"]) == (100_000, 100_000)
    assert forced["rows_inserted"] == forced["rows_updated"] == 0
    assert xmins(url) == before

    with path.open("a", encoding="utf-8") as f:
        for i in range(100_000, 101_000):
            f.write(item_line(i))
    [appended] = load_json(url, str(path), "--table", "public.items")
    assert appended["appends_to"] == forced["id"]
    assert (appended["rows_read"], appended["rows_inserted"]) == (1_000, 1_000)
    assert appended["start_byte"] == first["file_size"]
    assert appended["last_line"] == 101_001  # header + 101,000 rows
    assert items(url) == expected_items(range(101_000))
    after = xmins(url)
    assert {i: after[i] for i in before} == before  # the old rows were not touched

    listing = cli(url, "loads", "--json")
    assert [entry["state"] for entry in json.loads(listing.stdout)] == [
        "done",
        "done",
        "unchanged",
        "done",
    ]
    table = cli(url, "loads")
    assert "appended after #" in table.stdout and "unchanged" in table.stdout


def test_changed_rows_are_updated_and_a_snapshot_deletes_missing_rows(items_db, tmp_path):
    url = items_db
    path = write_items(tmp_path / "items.csv", range(1_000))
    load_json(url, str(path), "--table", "items")
    before = xmins(url)

    lines = path.read_text().splitlines(keepends=True)
    lines[11] = item_line(10, " (changed)")  # line 12 holds id 10
    del lines[501]  # id 500 leaves the snapshot
    lines.append(item_line(5_000))
    path.write_text("".join(lines))
    [snapshot] = load_json(url, str(path), "--table", "items", "--delete-missing")
    assert snapshot["rows_inserted"] == 1
    assert snapshot["rows_updated"] == 1
    assert snapshot["rows_unchanged"] == 998
    assert snapshot["rows_deleted"] == 1
    expected = expected_items(range(1_000))
    expected[10] = expected_items(range(10, 11), " (changed)")[10]
    del expected[500]
    expected.update(expected_items(range(5_000, 5_001)))
    assert items(url) == expected
    after = xmins(url)
    assert {i for i in after if after[i] != before.get(i)} == {10, 5_000}
    assert rows(url, "SELECT count(*) FROM idxr.load_keys") == [(0,)]


def test_a_row_changed_or_deleted_in_the_table_is_restored_by_a_forced_reload(items_db, tmp_path):
    url = items_db
    path = write_items(tmp_path / "items.csv", range(100))
    load_json(url, str(path), "--table", "items")
    execute(url, "UPDATE items SET title = 'edited' WHERE id = 3; DELETE FROM items WHERE id = 4")
    [forced] = load_json(url, str(path), "--table", "items", "--force")
    assert (forced["rows_inserted"], forced["rows_updated"]) == (1, 1)
    assert items(url) == expected_items(range(100))


def test_a_key_repeated_in_the_file_keeps_its_last_line(items_db, tmp_path):
    url = items_db
    path = tmp_path / "dup.csv"
    path.write_text(ITEMS_HEADER + item_line(1) + item_line(2) + item_line(1, " again"))
    [result] = load_json(url, str(path), "--table", "items")
    assert result["rows_read"] == 3
    assert items(url)[1][0] == "title 1 again"
    execute(url, "TRUNCATE items")
    [forced] = load_json(url, str(path), "--table", "items", "--force")
    assert (forced["rows_inserted"], forced["rows_unchanged"]) == (2, 1)
    assert items(url)[1][0] == "title 1 again"


def test_the_fingerprint_is_the_documented_sha256_of_the_normalised_row(items_db):
    url = items_db
    execute(url, "INSERT INTO items VALUES (7, 'Café \"x\"', NULL, 3)")
    query = psycopg.sql.SQL("SELECT {} FROM public.items AS t").format(
        fingerprint_sql("t", ["title", "n", "id", "body"])
    )
    with psycopg.connect(url) as conn:
        (stored,) = conn.execute(query).fetchone()
    columns = json.dumps(["body", "id", "n", "title"], separators=(",", ":"))
    values = json.dumps([None, "7", "3", 'Café "x"'], separators=(",", ":"), ensure_ascii=False)
    assert bytes(stored) == hashlib.sha256(f"{columns}\n{values}".encode()).digest()


# ---- JSONL ------------------------------------------------------------------------------------


def test_a_jsonl_file_loads_and_creates_its_table_with_types(isolated_database_url, tmp_path):
    url = isolated_database_url
    path = tmp_path / "events.jsonl"
    records = [
        {"id": i, "name": f"event {i}", "score": i / 4, "ok": i % 2 == 0, "tags": ["a", str(i)]}
        for i in range(2_000)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    [result] = load_json(url, str(path), "--table", "public.events", "--create")
    assert (result["rows_inserted"], result["format"]) == (2_000, "jsonl")
    types = dict(
        rows(
            url,
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_name = 'events'",
        )
    )
    assert types == {
        "id": "bigint",
        "name": "text",
        "score": "double precision",
        "ok": "boolean",
        "tags": "jsonb",
    }
    assert rows(url, "SELECT id, name, score, ok, tags FROM events WHERE id = 5") == [
        (5, "event 5", 1.25, False, ["a", "5"])
    ]
    [again] = load_json(url, str(path), "--table", "public.events")
    assert again["state"] == "unchanged"
    records[3]["name"] = "renamed"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    [changed] = load_json(url, str(path), "--table", "public.events")
    assert (changed["rows_updated"], changed["rows_unchanged"]) == (1, 1_999)


def test_create_from_a_pydantic_model(isolated_database_url, tmp_path):
    url = isolated_database_url
    path = tmp_path / "items.csv"
    path.write_text(ITEMS_HEADER + item_line(1))
    result = cli(
        url,
        "load",
        str(path),
        "--table",
        "made",
        "--create",
        "--model",
        "tests.integration.worker_support:Item",
    )
    assert result.exit_code == 0, result.output
    types = dict(
        rows(
            url,
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_name = 'made'",
        )
    )
    assert types == {"id": "bigint", "title": "text", "body": "text", "n": "bigint"}
    assert rows(url, "SELECT id, n FROM made") == [(1, 1)]


# ---- bad lines --------------------------------------------------------------------------------


def test_bad_csv_lines_are_rejected_with_their_line_numbers_and_the_rest_loads(items_db, tmp_path):
    url = items_db
    good = [item_line(i) for i in range(1, 31)]
    body = list(good)
    body.insert(4, "100,too,many,fields,here\n")  # line 6
    body.insert(9, "101,title,body,not a number\n")  # line 11
    body.insert(14, "102,nul \x00 here,body,1\n")  # line 16
    body.insert(19, ",no key,body,1\n")  # line 21
    body.insert(24, '103,"a title\nover two lines",body,5\n')  # lines 26-27: good
    path = tmp_path / "bad.csv"
    path.write_text(ITEMS_HEADER + "".join(body))
    result = cli(url, "load", str(path), "--table", "items")
    assert result.exit_code == 2, result.output
    assert "4 lines rejected" in result.output

    errors = yaml.safe_load((tmp_path / "bad.csv.errors.yaml").read_text())
    assert [(e["line"], e["file"]) for e in errors] == [(n, str(path)) for n in (6, 11, 16, 21)]
    reasons = [e["reason"] for e in errors]
    assert reasons[0] == "wrong column count: 5 fields, the header has 4"
    assert 'invalid input syntax for type integer: "not a number"' in reasons[1]
    assert "(column n)" in reasons[1]
    assert reasons[2] == "NUL byte"
    assert reasons[3] == "no value for column id (it needs one)"
    assert errors[0]["raw"] == "100,too,many,fields,here"
    assert errors[2]["raw"] == "102,nul \x00 here,body,1"

    loaded = items(url)
    assert set(loaded) == set(range(1, 31)) | {103}
    assert loaded[103][0] == "a title\nover two lines"
    [manifest] = json.loads(cli(url, "loads", "--json").stdout)
    assert (manifest["rows_read"], manifest["rows_inserted"], manifest["rows_rejected"]) == (
        35,
        31,
        4,
    )


def test_bad_jsonl_lines_are_rejected_with_their_line_numbers(items_db, tmp_path):
    url = items_db
    lines = [json.dumps({"id": i, "title": f"t{i}", "n": i}) + "\n" for i in range(1, 11)]
    lines.insert(2, "{not json\n")  # line 3
    lines.insert(5, "[1, 2]\n")  # line 6
    lines.insert(7, json.dumps({"id": 50, "title": "x", "n": "many"}) + "\n")  # line 8
    lines.insert(9, '{"id": 51, "title": "a\\u0000b", "n": 1}\n')  # line 10
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(lines))
    errors_path = tmp_path / "rejects.yaml"
    result = cli(url, "load", str(path), "--table", "items", "--errors", str(errors_path))
    assert result.exit_code == 2, result.output
    errors = yaml.safe_load(errors_path.read_text())
    assert [e["line"] for e in errors] == [3, 6, 8, 10]
    assert errors[0]["reason"].startswith("invalid JSON")
    assert errors[1]["reason"] == "not a JSON object (a JSON list)"
    assert "integer" in errors[2]["reason"]
    assert errors[3]["reason"] == "NUL byte"
    assert set(items(url)) == set(range(1, 11))


# ---- kill and resume --------------------------------------------------------------------------


SLOW_DDL = """
CREATE FUNCTION public.slow_down() RETURNS trigger LANGUAGE plpgsql AS
$$ BEGIN PERFORM pg_sleep(0.15); RETURN NULL; END $$;
CREATE TRIGGER slow AFTER INSERT OR UPDATE ON public.items
    FOR EACH STATEMENT EXECUTE FUNCTION public.slow_down();
"""


@pytest.mark.slow
@pytest.mark.parametrize("file_format", ["csv", "jsonl"])
def test_a_killed_load_resumes_after_its_last_partition_with_an_exact_result(
    items_db, tmp_path, file_format
):
    url = items_db
    execute(url, SLOW_DDL)  # each partition's write takes >= 0.15 s: time to kill mid-load
    ids = range(40_000)
    if file_format == "csv":
        path = write_items(tmp_path / "items.csv", ids)
    else:
        path = tmp_path / "items.jsonl"
        path.write_text(
            "".join(
                json.dumps(
                    {
                        "id": i,
                        "title": f"title {i}",
                        "body": f"body of item {i}, with a comma",
                        "n": i % 97,
                    }
                )
                + "\n"
                for i in ids
            )
        )
    command = [IDXR, "load", str(path), "--table", "items", "--partition-rows", "1000"]
    env = subprocess_env(IDXR_DATABASE_URL=url)
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def committed() -> int:
        return rows(url, "SELECT count(*) FROM idxr.load_partitions")[0][0]

    try:
        wait_until(lambda: committed() >= 3, timeout=60, what="3 partitions committed")
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()

    # The server ends the killed client's session once its statement ends; `loads` then sees
    # the table's load lock free and marks the load interrupted.
    def state() -> str:
        return json.loads(cli(url, "loads", "--json").stdout)[0]["state"]

    wait_until(lambda: state() == "interrupted", timeout=30, what="the load marked interrupted")
    done_before = committed()
    assert 3 <= done_before < 40
    assert rows(url, "SELECT count(*) FROM items")[0][0] == 1_000 * done_before

    execute(url, "DROP TRIGGER slow ON public.items")
    [resumed] = load_json(
        url, str(path), "--table", "items", "--partition-rows", "1000", "--resume"
    )
    assert resumed["state"] == "done"
    assert resumed["resumes"] == 1
    assert (resumed["rows_read"], resumed["rows_inserted"], resumed["rows_unchanged"]) == (
        40_000,
        40_000,
        0,
    )
    assert items(url) == expected_items(ids)
    parts = rows(
        url,
        "SELECT first_line, last_line, start_byte, end_byte, rows_read FROM idxr.load_partitions"
        " ORDER BY partition",
    )
    assert len(parts) == 40 and sum(p[4] for p in parts) == 40_000
    first_line = 2 if file_format == "csv" else 1
    assert parts[0][0] == first_line and parts[-1][1] == 40_000 + first_line - 1
    for before, after in zip(parts, parts[1:], strict=False):
        assert after[0] == before[1] + 1 and after[2] == before[3]
    assert parts[-1][3] == path.stat().st_size


# ---- encodings and newline styles ---------------------------------------------------------------


WESTERN = ["Café crème brûlée", "Straße Grüße", "niño ñandú", "naïve façade", "Øre ±½ °C"]
CP1252_ONLY = ["€5 œuvre", "“quoted” it’s", "—dash"]


def text_rows(names: list[str]) -> str:
    return "id,name\n" + "".join(f"{i},{name} {i}\n" for i, name in enumerate(names * 20))


@pytest.mark.parametrize(
    ("label", "encode", "option", "expected_codec"),
    [
        ("cp1252, CRLF", lambda t: t.replace("\n", "\r\n").encode("cp1252"), None, "cp1252"),
        ("latin-1, CR", lambda t: t.replace("\n", "\r").encode("latin-1"), "latin-1", "iso8859-1"),
        ("latin-1 detected", lambda t: t.encode("latin-1"), None, "cp1252"),
        (
            "utf-16 with BOM, CRLF",
            lambda t: t.replace("\n", "\r\n").encode("utf-16"),
            None,
            "utf-16-le",
        ),
        ("utf-16-be no BOM", lambda t: t.encode("utf-16-be"), None, "utf-16-be"),
        ("utf-8 with BOM", lambda t: b"\xef\xbb\xbf" + t.encode("utf-8"), None, "utf-8"),
    ],
)
def test_files_in_other_encodings_load_with_the_right_characters(
    isolated_database_url, tmp_path, label, encode, option, expected_codec
):
    url = isolated_database_url
    names = WESTERN + (CP1252_ONLY if label.startswith(("cp1252", "utf")) else [])
    text = text_rows(names)
    path = tmp_path / "names.csv"
    path.write_bytes(encode(text))
    args = [str(path), "--table", "names", "--create"]
    if option:
        args += ["--encoding", option]
    [result] = load_json(url, *args)
    assert result["encoding"] == expected_codec, label
    expected = {str(i): f"{name} {i}" for i, name in enumerate(names * 20)}
    assert dict(rows(url, "SELECT id, name FROM names")) == expected
    [again] = load_json(url, *args)
    assert again["state"] == "unchanged"


# ---- clear errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.csv", "--table", "items"], "missing.csv: no such file"),
        (
            ["items.csv", "--table", "nope"],
            "table nope does not exist (create it from the file with --create)",
        ),
        (
            ["items.csv", "--table", "items", "--map", "title"],
            "--map 'title': expected COLUMN=FIELD",
        ),
        (
            ["items.csv", "--table", "items", "--map", "colour=title"],
            "--map colour=title: table public.items has no column colour",
        ),
        (["items.csv", "--table", "items", "--map", "title=heading"], "has no field 'heading'"),
        (["items.txt", "--table", "items"], "cannot tell the format from the extension '.txt'"),
        (
            ["items.csv", "--table", "items", "--key", "title"],
            "--key title: column title of public.items has no unique index",
        ),
        (
            ["items.csv", "--table", "items", "--encoding", "klingon"],
            "--encoding klingon: unknown encoding",
        ),
    ],
)
def test_bad_input_gets_a_one_line_error_and_loads_nothing(items_db, tmp_path, args, message):
    url = items_db
    write_items(tmp_path / "items.csv", range(3))
    write_items(tmp_path / "items.txt", range(3))
    args = [str(tmp_path / args[0]), *args[1:]]
    result = cli(url, "load", *args)
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert items(url) == {}


def test_a_csv_field_without_a_column_is_refused(items_db, tmp_path):
    url = items_db
    path = tmp_path / "extra.csv"
    path.write_text("id,title,colour\n1,a,red\n")
    result = cli(url, "load", str(path), "--table", "items")
    assert result.exit_code == 1
    assert "field(s) colour have no column in table public.items" in result.output
    mapped = tmp_path / "mapped.csv"
    mapped.write_text("key,heading\n1,a\n")
    result = cli(
        url, "load", str(mapped), "--table", "items", "--map", "id=key", "--map", "title=heading"
    )
    assert result.exit_code == 0, result.output
    assert items(url) == {1: ("a", None, 0)}


# ---- on a watched table: only new or changed rows are indexed -----------------------------------


WORKER_SUMMARY = re.compile(r"(\d+) entities: .* (\d+) texts embedded")


def worker_once(url: str, config: Path) -> tuple[int, int]:
    result = cli(url, "worker", "--once", config=config)
    assert result.exit_code == 0, result.output
    entities, embedded = WORKER_SUMMARY.search(result.stdout).groups()
    return int(entities), int(embedded)


def test_on_a_watched_table_a_reload_embeds_nothing_and_an_append_only_its_rows(items_db, tmp_path):
    url = items_db
    config = write_config(tmp_path / "idxr.yaml", [item_entity()], model="deterministic-test")
    install_triggers(url, make_config(tmp_path, [item_entity()], model="deterministic-test"))
    path = write_items(tmp_path / "items.csv", range(3_000))
    load_json(url, str(path), "--table", "items")
    assert worker_once(url, config) == (3_000, 6_000)  # title and body per item

    load_json(url, str(path), "--table", "items")
    load_json(url, str(path), "--table", "items", "--force")
    assert worker_once(url, config) == (0, 0)

    with path.open("a", encoding="utf-8") as f:
        for i in range(3_000, 4_000):
            f.write(item_line(i))
    [appended] = load_json(url, str(path), "--table", "items")
    assert appended["rows_inserted"] == 1_000
    assert worker_once(url, config) == (1_000, 2_000)
    indexed = rows(url, "SELECT count(DISTINCT entity_id) FROM idxr.search_index")
    assert indexed == [(4_000,)]


@pytest.mark.model
def test_a_loaded_file_is_indexed_and_found_with_the_real_model(items_db, tmp_path):
    url = items_db
    config = write_config(tmp_path / "idxr.yaml", [item_entity()])
    install_triggers(url, make_config(tmp_path, [item_entity()]))
    path = tmp_path / "items.csv"
    path.write_text(
        ITEMS_HEADER
        + '1,Sourdough bread,"Flour, water, salt and a starter",1\n'
        + '2,Mountain bike,"Full suspension, 29 inch wheels",2\n'
        + '3,Espresso machine,"Brews coffee under nine bars of pressure",3\n'
    )
    load_json(url, str(path), "--table", "items")
    assert worker_once(url, config) == (3, 6)
    result = cli(url, "search", "a bicycle for trails", "--kind", "item", "--json", config=config)
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)
    assert hits[0]["entity_id"] == "2"
    load_json(url, str(path), "--table", "items", "--force")
    assert worker_once(url, config) == (0, 0)


def test_help_explains_the_command():
    result = CliRunner().invoke(main, ["load", "--help"])
    assert result.exit_code == 0
    for words in ("fingerprint", "--resume", "--delete-missing", "YAML error file", "--encoding"):
        assert words in result.output


def test_create_with_a_model_can_add_the_entity_kind_to_the_config(isolated_database_url, tmp_path):
    url = isolated_database_url
    config = tmp_path / "idxr.yaml"
    config.write_text(
        "# my kinds\nentities:\n  - name: other\n    model: tests.integration.worker_support:Item\n"
        "    table: public.other\n    key: id\nembedding:\n  model: deterministic-test\n"
    )
    path = tmp_path / "items.csv"
    path.write_text(ITEMS_HEADER + item_line(1))
    args = ["load", str(path), "--table", "made", "--create"]
    args += ["--model", "tests.integration.worker_support:Item", "--add-kind", "made_item"]
    result = cli(url, *args, config=config)
    assert result.exit_code == 0, result.output
    text = config.read_text()
    assert text.startswith("# my kinds\n")  # appended: comments and layout kept
    entities = yaml.safe_load(text)["entities"]
    assert entities[-1] == {
        "name": "made_item",
        "model": "tests.integration.worker_support:Item",
        "table": "public.made",
        "key": "id",
    }
    again = cli(url, *args, config=config)
    assert again.exit_code == 0 and "already has an entity kind made_item" in again.output
    assert config.read_text() == text


def test_a_database_without_the_loads_schema_is_told_to_migrate(empty_database_url, tmp_path):
    path = write_items(tmp_path / "items.csv", range(2))
    result = cli(empty_database_url, "load", str(path), "--table", "items")
    assert result.exit_code == 1
    assert "run `idxr-pg migrate`" in result.output


def test_one_load_per_table_at_a_time(items_db, tmp_path):
    from idxr_pg.db.loads import try_lock_table

    url = items_db
    path = write_items(tmp_path / "items.csv", range(5))
    with psycopg.connect(url, autocommit=True) as other:
        assert try_lock_table(other, "public.items")  # as a running load holds it
        result = cli(url, "load", str(path), "--table", "items")
        assert result.exit_code == 1
        assert "another load into table public.items is running" in result.output
    [done] = load_json(url, str(path), "--table", "items")
    assert done["rows_inserted"] == 5


def test_resume_of_a_file_that_changed_since_loads_it_afresh(items_db, tmp_path):
    url = items_db
    path = write_items(tmp_path / "items.csv", range(10))
    execute(
        url,
        "CREATE FUNCTION fail() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " RAISE EXCEPTION 'refused' USING ERRCODE = 'P0001'; END $$;"
        " CREATE TRIGGER fail BEFORE INSERT ON items FOR EACH STATEMENT EXECUTE FUNCTION fail()",
    )
    result = cli(url, "load", str(path), "--table", "items")
    assert result.exit_code == 1 and "failed at lines 2-11: refused" in result.output
    assert len(result.output.strip().splitlines()) == 1
    [failed] = json.loads(cli(url, "loads", "--json").stdout)
    assert failed["state"] == "failed" and "refused" in failed["error"]
    execute(url, "DROP TRIGGER fail ON items")
    write_items(path, range(12))
    [resumed] = load_json(url, str(path), "--table", "items", "--resume")
    assert resumed["id"] != failed["id"] and resumed["rows_inserted"] == 12
    assert items(url) == expected_items(range(12))
