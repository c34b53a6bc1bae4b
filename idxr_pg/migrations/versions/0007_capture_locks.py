"""Writers of one entity neither wait for each other nor deadlock (issue 13).

Runs idxr_pg/schema/016_capture_locks.sql: ``queue_pending`` becomes a plain (not unique)
partial index, since capture triggers now share-lock an entity's pending queue row instead of
coalescing into it through ``ON CONFLICT``; ``queue_ready`` is rebuilt with its kind column
collated "C" (only the claim reads it); capture functions installed earlier are rewritten to
plain INSERTs until ``idxr-pg triggers install`` replaces them. Queued rows stay as they are.

Revision ID: 0007
Revises: 0006
"""

from alembic import op

from idxr_pg.schema import revision_sql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(revision_sql(revision))


def downgrade() -> None:
    # Back to one pending row per entity (revision 0002's unique index): merge the duplicates
    # the way 011_coalescing_queue.sql merged revision 0001's rows (oldest enqueued_at, earliest
    # not_before), and make the capture functions of this release coalesce through ON CONFLICT
    # again, so that no application write fails before the older release's `triggers install`.
    op.execute(
        r"""
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
        DROP INDEX IF EXISTS idxr.queue_ready;
        CREATE INDEX queue_ready ON idxr.queue (entity_kind, not_before, id);
        DO $downgrade$
        DECLARE
            fn regprocedure;
        BEGIN
            FOR fn IN
                SELECT p.oid::regprocedure FROM pg_catalog.pg_proc AS p
                 WHERE p.pronamespace = 'idxr'::regnamespace
                   AND p.proname ~ '^(capture|replica)_'
                   AND p.prosrc LIKE '%WHERE NOT EXISTS (SELECT FROM held)%'
            LOOP
                EXECUTE pg_catalog.replace(
                    pg_catalog.pg_get_functiondef(fn),
                    'WHERE NOT EXISTS (SELECT FROM held)',
                    'WHERE NOT EXISTS (SELECT FROM held) ON CONFLICT (entity_kind, entity_id)'
                    ' WHERE claimed_by IS NULL AND attempts = 0'
                    ' DO UPDATE SET claimed_by = NULL WHERE false');
            END LOOP;
        END
        $downgrade$;
        """
    )
