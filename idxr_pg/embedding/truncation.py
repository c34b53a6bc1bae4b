"""Cutting an over-long text to a token limit, on the model's own token boundaries.

Tokens are given as character spans of the original text (a fast tokenizer's offsets), so
the kept text is a verbatim slice of the input, never a lossy decode of token ids.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

__all__ = ["STRATEGIES", "Span", "cut", "fit"]

Span = tuple[int, int]
STRATEGIES = ("end", "middle_out")


def cut(text: str, spans: Sequence[Span], keep: int, strategy: str) -> str:
    """Keep ``keep`` of the tokens whose (start, end) character ``spans`` are given, in order.

    ``end`` keeps the first ``keep`` tokens (the head, which holds the path). ``middle_out``
    keeps the first ceil(keep/2) and the last floor(keep/2) tokens and drops the middle,
    joining both parts with one space and no marker.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown truncation strategy {strategy!r} (use one of {STRATEGIES})")
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
