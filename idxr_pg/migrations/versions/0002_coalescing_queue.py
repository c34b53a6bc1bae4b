"""The coalescing queue (issue 13): one pending row per entity, bulk statements as one row.

Runs idxr_pg/schema/011_coalescing_queue.sql: adds ``idxr.queue.claimed_by``, merges the
duplicate pending rows queued under revision 0001 (none is lost; retry rows are kept as they
are), the partial indexes ``queue_pending`` (unique) and ``queue_held`` in place of
``queue_entity``, the table ``idxr.queue_batches`` and the queue tables' autovacuum settings.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

from idxr_pg.schema import revision_sql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(revision_sql(revision))


def downgrade() -> None:
    # Back to one row per change: expand the batches, then restore 0001's indexes. The views
    # that read idxr.queue_batches are re-applied at head only, so drop them with the table.
    op.execute(
        """
        INSERT INTO idxr.queue (entity_kind, entity_id, source_table, operation, enqueued_at,
                                not_before)
        SELECT b.entity_kind, k.id, b.source_table, b.operation, b.enqueued_at, b.enqueued_at
          FROM idxr.queue_batches AS b CROSS JOIN LATERAL unnest(b.entity_ids) AS k(id);
        DROP VIEW IF EXISTS idxr.stale;
        DROP VIEW IF EXISTS idxr.status;
        DROP TABLE idxr.queue_batches;
        DROP INDEX IF EXISTS idxr.queue_pending;
        DROP INDEX IF EXISTS idxr.queue_held;
        CREATE INDEX IF NOT EXISTS queue_entity ON idxr.queue (entity_kind, entity_id);
        ALTER TABLE idxr.queue DROP COLUMN claimed_by;
        ALTER TABLE idxr.queue RESET (autovacuum_vacuum_scale_factor,
            autovacuum_vacuum_threshold, autovacuum_vacuum_insert_scale_factor,
            autovacuum_vacuum_insert_threshold, autovacuum_analyze_scale_factor,
            autovacuum_analyze_threshold, fillfactor);
        """
    )
