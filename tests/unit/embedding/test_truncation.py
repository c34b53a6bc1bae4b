"""Truncation of over-long texts on token boundaries, by strategy, and its use by the service."""

from __future__ import annotations

import re

import pytest

from idxr_pg.config import EmbeddingSettings
from idxr_pg.embedding import DeterministicEmbedder, EmbeddingService, EmbedRequest
from idxr_pg.embedding.truncation import cut, fit


def word_spans(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in re.finditer(r"\S+", text)]


def word_count(text: str) -> int:
    return len(text.split())


TEXT = "product.notes: " + " ".join(f"w{i}" for i in range(1, 21))  # 21 words


def test_end_keeps_the_head() -> None:
    assert cut(TEXT, word_spans(TEXT), 4, "end") == "product.notes: w1 w2 w3"


def test_middle_out_keeps_head_and_tail_without_a_marker() -> None:
    assert cut(TEXT, word_spans(TEXT), 5, "middle_out") == "product.notes: w1 w2 w19 w20"


def test_cut_leaves_a_short_enough_text_alone() -> None:
    assert cut(TEXT, word_spans(TEXT), 21, "end") == TEXT
    assert cut(TEXT, word_spans(TEXT), 99, "middle_out") == TEXT


def test_cut_keeps_the_original_characters() -> None:
    text = "a.path:   Ünïcode  spacing\tand\nlines stay verbatim"
    assert cut(text, word_spans(text), 3, "end") == "a.path:   Ünïcode  spacing"
    assert cut(text, word_spans(text), 4, "middle_out") == "a.path:   Ünïcode stay verbatim"


def test_unknown_strategy_is_rejected() -> None:
    with pytest.raises(ValueError, match="start"):
        cut(TEXT, word_spans(TEXT), 3, "start")


@pytest.mark.parametrize("strategy", ["end", "middle_out"])
def test_fit_respects_the_limit_with_special_token_overhead(strategy: str) -> None:
    def count(text: str) -> int:
        return word_count(text) + 2  # like [CLS] and [SEP]

    fitted = fit(TEXT, 10, strategy, spans=word_spans, count=count, overhead=2)
    assert count(fitted) == 10
    assert fitted.startswith("product.notes: w1")
    assert fitted.endswith("w20") == (strategy == "middle_out")


def test_fit_shrinks_again_when_the_cut_tokenises_longer() -> None:
    # A tokenizer for which the joined text costs more than its parts (an edge effect):
    # the first middle_out seam, "w2 w18", counts one token more than its words.
    def count(text: str) -> int:
        return word_count(text) + ("w2 w18" in text)

    assert count("product.notes: w1 w2 w18 w19 w20") == 7  # the first cut: over by one
    fitted = fit(TEXT, 6, "middle_out", spans=word_spans, count=count)
    assert fitted == "product.notes: w1 w2 w19 w20"
    assert count(fitted) <= 6


def test_fit_returns_short_text_unchanged() -> None:
    assert fit("a: b", 10, "end", spans=word_spans, count=word_count) == "a: b"


def test_fit_needs_room_beyond_the_special_tokens() -> None:
    with pytest.raises(ValueError, match="no room"):
        fit(TEXT, 2, "end", spans=word_spans, count=word_count, overhead=2)


@pytest.mark.parametrize("strategy", ["end", "middle_out"])
def test_service_truncates_over_long_texts_and_reports_the_strategy(strategy: str) -> None:
    embedder = DeterministicEmbedder(dimensions=8, max_tokens=5)
    service = EmbeddingService(embedder, EmbeddingSettings(truncation=strategy))
    long_text = "a.b: one two three four five six seven"
    results = service.embed([EmbedRequest("e:1", long_text), EmbedRequest("e:2", "a.b: short")])
    assert [r.truncation for r in results] == [strategy, None]
    expected = embedder.truncate(long_text, 5, strategy)
    assert word_count(expected) == 5
    assert (results[0].vector == embedder.embed([expected])[0]).all()
    assert service.stats.truncated == 1


def test_texts_equal_after_truncation_are_embedded_once() -> None:
    embedder = DeterministicEmbedder(dimensions=8, max_tokens=3)
    service = EmbeddingService(embedder, EmbeddingSettings(truncation="end"))
    results = service.embed(
        [EmbedRequest("e:1", "a.b: same head x"), EmbedRequest("e:2", "a.b: same head y")]
    )
    assert (results[0].vector == results[1].vector).all()
    assert service.stats.texts_embedded == 1
    assert [r.truncation for r in results] == ["end", "end"]
