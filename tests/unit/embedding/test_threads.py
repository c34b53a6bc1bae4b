"""One torch thread for a single short query; the process setting restored after the call."""

from __future__ import annotations

import torch

from idxr_pg.embedding.threads import SHORT_QUERY_TOKENS, threads_for, torch_threads


def test_one_thread_for_a_single_short_text_only():
    assert threads_for([5]) == 1
    assert threads_for([SHORT_QUERY_TOKENS]) == 1
    assert threads_for([SHORT_QUERY_TOKENS + 1]) is None  # a long text: torch's own
    assert threads_for([5, 5]) is None  # a batch: torch's own
    assert threads_for([]) is None


def test_torch_threads_applies_for_the_block_and_restores():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch_threads(1):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        try:
            with torch_threads(1):
                raise RuntimeError("boom")
        except RuntimeError:
            pass
        assert torch.get_num_threads() == 2
        with torch_threads(None):
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
