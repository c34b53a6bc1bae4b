"""How much memory a bulk backfill's HNSW build gets (``maintenance_work_mem``, ``auto``).

pgvector builds the graph in memory while it fits in ``maintenance_work_mem`` and inserts the
rest into the on-disk index one by one, several times slower ("hnsw graph no longer fits into
maintenance_work_mem after N tuples"). Measured with pgvector 0.8.0 (m = 16, 384 dimensions):
the graph takes 2,316 bytes per vector, i.e. 4 bytes per dimension plus about 780. ``auto``
gives the build that much for the vectors to index plus a tenth, within `AUTO_FLOOR` and
`AUTO_CEILING`: a small build does not reserve (in a parallel build, allocate as shared
memory) a fixed 512MB, and a million vectors are not built mostly on disk.
"""

from __future__ import annotations

import math

import psycopg

__all__ = ["AUTO", "AUTO_CEILING_MB", "AUTO_FLOOR_MB", "build_memory", "graph_megabytes"]

AUTO = "auto"
AUTO_FLOOR_MB = 64
AUTO_CEILING_MB = 4096
"""The most ``auto`` asks for; give ``--maintenance-work-mem`` to go beyond."""

_BYTES_PER_DIMENSION = 4
_BYTES_PER_VECTOR = 800  # graph element, neighbour lists (m = 16) and tuple pointers, rounded up
_MARGIN = 1.1

_VECTORS_SQL = """
SELECT count(*), coalesce(max(vector_dims(embedding)), 0)
FROM idxr.search_index WHERE embedding IS NOT NULL
"""


def graph_megabytes(vectors: int, dimensions: int) -> int:
    """The ``auto`` memory, in MB, for a build over ``vectors`` vectors of ``dimensions``."""
    need = vectors * (_BYTES_PER_DIMENSION * dimensions + _BYTES_PER_VECTOR) * _MARGIN
    return min(max(math.ceil(need / 2**20), AUTO_FLOOR_MB), AUTO_CEILING_MB)


def build_memory(conn: psycopg.Connection, setting: str) -> str:
    """``setting`` as given, or for ``auto`` the MB the index's vectors need (one count of
    them: a sequential read, a small part of the build it sizes)."""
    if setting.strip().lower() != AUTO:
        return setting
    row = conn.execute(_VECTORS_SQL).fetchone()
    vectors, dimensions = (int(row[0]), int(row[1])) if row else (0, 0)
    return f"{graph_megabytes(vectors, dimensions)}MB"
