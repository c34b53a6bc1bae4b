"""The bulk build's ``maintenance_work_mem`` sized to its vectors (``auto``)."""

from __future__ import annotations

from idxr_pg.db.hnsw_memory import AUTO_CEILING_MB, AUTO_FLOOR_MB, graph_megabytes

# pgvector 0.8.0 (m = 16) reported "hnsw graph no longer fits into maintenance_work_mem"
# after 1,811 vectors of 384 dimensions in 4MB and 3,618 in 8MB: 2,316 bytes each.
MEASURED_BYTES_384 = 2316


def test_the_graph_of_the_vectors_fits_with_room_to_spare() -> None:
    for vectors in (40_000, 200_000, 1_000_000):
        given = graph_megabytes(vectors, 384) * 2**20
        assert given >= vectors * MEASURED_BYTES_384 * 1.05
        assert given <= vectors * MEASURED_BYTES_384 * 1.2  # sized, not a blanket maximum


def test_small_and_huge_builds_are_held_within_bounds() -> None:
    assert graph_megabytes(0, 0) == AUTO_FLOOR_MB
    assert graph_megabytes(3_000, 384) == AUTO_FLOOR_MB
    assert graph_megabytes(10_000_000, 384) == AUTO_CEILING_MB
    assert graph_megabytes(100_000, 768) > graph_megabytes(100_000, 384)
