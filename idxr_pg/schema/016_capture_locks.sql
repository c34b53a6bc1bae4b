-- idxr-pg revision 0007: writers of one entity neither wait for each other nor deadlock
-- (issue 13). Revisioned: Alembic revision 0007 runs this file once; sql/install.sql runs it
-- after the earlier files too, so every statement is idempotent. idxr_pg/db/queue.py
-- (PENDING_LOOKUP, COALESCE_ONE) owns the rules:
--
-- * A capture trigger share-locks (FOR SHARE) the pending row of a key it queues, or inserts
--   one. Share locks do not conflict with each other, so two transactions writing one entity
--   (say, tags of one article) neither queue behind each other nor deadlock; the claim's
--   FOR UPDATE SKIP LOCKED still stays off a row until its writers commit.
-- * queue_pending therefore stops being unique (a unique index makes a second inserter of a
--   key wait for the first one's commit): writers that create an entity's first pending row
--   at the same moment may leave one row each; the claim takes an entity's rows together.
-- * The look-up is one key at a time, equality on both columns of queue_pending, and the
--   capture functions run with enable_seqscan = off: on a queue analysed while empty a seq
--   scan costs nothing to the planner, and a cached generic plan would keep it as a backlog
--   grows. queue_ready's entity_kind is collated "C": an index scan of queue_ready on the kind
--   alone costs the planner exactly what queue_pending on both columns does on an empty
--   queue (the tie went to the index created last), and a "C" column does not match the
--   look-up's default-collation equality, so queue_pending is the only index it can use. The
--   claim compares the kind COLLATE "C" (db.queue._READY_SQL).
--
-- Capture functions installed before this revision coalesce with
-- ON CONFLICT ... DO UPDATE ... WHERE false, which needs the unique index: they are rewritten
-- here to a plain INSERT (one pending row per change: correct, not coalescing) so that no
-- application write fails; `idxr-pg triggers install` installs the new body.
DO $idxr_0007$
DECLARE
    fn regprocedure;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_index
                WHERE indexrelid = pg_catalog.to_regclass('idxr.queue_pending')
                  AND indisunique) THEN
        FOR fn IN
            SELECT p.oid::regprocedure FROM pg_catalog.pg_proc AS p
             WHERE p.pronamespace = 'idxr'::regnamespace
               AND p.proname ~ '^(capture|replica)_'
               AND p.prosrc LIKE '%ON CONFLICT (entity_kind, entity_id) WHERE claimed_by IS NULL%'
        LOOP
            EXECUTE pg_catalog.regexp_replace(
                pg_catalog.pg_get_functiondef(fn),
                'ON CONFLICT \(entity_kind, entity_id\) WHERE claimed_by IS NULL AND attempts = 0\s+DO UPDATE SET claimed_by = NULL WHERE false',
                '', 'g');
        END LOOP;
        DROP INDEX idxr.queue_pending;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute AS a
                    WHERE a.attrelid = pg_catalog.to_regclass('idxr.queue_ready')
                      AND a.attname = 'entity_kind' AND a.attcollation = 'pg_catalog."C"'::regcollation) THEN
        DROP INDEX IF EXISTS idxr.queue_ready;
    END IF;
END
$idxr_0007$;

-- The pending rows of an entity: the writers' look-up, the claim, idxr.is_stale.
CREATE INDEX IF NOT EXISTS queue_pending ON idxr.queue (entity_kind, entity_id)
    WHERE claimed_by IS NULL AND attempts = 0;
-- Ready rows oldest first, for the claim only (see above for the collation).
CREATE INDEX IF NOT EXISTS queue_ready ON idxr.queue (entity_kind COLLATE "C", not_before, id);
