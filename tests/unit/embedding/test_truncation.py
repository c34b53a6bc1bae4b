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


# --------------------------------------------------------------------------- huge texts (issue 12, item 6)


def test_precut_bounds_by_characters_keeping_the_strategy() -> None:
    from idxr_pg.embedding.truncation import precut

    text = "a.b: " + "x" * 100 + "TAIL"
    assert precut(text, 1000, "end") is text  # short enough: untouched
    assert precut(text, 10, "end") == text[:10]
    middle = precut(text, 10, "middle_out")
    assert middle == "a.b: " + " " + "xTAIL"  # head ceil(10/2), one space, tail floor(10/2)
    with pytest.raises(ValueError, match="unknown truncation strategy"):
        precut(text, 10, "start")


def test_char_bound_is_generous_and_derived_from_the_window() -> None:
    from idxr_pg.embedding.truncation import CHARS_PER_TOKEN, char_bound

    assert char_bound(256) == 256 * CHARS_PER_TOKEN
    assert CHARS_PER_TOKEN >= 16


class _SpyEmbedder(DeterministicEmbedder):
    """Records the longest text any tokenizing call is handed."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.longest = 0

    def count_tokens(self, texts):
        self.longest = max([self.longest, *map(len, texts)])
        return super().count_tokens(texts)

    def truncate(self, text, max_tokens, strategy):
        self.longest = max(self.longest, len(text))
        return super().truncate(text, max_tokens, strategy)


@pytest.mark.parametrize("strategy", ["end", "middle_out"])
def test_a_huge_text_is_cut_by_characters_before_it_is_tokenized(strategy: str) -> None:
    from idxr_pg.embedding.truncation import char_bound, precut

    embedder = _SpyEmbedder(dimensions=8, max_tokens=16)
    service = EmbeddingService(embedder, EmbeddingSettings(truncation=strategy))
    huge = "doc.body: " + " ".join(f"w{i}" for i in range(1_000_000))  # about 6.9 MB
    (result,) = service.embed([EmbedRequest("e:1", huge)])

    bound = char_bound(16)
    assert embedder.longest <= bound + 1
    assert result.truncation == strategy
    expected = embedder.truncate(precut(huge, bound, strategy), 16, strategy)
    assert (result.vector == embedder.embed([expected])[0]).all()
    # The same as truncating the whole text: the window is far inside the character bound.
    whole = DeterministicEmbedder(dimensions=8, max_tokens=16).truncate(huge, 16, strategy)
    assert expected == whole
    assert expected.startswith("doc.body: w0 w1")
    assert expected.endswith("w999999") == (strategy == "middle_out")


def test_a_text_cut_by_characters_only_is_reported_as_truncated() -> None:
    from idxr_pg.embedding.truncation import char_bound

    embedder = DeterministicEmbedder(dimensions=8, max_tokens=4)
    service = EmbeddingService(embedder, EmbeddingSettings(truncation="end"))
    one_word = "a.b: " + "x" * (char_bound(4) * 2)  # two words: fits in tokens, not in chars
    (result,) = service.embed([EmbedRequest("e:1", one_word)])
    assert result.truncation == "end"
    assert service.stats.truncated == 1
