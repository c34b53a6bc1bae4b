"""Which chunking applies to a path of a kind: the kind's first matching rule (config
``entities[].chunking``) over the embedding defaults (``embedding.chunking``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from idxr_pg.config import ChunkingSettings, ChunkRule
from idxr_pg.records.lquery import compile_lquery

__all__ = ["ChunkPolicy", "policy_for_paths"]


@dataclass(frozen=True, slots=True)
class ChunkPolicy:
    """How a path's long texts are embedded: chunked (``chunk``) into pieces of at most
    ``tokens`` tokens overlapping by ``overlap``, or truncated (``truncate``)."""

    long_texts: str
    tokens: int
    overlap: int
    max_chunks: int

    @property
    def chunks(self) -> bool:
        return self.long_texts == "chunk"


def policy_for_paths(
    defaults: ChunkingSettings, rules: Sequence[ChunkRule], window: int
) -> Callable[[str], ChunkPolicy]:
    """A function from a record path to its `ChunkPolicy`; ``window`` is the model's
    ``max_tokens``, the default chunk size and the bound of any configured one."""
    matchers = [(compile_lquery(rule.paths), rule) for rule in rules]

    def settle(rule: ChunkRule | None) -> ChunkPolicy:
        def pick(name: str):  # the rule's setting, else the default's
            value = getattr(rule, name) if rule is not None else None
            return getattr(defaults, name) if value is None else value

        tokens = min(pick("tokens") or window, window)
        return ChunkPolicy(
            long_texts=pick("long_texts"),
            tokens=tokens,
            overlap=min(pick("overlap"), tokens // 2),
            max_chunks=pick("max_chunks"),
        )

    fallback = settle(None)
    settled = [(match, settle(rule)) for match, rule in matchers]

    @lru_cache(maxsize=4096)
    def policy(path: str) -> ChunkPolicy:
        for match, chosen in settled:
            if match(path):
                return chosen
        return fallback

    return policy
