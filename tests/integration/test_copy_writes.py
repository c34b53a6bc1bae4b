"""The write path's binary COPY upserts (`idxr_pg.db.staging`): the staged upsert of
idxr.search_index and of idxr.embedding_cache leaves exactly the rows that one INSERT per row
leaves (values, types, hashes, vectors, NULL embeddings, truncation, updated_at only for rows
written), a session without the TEMPORARY right falls back to those INSERTs, and the pipeline
writes through the staging table with stale paths and gone entities deleted."""

from __future__ import annotations

import numpy as np
import psycopg
import pytest
from psycopg import sql

from idxr_pg.db import embedding_cache as cache_rows
from idxr_pg.db import search_index, staging
from idxr_pg.db.connection import connect
from idxr_pg.records.record import ValueType, content_hash

DIMENSIONS = 384


def _vector(seed: int) -> np.ndarray:
    values = np.random.default_rng(seed).standard_normal(DIMENSIONS).astype(np.float32)
    return values / np.linalg.norm(values)


def _row(kind: str, entity_id: str, path: str, value: str, value_type: str, seed: int | None):
    return (
        kind,
        entity_id,
        path,
        value,
        value_type,
        content_hash(path, value, ValueType(value_type)),
        None if seed is None else _vector(seed),
        "middle_out" if seed == 3 else None,
        0,  # chunk 0: the field's own row (not chunked: no range)
        None,
        None,
    )


def _rows(kind: str) -> list[tuple]:
    return [
        _row(kind, "1", f"{kind}.title", "Grüße aus Köln — naïve café ☕", "string", 1),
        _row(kind, "1", f"{kind}.views", "10", "integer", None),
        _row(
            kind, "1", f"{kind}.tags.0.name", "energy\ttab and 'quotes' \\ backslash", "string", 2
        ),
        _row(kind, "2", f"{kind}.body", "a long text, cut " * 40, "string", 3),
        _row(kind, "2", f"{kind}.published", "True", "boolean", None),
        _row(kind, "2", f"{kind}.blank", "", "string", None),
    ]


def _stored(conn: psycopg.Connection, kind: str) -> list[tuple]:
    """Every column but the kind, the embedding as its exact text form."""
    return conn.execute(
        "SELECT entity_id, subpath(path, 1)::text, value, value_type::text, content_hash,"
        " embedding::text, truncation FROM idxr.search_index WHERE entity_kind = %s"
        " ORDER BY 1, 2",
        [kind],
    ).fetchall()


@pytest.fixture
def no_temp_url(isolated_database_url: str):
    """A login role in idxr_worker on a database whose TEMPORARY right was revoked from
    PUBLIC: the fallback's session."""
    params = psycopg.conninfo.conninfo_to_dict(isolated_database_url)
    database = params["dbname"]
    role = f"no_temp_{database[-8:]}".lower()
    with psycopg.connect(isolated_database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN IN ROLE idxr_worker").format(sql.Identifier(role))
        )
        admin.execute(
            sql.SQL("REVOKE TEMPORARY ON DATABASE {} FROM PUBLIC").format(sql.Identifier(database))
        )
    params["user"] = role
    yield psycopg.conninfo.make_conninfo(**params)
    with psycopg.connect(isolated_database_url, autocommit=True) as admin:
        admin.execute(
            sql.SQL("GRANT TEMPORARY ON DATABASE {} TO PUBLIC").format(sql.Identifier(database))
        )
        admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def _stamps(conn: psycopg.Connection) -> dict[str, object]:
    return dict(conn.execute("SELECT path::text, updated_at FROM idxr.search_index").fetchall())


def _write_twice(conn: psycopg.Connection) -> tuple[list[tuple], list[tuple], list[str]]:
    """Write the rows of kind "a", then upsert two changed rows over them: both states, and
    which rows the second write moved (updated_at)."""
    with conn.transaction():
        assert search_index.upsert_records(conn, _rows("a")) == 6
    first, before = _stored(conn, "a"), _stamps(conn)
    changed = [
        _row("a", "1", "a.title", "Another title", "string", 7),
        _row("a", "2", "a.published", "False", "boolean", None),
    ]
    with conn.transaction():
        assert search_index.upsert_records(conn, changed) == 2
    second, after = _stored(conn, "a"), _stamps(conn)
    return first, second, sorted(path for path in after if after[path] != before[path])


def test_staged_upsert_leaves_the_rows_of_one_insert_per_row(isolated_database_url, no_temp_url):
    with connect(isolated_database_url, autocommit=True) as staged:
        assert staging.can_stage(staged)
        first, second, moved = _write_twice(staged)
        assert staged.execute("SELECT to_regclass('pg_temp.idxr_stage_search_index')").fetchone()[0]
        assert staged.execute(
            "SELECT count(*) FROM pg_temp.idxr_stage_search_index"
        ).fetchone() == (0,)  # emptied at commit
        vector = staged.execute(
            "SELECT embedding FROM idxr.search_index WHERE path = 'a.title'"
        ).fetchone()[0]
        assert np.array_equal(vector.to_numpy(), _vector(7))  # binary COPY is exact
        staged.execute("DELETE FROM idxr.search_index")
    with connect(no_temp_url, autocommit=True) as plain:
        assert not staging.can_stage(plain)
        assert _write_twice(plain) == (first, second, moved)
    assert [r[5] is None for r in first] == [False, False, True, True, False, True]
    assert first[4][6] == "middle_out"  # entity 2's body: its truncation is kept
    assert second[1][:4] == ("1", "title", "Another title", "string") != first[1][:4]
    assert moved == ["a.published", "a.title"]


def test_a_failed_staged_write_rolls_back_and_leaves_the_stage_usable(isolated_database_url):
    with connect(isolated_database_url, autocommit=True) as conn:
        bad = _row("a", "1", "a.title", "x", "string", 1)
        bad = bad[:2] + ("not a valid ltree!",) + bad[3:]
        with pytest.raises(psycopg.errors.SyntaxError), conn.transaction():
            search_index.upsert_records(conn, [bad])
        with conn.transaction():
            search_index.upsert_records(conn, _rows("a"))
        assert len(_stored(conn, "a")) == 6


def test_cache_rows_staged_and_plain_agree(isolated_database_url, no_temp_url):
    rows = [("m@1", f"{i:064x}", _vector(i)) for i in (5, 3, 9)]
    with (
        connect(isolated_database_url, autocommit=True) as staged,
        connect(no_temp_url, autocommit=True) as plain,
    ):
        with staged.transaction():
            cache_rows.insert_vectors(staged, rows)
        with plain.transaction():
            cache_rows.insert_vectors(plain, [("m@2", h, v) for _, h, v in rows])
        with staged.transaction():  # already cached: left as they are
            cache_rows.insert_vectors(staged, [("m@1", rows[0][1], _vector(99))])
        stored = staged.execute(
            "SELECT model, text_hash, embedding::text FROM idxr.embedding_cache ORDER BY 1, 2"
        ).fetchall()
    assert [r[1:] for r in stored if r[0] == "m@1"] == [r[1:] for r in stored if r[0] == "m@2"]
    assert len(stored) == 6
    with connect(isolated_database_url, autocommit=True) as conn:
        found = dict(cache_rows.select_vectors(conn, "m@1", [rows[0][1]]))
    assert np.array_equal(found[rows[0][1]].to_numpy(), _vector(5))
