"""Splitting long texts into overlapping chunks (`idxr_pg.embedding.chunking`) and choosing
the chunking of a path (`idxr_pg.indexing.chunk_policy`), with the word-token test embedder."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from idxr_pg.config import ChunkingSettings, ChunkRule, EntityConfig
from idxr_pg.embedding import DeterministicEmbedder
from idxr_pg.embedding.chunking import Chunk, split, windows
from idxr_pg.indexing.chunk_policy import policy_for_paths


def test_windows_overlap_step_and_cap():
    assert windows(10, 4, 1, 100) == [(0, 4), (3, 7), (6, 10)]
    assert windows(3, 4, 1, 100) == [(0, 3)]
    assert windows(10, 4, 0, 2) == [(0, 4), (4, 8)]  # capped: the rest is left out
    with pytest.raises(ValueError, match="overlap"):
        windows(10, 4, 4, 100)


def test_split_chunks_on_token_boundaries_with_the_prefix_counted():
    embedder = DeterministicEmbedder()  # one token per word, no special tokens
    value = " ".join(f"w{i}" for i in range(20))
    prefix = "doc.body: "  # one word
    chunks = split(embedder, prefix, value, tokens=6, overlap=1, max_chunks=100)
    texts = [c.text(value) for c in chunks]
    assert texts[0] == "w0 w1 w2 w3 w4" and texts[1] == "w4 w5 w6 w7 w8"
    assert all(len((prefix + t).split()) <= 6 for t in texts)
    assert texts[-1].endswith("w19") and chunks[0] == Chunk(0, 0, len("w0 w1 w2 w3 w4"))
    assert [c.number for c in chunks] == list(range(len(chunks)))


def test_a_text_within_the_size_is_not_split():
    embedder = DeterministicEmbedder()
    assert split(embedder, "p: ", "a b c", tokens=16, overlap=2, max_chunks=8) == []
    assert split(embedder, "p: ", "a " * 15, tokens=16, overlap=2, max_chunks=8) == []


def test_policy_first_matching_rule_over_the_defaults_bounded_by_the_window():
    defaults = ChunkingSettings(tokens=200, overlap=20)
    rules = [
        ChunkRule(paths="doc.code", long_texts="truncate"),
        ChunkRule(paths="*.body", tokens=1000),
        ChunkRule(paths="doc.*", overlap=5),
    ]
    policy = policy_for_paths(defaults, rules, window=256)
    assert not policy("doc.code").chunks
    assert (policy("doc.body").tokens, policy("doc.body").overlap) == (256, 20)  # the window
    assert (policy("doc.title").tokens, policy("doc.title").overlap) == (200, 5)
    assert (policy("other.x").long_texts, policy("other.x").tokens) == ("chunk", 200)
    assert policy_for_paths(ChunkingSettings(), [], window=256)("a.b").tokens == 128
    assert policy_for_paths(ChunkingSettings(tokens=None), [], window=256)("a.b").tokens == 256


def test_bad_chunking_config_names_the_option():
    with pytest.raises(ValidationError, match="overlap"):
        ChunkingSettings(tokens=64, overlap=32)
    with pytest.raises(ValidationError, match="invalid lquery"):
        EntityConfig(name="doc", model="m:M", table="t", key="id", chunking=[{"paths": "a..b"}])
