"""Splitting an over-long text into overlapping chunks on the model tokenizer's boundaries.

A field's embedding text is ``"{path}: {value}"``. When it is longer than the chunk size
(tokens, special tokens included), the value is split into windows of its own tokens that,
with the path prefix, fit that size; each window repeats the last ``overlap`` tokens of the one
before, so a sentence cut by one boundary is whole in a neighbour. A chunk is a character range
of the value (a verbatim slice, from a fast tokenizer's offsets), so its text is never a lossy
decode of token ids, and an unchanged part of a changed text gives the same chunk text, whose
vector the content-addressed cache already holds.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from idxr_pg.embedding.base import Embedder
from idxr_pg.embedding.truncation import Span, char_bound

__all__ = ["Chunk", "split", "windows"]

_WORDS = re.compile(r"\S+")


@dataclass(frozen=True, slots=True)
class Chunk:
    """Chunk ``number`` of a value: its characters ``[start, end)``."""

    number: int
    start: int
    end: int

    def text(self, value: str) -> str:
        return value[self.start : self.end]


def windows(count: int, size: int, overlap: int, max_windows: int) -> list[tuple[int, int]]:
    """Token index ranges ``[first, last)`` of overlapping windows over ``count`` tokens: each
    ``size`` long (the last may be shorter), the next starting ``size - overlap`` later; at most
    ``max_windows`` (the tokens after them are left out)."""
    if size < 1 or not 0 <= overlap < size:
        raise ValueError(f"chunk size {size} and overlap {overlap}: need 0 <= overlap < size")
    out: list[tuple[int, int]] = []
    first = 0
    while len(out) < max_windows:
        last = min(first + size, count)
        out.append((first, last))
        if last >= count:
            break
        first += size - overlap
    return out


def token_spans(embedder: Embedder, text: str) -> Sequence[Span]:
    """Character spans of ``text``'s tokens (no special tokens): the embedder's own
    (``token_spans``), else whitespace-separated words."""
    spans = getattr(embedder, "token_spans", None)
    if spans is not None:
        return spans(text)
    return [m.span() for m in _WORDS.finditer(text)]


def split(
    embedder: Embedder,
    prefix: str,
    value: str,
    *,
    tokens: int,
    overlap: int,
    max_chunks: int,
) -> list[Chunk]:
    """The chunks of ``value`` when ``prefix + value`` is longer than ``tokens`` tokens, else
    ``[]`` (the text is embedded whole). Each chunk's ``prefix + text`` holds at most ``tokens``
    tokens (up to a re-tokenised edge); at most ``max_chunks`` chunks, covering the start."""
    # A token covers at least one character: a text this short cannot be over the size.
    if len(prefix) + len(value) + 2 <= tokens:
        return []
    head, whole = embedder.count_tokens([prefix, prefix + value])
    if whole <= tokens:
        return []
    size = max(tokens - head, 1)
    overlap = min(overlap, size // 2)
    # Tokenize no more of the value than the chunks can hold.
    bounded = value[: char_bound(max_chunks * size + tokens)]
    spans = token_spans(embedder, bounded)
    if not spans:
        return []
    ranges = windows(len(spans), size, overlap, max_chunks)
    return [
        Chunk(number, 0 if number == 0 else spans[first][0], spans[last - 1][1])
        for number, (first, last) in enumerate(ranges)
    ]
