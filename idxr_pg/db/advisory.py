"""The two-int advisory lock namespaces of idxr-pg: the one list, so two uses never collide.

A two-int advisory lock ``(namespace, hashtext(kind))`` is per entity kind. PostgreSQL keeps
one-bigint keys (``pg_advisory_lock(bigint)``: `idxr_pg.db.capture.INSTALL_LOCK_KEY`, the
migrate lock of ``migrations/env.py``) in a key space of their own, so those cannot collide
with these.
"""

from __future__ import annotations

__all__ = [
    "BACKFILL_NAMESPACE",
    "HNSW_BUILD_KEY",
    "LOAD_NAMESPACE",
    "VERSION_NAMESPACE",
    "WAKE_NAMESPACE",
]

BACKFILL_NAMESPACE = 0x69647872  # "idxr": held for a session by a running backfill of a kind
WAKE_NAMESPACE = 0x69647877  # "idxw": held to commit by the one transaction ringing for a kind
LOAD_NAMESPACE = 0x6964786C  # "idxl": held for a session by a running `idxr-pg load` into a table
VERSION_NAMESPACE = 0x69647876  # "idxv": a worker batch of a kind (shared) vs its version switch
HNSW_NAMESPACE = 0x69647868  # "idxh": held to commit by the transaction building the HNSW index
HNSW_BUILD_KEY = (HNSW_NAMESPACE, 0)  # one index per database, so one key
