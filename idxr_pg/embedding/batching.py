"""Token-budget batching for a bi-encoder.

What the "context window" means here: a bi-encoder (sentence-transformers) encodes every
text in its own sequence, so the model's window (``max_tokens``, e.g. 256 for
all-MiniLM-L6-v2) limits each text, not a batch; over-long texts are truncated before they
reach the batcher. A batch is one forward pass over a padded tensor of
``len(batch) x longest text in the batch`` tokens, and that padded size is what costs time
and memory. The batch token budget therefore bounds the padded size:

    budget = max_batch_size * max_tokens * (1 - safe_margin_percent / 100)

i.e. a batch never exceeds the share of the largest tensor the settings allow that the
safety margin leaves (with the defaults: 32 x 256 x 0.9 = 7372 padded tokens). Short texts
fill batches up to ``max_batch_size``; long ones flush earlier. Summing a batch's tokens
against a single text's window (what an LLM prompt would need) would cap batches of short
texts at a handful and gain nothing.

Non-embeddable records cost neither budget nor batch slots: ``iter_batches`` sees only
embeddable texts, and ``plan_batches`` (for a stream of mixed records) lets them travel
beside the batch that is open when they arrive. Feed texts longest first (as ``SentenceTransformer.encode``
does) to keep padding low.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["Batch", "batch_budget", "iter_batches", "padded_cost", "plan_batches"]

T = TypeVar("T")


def batch_budget(max_tokens: int, max_batch_size: int, safe_margin_percent: float) -> int:
    """Padded tokens one batch may hold: the full padded window minus the safety margin."""
    budget = int(max_batch_size * max_tokens * (1 - safe_margin_percent / 100))
    return max(budget, max_tokens)


def padded_cost(size: int, longest: int) -> int:
    """Tokens a padded batch of ``size`` texts, the longest ``longest`` tokens, occupies."""
    return size * longest


@dataclass(slots=True)
class Batch(Generic[T]):
    """Embeddable items for one model call, and the non-embeddable items travelling beside."""

    embed: list[T] = field(default_factory=list)
    beside: list[T] = field(default_factory=list)


def plan_batches(
    items: Iterable[T], token_counts: Iterable[int | None], budget: int, max_batch_size: int
) -> Iterator[Batch[T]]:
    """Split ``items`` in order into batches; a batch flushes before the next embeddable item
    would make it exceed ``budget`` padded tokens or ``max_batch_size`` items.

    A token count of None marks a non-embeddable item: it joins the open batch's ``beside``
    list and costs neither budget nor a batch slot, so it is written with that batch. An
    item that alone exceeds the budget still gets a batch of its own (it is never dropped);
    callers keep items within the per-text limit, which keeps them within budget. Works on
    streams: both arguments are consumed lazily, in step.
    """
    if max_batch_size < 1 or budget < 1:
        raise ValueError("budget and max_batch_size must be positive")
    batch: Batch[T] = Batch()
    longest = 0
    for item, count in zip(items, token_counts, strict=True):
        if count is None:
            batch.beside.append(item)
            continue
        if count < 0:
            raise ValueError(f"negative token count {count}")
        grown = max(longest, count)
        size = len(batch.embed)
        if size and (size >= max_batch_size or padded_cost(size + 1, grown) > budget):
            yield batch
            batch, grown = Batch(), count
        batch.embed.append(item)
        longest = grown
    if batch.embed or batch.beside:
        yield batch


def iter_batches(
    items: Sequence[T], token_counts: Sequence[int], budget: int, max_batch_size: int
) -> Iterator[list[T]]:
    """``plan_batches`` for embeddable items only: yields the lists of items per model call."""
    if len(items) != len(token_counts):
        raise ValueError(f"{len(items)} items but {len(token_counts)} token counts")
    for batch in plan_batches(items, token_counts, budget, max_batch_size):
        yield batch.embed
