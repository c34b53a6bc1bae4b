"""Which codec a file is decoded with: its BOM, else detection, else ``--encoding``.

Detection, in order:

1. a byte-order mark: UTF-8, UTF-16 (LE/BE) or UTF-32 (LE/BE); it is skipped, never loaded;
2. many NUL bytes at the start and no BOM: UTF-16/32 without a BOM (charset-normalizer says
   which);
3. the whole file is valid UTF-8 (plain ASCII is): UTF-8;
4. otherwise a single-byte code page: cp1252 when charset-normalizer finds it plausible and
   the file has none of the five bytes cp1252 leaves undefined (cp1252 is latin-1 plus
   printable characters where latin-1 has C1 controls, so latin-1 text decodes the same),
   else charset-normalizer's best guess, else latin-1 (which decodes any byte).

``--encoding`` overrides all of it (a BOM matching it is still skipped).
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass

from idxr_pg.errors import IdxrError
from idxr_pg.loading.scan import CP1252_UNDEFINED, FileScan

__all__ = ["POSTGRES_ENCODINGS", "Encoding", "EncodingError", "choose_encoding", "codec_name"]

# Longest first: the UTF-32-LE BOM starts with the UTF-16-LE one.
_BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
_NUL_SHARE = 0.1  # a text sample with more NUL bytes than this is UTF-16 or UTF-32


class EncodingError(IdxrError):
    """``--encoding`` names no codec Python knows."""


@dataclass(frozen=True)
class Encoding:
    """A codec without BOM handling (``utf-16-le``, not ``utf-16``) and the BOM's length."""

    codec: str
    bom: int = 0
    detected: bool = True  # False: from --encoding

    @property
    def postgres(self) -> str | None:
        """PostgreSQL's name for the codec, if COPY can decode it (`POSTGRES_ENCODINGS`)."""
        return POSTGRES_ENCODINGS.get(self.codec)

    @property
    def ascii_compatible(self) -> bool:
        """Whether ``\\n`` is the byte 0x0a on its own (not UTF-16/32)."""
        return not self.codec.startswith(("utf-16", "utf-32"))


def codec_name(name: str) -> str:
    """Python's canonical name of a codec (``latin1`` -> ``iso8859-1``); `EncodingError` if none."""
    try:
        return codecs.lookup(name).name
    except LookupError:
        raise EncodingError(f"--encoding {name}: unknown encoding") from None


def _bom(head: bytes) -> tuple[str, int] | None:
    for mark, codec in _BOMS:
        if head.startswith(mark):
            return codec, len(mark)
    return None


def choose_encoding(scan: FileScan, override: str | None = None) -> Encoding:
    """The codec to decode ``scan``'s file with (see the module doc)."""
    bom = _bom(scan.head)
    if override is not None:
        codec = codec_name(override)
        if codec in ("utf-16", "utf-32", "utf-8-sig"):  # BOM-reading codecs: take the BOM's
            if bom and bom[0].startswith(codec[:6]):
                return Encoding(bom[0], bom[1], detected=False)
            codec = {"utf-16": "utf-16-le", "utf-32": "utf-32-le", "utf-8-sig": "utf-8"}[codec]
        skip = bom[1] if bom and codec_name(bom[0]) == codec else 0
        return Encoding(codec, skip, detected=False)
    if bom:
        return Encoding(bom[0], bom[1])
    if scan.head and scan.head.count(0) > _NUL_SHARE * len(scan.head):
        return Encoding(_wide_codec(scan.head))
    if scan.valid_utf8:
        return Encoding("utf-8")
    return Encoding(_single_byte_codec(scan))


def _wide_codec(head: bytes) -> str:
    from charset_normalizer import from_bytes

    best = from_bytes(head[: 64 * 1024]).best()
    if best is not None and best.encoding.startswith(("utf_16", "utf_32")):
        name = codec_name(best.encoding)
        if name in ("utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"):
            return name
    # ASCII text in UTF-16: the NUL is the high byte, after the character in little-endian.
    even = head[0::2].count(0)
    odd = head[1::2].count(0)
    return "utf-16-be" if even > odd else "utf-16-le"


def _single_byte_codec(scan: FileScan) -> str:
    from charset_normalizer import from_bytes

    sample = scan.non_ascii_sample or scan.head
    matches = list(from_bytes(sample))
    names = [codec_name(m.encoding) for m in matches]
    if "cp1252" in names and not (scan.non_ascii_bytes & CP1252_UNDEFINED):
        return "cp1252"
    for name in names:
        if not name.startswith(("utf-16", "utf-32")):
            return name
    return "iso8859-1"


# PostgreSQL's names of the codecs it can decode itself in COPY (server-side, in C); a file in
# another codec is decoded by Python and its rows sent as text.
POSTGRES_ENCODINGS = {
    "utf-8": "UTF8",
    "cp1250": "WIN1250",
    "cp1251": "WIN1251",
    "cp1252": "WIN1252",
    "cp1253": "WIN1253",
    "cp1254": "WIN1254",
    "cp1255": "WIN1255",
    "cp1256": "WIN1256",
    "cp1257": "WIN1257",
    "iso8859-1": "LATIN1",
    "iso8859-2": "LATIN2",
    "iso8859-3": "LATIN3",
    "iso8859-4": "LATIN4",
    "iso8859-9": "LATIN5",
    "iso8859-15": "LATIN9",
    "koi8-r": "KOI8R",
}
