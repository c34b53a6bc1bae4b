"""One pass over a file (scan) and the choice of its codec (encoding)."""

from __future__ import annotations

import codecs
import hashlib
from pathlib import Path

import pytest

from idxr_pg.loading.encoding import Encoding, EncodingError, choose_encoding
from idxr_pg.loading.scan import BLOCK_SIZE, scan_file

TEXT = "id,name\n" + "".join(f"{i},Café crème {i} Straße naïve niño Øre\n" for i in range(300))


def write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "f.csv"
    path.write_bytes(data)
    return path


def test_scan_hashes_the_file_and_the_prefixes_asked_for(tmp_path):
    data = b"x" * (BLOCK_SIZE + 10) + b"\n" + b"y" * 50
    path = write(tmp_path, data)
    scan = scan_file(path, prefixes=[5, BLOCK_SIZE + 3, len(data), len(data) + 1])
    assert scan.size == len(data)
    assert scan.sha256 == hashlib.sha256(data).hexdigest()
    assert scan.prefix_sha256 == {
        5: hashlib.sha256(data[:5]).hexdigest(),
        BLOCK_SIZE + 3: hashlib.sha256(data[: BLOCK_SIZE + 3]).hexdigest(),
        len(data): hashlib.sha256(data).hexdigest(),
    }
    assert scan.newlines == 1 and scan.valid_utf8


def test_scan_finds_invalid_utf8_and_the_line_end(tmp_path):
    scan = scan_file(write(tmp_path, TEXT.encode("cp1252")))
    assert not scan.valid_utf8
    assert scan.ends_with_newline("cp1252")
    assert not scan_file(write(tmp_path, b"a\nb")).ends_with_newline("utf-8")
    assert scan_file(write(tmp_path, "a\r\n".encode("utf-16-le"))).ends_with_newline("utf-16-le")


@pytest.mark.parametrize(
    ("data", "codec", "bom"),
    [
        (codecs.BOM_UTF8 + TEXT.encode(), "utf-8", 3),
        (TEXT.encode("utf-16"), "utf-16-le", 2),  # Python writes a little-endian BOM
        (codecs.BOM_UTF16_BE + TEXT.encode("utf-16-be"), "utf-16-be", 2),
        (codecs.BOM_UTF32_LE + TEXT.encode("utf-32-le"), "utf-32-le", 4),
        (TEXT.encode("utf-16-le"), "utf-16-le", 0),
        (TEXT.encode("utf-16-be"), "utf-16-be", 0),
        (TEXT.encode("utf-8"), "utf-8", 0),
        (b"id,name\n1,plain ascii\n", "utf-8", 0),
        ((TEXT + "5 €, “quoted”, it’s\n").encode("cp1252"), "cp1252", 0),
        (TEXT.encode("latin-1"), "cp1252", 0),  # same characters: cp1252 extends latin-1
    ],
)
def test_the_codec_is_detected(tmp_path, data, codec, bom):
    assert choose_encoding(scan_file(write(tmp_path, data))) == Encoding(codec, bom)


def test_latin1_with_a_byte_cp1252_leaves_undefined_is_not_cp1252(tmp_path):
    chosen = choose_encoding(scan_file(write(tmp_path, TEXT.encode("latin-1") + b"3,\x81x\n")))
    assert chosen.codec != "cp1252"
    (TEXT.encode("latin-1") + b"3,\x81x\n").decode(chosen.codec)


def test_the_option_overrides_detection_and_still_skips_a_matching_bom(tmp_path):
    scan = scan_file(write(tmp_path, codecs.BOM_UTF8 + TEXT.encode()))
    assert choose_encoding(scan, "utf-8") == Encoding("utf-8", 3, detected=False)
    assert choose_encoding(scan, "utf-8-sig") == Encoding("utf-8", 3, detected=False)
    assert choose_encoding(scan, "latin-1") == Encoding("iso8859-1", 0, detected=False)
    wide = scan_file(write(tmp_path, TEXT.encode("utf-16")))
    assert choose_encoding(wide, "utf-16") == Encoding("utf-16-le", 2, detected=False)
    with pytest.raises(EncodingError, match="--encoding nope: unknown encoding"):
        choose_encoding(scan, "nope")


def test_postgres_names_the_codecs_copy_can_decode():
    assert Encoding("utf-8").postgres == "UTF8"
    assert Encoding("cp1252").postgres == "WIN1252"
    assert Encoding("iso8859-1").postgres == "LATIN1"
    assert Encoding("utf-16-le").postgres is None
    assert not Encoding("utf-16-le").ascii_compatible
