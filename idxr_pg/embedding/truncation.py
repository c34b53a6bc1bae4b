"""Cutting an over-long text to a token limit, on the model's own token boundaries.

Tokens are given as character spans of the original text (a fast tokenizer's offsets), so
the kept text is a verbatim slice of the input, never a lossy decode of token ids.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

__all__ = ["CHARS_PER_TOKEN", "STRATEGIES", "Span", "char_bound", "cut", "fit", "precut"]

Span = tuple[int, int]
STRATEGIES = ("end", "middle_out")
CHARS_PER_TOKEN = 64
"""A generous bound on characters per token: text beyond ``max_tokens`` times this is never
tokenized (a word-piece token of prose is about 4 characters; a word the tokenizer cannot
split is one token of at most about 100)."""


def _check(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown truncation strategy {strategy!r} (use one of {STRATEGIES})")


def char_bound(max_tokens: int) -> int:
    """The most characters of a text worth tokenizing for a window of ``max_tokens``."""
    return max_tokens * CHARS_PER_TOKEN


def precut(text: str, max_chars: int, strategy: str) -> str:
    """``text`` cut by characters to about ``max_chars`` before it is tokenized, so memory
    and time are bounded by the model window, not by the text.

    Same semantics as `cut`: ``end`` keeps the first ``max_chars`` characters; ``middle_out``
    keeps the first ceil(max_chars/2) and the last floor(max_chars/2), joined by one space.
    The window lies well inside the bound, so the token cut that follows gives the same text
    as it would on the whole text (unless the text is a few words of over 64 characters).
    ``text`` itself when it is short enough.
    """
    _check(strategy)
    if len(text) <= max_chars:
        return text
    head = max_chars if strategy == "end" else (max_chars + 1) // 2
    tail = max_chars - head
    if tail == 0:
        return text[:head]
    return f"{text[:head]} {text[len(text) - tail :]}"


def cut(text: str, spans: Sequence[Span], keep: int, strategy: str) -> str:
    """Keep ``keep`` of the tokens whose (start, end) character ``spans`` are given, in order.

    ``end`` keeps the first ``keep`` tokens (the head, which holds the path). ``middle_out``
    keeps the first ceil(keep/2) and the last floor(keep/2) tokens and drops the middle,
    joining both parts with one space and no marker.
    """
    _check(strategy)
    if keep >= len(spans):
        return text
    if keep <= 0:
        return ""
    head = keep if strategy == "end" else (keep + 1) // 2
    tail = keep - head
    head_text = text[: spans[head - 1][1]]
    if tail == 0:
        return head_text
    return f"{head_text} {text[spans[len(spans) - tail][0] :]}"


def fit(
    text: str,
    max_tokens: int,
    strategy: str,
    *,
    spans: Callable[[str], Sequence[Span]],
    count: Callable[[str], int],
    overhead: int = 0,
) -> str:
    """``text`` cut by ``strategy`` until ``count(text) <= max_tokens``; unchanged if it fits.

    ``spans`` gives the content tokens of a text (no special tokens) and ``overhead`` the
    special tokens ``count`` adds. A cut can re-tokenise differently at its edges (a word
    split mid-way), so each candidate is counted again and shrunk until it fits.
    """
    if max_tokens <= overhead:
        raise ValueError(
            f"max_tokens ({max_tokens}) leaves no room beside {overhead} special tokens"
        )
    if count(text) <= max_tokens:
        return text
    token_spans = spans(text)
    keep = min(max_tokens - overhead, len(token_spans))
    while keep > 0:
        candidate = cut(text, token_spans, keep, strategy)
        excess = count(candidate) - max_tokens
        if excess <= 0:
            return candidate
        keep -= excess
    return ""
