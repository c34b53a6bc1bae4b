"""Token-budget batching: flush on budget, flush on batch size, non-embeddables cost nothing."""

from __future__ import annotations

import pytest

from idxr_pg.config import EmbeddingSettings
from idxr_pg.embedding import DeterministicEmbedder, EmbeddingService, EmbedRequest
from idxr_pg.embedding.batching import batch_budget, iter_batches, plan_batches
from idxr_pg.records.record import FieldRecord, ValueType, is_meaningful_text, make_record


def record(path: str, value: str, value_type: ValueType) -> FieldRecord:
    embeddable = value_type is ValueType.STRING and is_meaningful_text(value)
    return make_record(path, value, value_type, embeddable)


def test_flushes_before_the_budget_would_be_exceeded() -> None:
    # Padded cost: 3 texts of up to 10 tokens = 30 > 25, so the third starts a new batch.
    batches = list(iter_batches(["a", "b", "c", "d"], [10, 10, 10, 10], 25, 32))
    assert batches == [["a", "b"], ["c", "d"]]


def test_budget_counts_the_padded_batch_not_the_sum() -> None:
    # Sum would be 20 + 1 + 1 = 22 <= 40, but padded to the longest it is 3 * 20 = 60 > 40.
    batches = list(iter_batches(["long", "x", "y"], [20, 1, 1], 40, 32))
    assert batches == [["long", "x"], ["y"]]


def test_a_batch_may_fill_the_budget_exactly() -> None:
    assert list(iter_batches(["a", "b", "c"], [5, 5, 5], 15, 32)) == [["a", "b", "c"]]


def test_flushes_on_max_batch_size() -> None:
    items = list(range(7))
    batches = list(iter_batches(items, [1] * 7, 10_000, 3))
    assert batches == [[0, 1, 2], [3, 4, 5], [6]]


def test_an_item_over_the_budget_gets_a_batch_of_its_own() -> None:
    batches = list(iter_batches(["a", "huge", "b"], [2, 50, 2], 10, 32))
    assert batches == [["a"], ["huge"], ["b"]]


def test_every_item_is_kept_in_order() -> None:
    counts = [(i * 37) % 50 + 1 for i in range(200)]
    batches = list(iter_batches(list(range(200)), counts, 120, 8))
    assert [i for batch in batches for i in batch] == list(range(200))
    for batch in batches:
        assert len(batch) <= 8
        if len(batch) > 1:
            assert len(batch) * max(counts[i] for i in batch) <= 120


def test_non_embeddable_items_travel_beside_and_cost_nothing() -> None:
    records = [
        record("sub.name", "Fibre business line", ValueType.STRING),
        record("sub.id", "42", ValueType.INTEGER),
        record("sub.note", "Roof access needs a key", ValueType.STRING),
        record("sub.active", "True", ValueType.BOOLEAN),
        record("sub.city", "Utrecht centre", ValueType.STRING),
        record("sub.code", "2024-01-01", ValueType.STRING),  # a str field, but not meaningful
    ]
    counts = [len(r.embedding_text.split()) if r.embeddable else None for r in records]
    assert counts.count(None) == 3  # the integer, the boolean and the date-like text
    batches = list(plan_batches(records, counts, budget=1000, max_batch_size=2))
    # Only embeddable records take batch slots: 3 embeddables at 2 per batch -> 2 batches.
    assert [[r.path for r in b.embed] for b in batches] == [
        ["sub.name", "sub.note"],
        ["sub.city"],
    ]
    assert [[r.path for r in b.beside] for b in batches] == [
        ["sub.id", "sub.active"],
        ["sub.code"],
    ]
    embeddable_only = [r for r, c in zip(records, counts, strict=True) if c is not None]
    same = list(iter_batches(embeddable_only, [c for c in counts if c is not None], 1000, 2))
    assert same == [b.embed for b in batches]


def test_non_embeddable_items_do_not_count_toward_the_budget() -> None:
    batches = list(plan_batches("abcde", [4, None, None, 4, None], budget=8, max_batch_size=32))
    assert [(b.embed, b.beside) for b in batches] == [(["a", "d"], ["b", "c", "e"])]


def test_only_non_embeddable_items_still_flush() -> None:
    batches = list(plan_batches(["x", "y"], [None, None], budget=8, max_batch_size=32))
    assert [(b.embed, b.beside) for b in batches] == [([], ["x", "y"])]


def test_default_budget_is_the_padded_window_minus_the_margin() -> None:
    assert batch_budget(256, 32, 10) == 7372
    assert batch_budget(256, 32, 0) == 8192
    assert batch_budget(512, 1, 90) == 512  # never below one full-length text


def test_rejects_mismatched_or_invalid_input() -> None:
    with pytest.raises(ValueError):
        list(iter_batches(["a"], [1, 2], 10, 2))
    with pytest.raises(ValueError):
        list(iter_batches(["a"], [1], 10, 0))
    with pytest.raises(ValueError):
        list(iter_batches(["a"], [-1], 10, 2))


class CountingEmbedder(DeterministicEmbedder):
    """Records the batches the service sends to the model."""

    def __init__(self) -> None:
        super().__init__(dimensions=8, max_tokens=10)
        self.batches: list[list[str]] = []

    def embed(self, texts):  # type: ignore[no-untyped-def]
        self.batches.append(list(texts))
        return super().embed(texts)


def test_service_batches_longest_first_within_budget_and_size() -> None:
    embedder = CountingEmbedder()
    settings = EmbeddingSettings(max_batch_size=3, safe_margin_percent=50)
    service = EmbeddingService(embedder, settings)  # budget: 3 * 10 * 0.5 = 15 padded tokens
    assert service.token_budget == 15
    texts = [f"text{i} " + "w " * (n - 1) for i, n in enumerate((1, 7, 2, 3, 1, 4, 2))]
    service.embed([EmbedRequest(f"k:{i}", t) for i, t in enumerate(texts)])
    sizes = [[len(t.split()) for t in batch] for batch in embedder.batches]
    assert sizes == [[7, 4], [3, 2, 2], [1, 1]]  # 7*3 > 15 flushes; size 3 flushes
    assert service.stats.model_calls == 3
