"""How many torch threads one embedding call gets: one for a single short query.

torch runs every operator on its intra-op thread pool (by default one thread per core). For a
batch that is worth it; for one short query the hand-off between threads costs more than the
work it splits (issue 16: 116 ms with torch's 2 threads on a busy 2-core machine, 39 ms with
1; bench/query_latency.py measures it through `idxr_pg.search`). `threads_for` picks the count
per call and `torch_threads` applies it for the call only, restoring the process setting.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

__all__ = ["SHORT_QUERY_TOKENS", "threads_for", "torch_threads"]

SHORT_QUERY_TOKENS = 64
"""A call of one text up to this many tokens runs on one thread."""


def threads_for(token_counts: Sequence[int]) -> int | None:
    """1 for a single text of at most SHORT_QUERY_TOKENS tokens, else None (torch's own)."""
    if len(token_counts) == 1 and token_counts[0] <= SHORT_QUERY_TOKENS:
        return 1
    return None


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run the block with ``count`` torch intra-op threads (None: leave the setting alone)."""
    if count is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    if before == count:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
