"""idxr-pg: a PostgreSQL-native incremental vector indexer.

``idxr_pg.search(text, path=None, kind=None, k=10, ...)`` searches the index from Python (see
`idxr_pg.search`). It is loaded on first use, so ``import idxr_pg`` stays cheap (no model, no
torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from idxr_pg.search import search

__all__ = ["search"]


def __getattr__(name: str) -> Any:
    if name == "search":
        import importlib

        # The submodule is callable (it runs search.search), and once imported it is what
        # Python binds to idxr_pg.search anyway; returning it keeps both spellings working.
        return importlib.import_module("idxr_pg.search")
    raise AttributeError(f"module 'idxr_pg' has no attribute {name!r}")
