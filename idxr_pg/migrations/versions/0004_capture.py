"""Writers of one entity never wait for each other (issue 13).

Runs idxr_pg/schema/013_capture.sql: ``queue_pending`` becomes a plain (not unique) partial
index, since capture triggers now share-lock an entity's pending row instead of coalescing into
it through ``ON CONFLICT``; capture functions installed earlier are rewritten to plain INSERTs
(one pending row per change) until ``idxr-pg triggers install`` replaces them. Queued rows are
kept as they are.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

from idxr_pg.schema import revision_sql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(revision_sql(revision))


def downgrade() -> None:
    # Back to one pending row per entity (revision 0002's unique index): merge the duplicates
    # the same way 011_coalescing_queue.sql merged revision 0001's rows, keeping the oldest
    # enqueued_at. Run `idxr-pg triggers install` of the older release afterwards.
    op.execute(
        """
        WITH ranked AS (
            SELECT id, max(id) OVER w AS keep, min(enqueued_at) OVER w AS oldest,
                   min(not_before) OVER w AS earliest
              FROM idxr.queue
             WHERE claimed_by IS NULL AND attempts = 0
            WINDOW w AS (PARTITION BY entity_kind, entity_id)
        ),
        merged AS (
            DELETE FROM idxr.queue AS q USING ranked AS r
             WHERE q.id = r.id AND r.id <> r.keep
            RETURNING q.id
        )
        UPDATE idxr.queue AS q
           SET enqueued_at = r.oldest, not_before = r.earliest
          FROM ranked AS r
         WHERE q.id = r.id AND r.id = r.keep
           AND (q.enqueued_at, q.not_before) IS DISTINCT FROM (r.oldest, r.earliest);
        DROP INDEX IF EXISTS idxr.queue_pending;
        CREATE UNIQUE INDEX queue_pending ON idxr.queue (entity_kind, entity_id)
            WHERE claimed_by IS NULL AND attempts = 0;
        """
    )
