"""Physical lines with byte ranges, and raw CSV chunks cut at record ends."""

from __future__ import annotations

from pathlib import Path

from idxr_pg.loading.chunks import csv_chunks
from idxr_pg.loading.encoding import Encoding
from idxr_pg.loading.lines import read_lines


def lines_of(tmp_path: Path, data: bytes, encoding: Encoding, **kw) -> list[tuple]:
    path = tmp_path / "f"
    path.write_bytes(data)
    return [
        (line.number, line.start, line.end, line.text, line.bad)
        for line in read_lines(path, encoding, **kw)
    ]


def test_every_newline_style_ends_a_line_and_offsets_add_up(tmp_path):
    assert lines_of(tmp_path, b"a\nb\r\nc", Encoding("utf-8")) == [
        (1, 0, 2, "a\n", None),
        (2, 2, 5, "b\r\n", None),
        (3, 5, 6, "c", None),
    ]
    assert lines_of(tmp_path, b"a\rbb\r", Encoding("utf-8"), cr_only=True) == [
        (1, 0, 2, "a\r", None),
        (2, 2, 5, "bb\r", None),
    ]


def test_reading_starts_at_an_offset_after_the_bom(tmp_path):
    data = b"\xef\xbb\xbfh\nx\ny\n"
    assert [t[:3] for t in lines_of(tmp_path, data, Encoding("utf-8", 3))][0] == (1, 3, 5)
    assert lines_of(tmp_path, data, Encoding("utf-8", 3), start=7, first_number=3) == [
        (3, 7, 9, "y\n", None)
    ]


def test_utf16_lines_have_byte_offsets(tmp_path):
    data = "\ufeffé\r\nx\n".encode("utf-16-le")
    got = lines_of(tmp_path, data, Encoding("utf-16-le", 2))
    assert got == [(1, 2, 8, "é\r\n", None), (2, 8, 12, "x\n", None)]


def test_a_line_that_does_not_decode_is_flagged_not_dropped(tmp_path):
    got = lines_of(tmp_path, b"ok\nbad \xff\nok\n", Encoding("utf-8"))
    assert [g[0] for g in got] == [1, 2, 3]
    assert got[1][4] == "not valid utf-8: invalid start byte at byte 7"


def test_chunks_end_at_record_ends_even_inside_quoted_line_breaks(tmp_path):
    path = tmp_path / "f.csv"
    data = b'1,a\n2,"b\nc"\n3,d\n4,e\n5,f\n'
    path.write_bytes(data)
    chunks = list(csv_chunks(path, start=0, first_number=2, rows=2, cr_only=False))
    assert [c.data for c in chunks] == [b'1,a\n2,"b\nc"\n', b"3,d\n4,e\n", b"5,f\n"]
    assert [(c.first_line, c.last_line) for c in chunks] == [(2, 4), (5, 6), (7, 7)]
    assert [(c.start, c.end) for c in chunks] == [(0, 12), (12, 20), (20, 24)]
    assert b"".join(c.data for c in chunks) == data


def test_an_unbalanced_quote_does_not_make_one_endless_chunk(tmp_path):
    path = tmp_path / "f.csv"
    path.write_bytes(b'1,"open\n' + b"2,x\n" * 50)
    chunks = list(csv_chunks(path, start=0, first_number=1, rows=2, cr_only=False))
    assert max(len(c.lines) for c in chunks) == 8  # rows * MAX_FACTOR
