-- idxr-pg revision 0004: writers of one entity never wait for each other (issue 13).
-- Revisioned: Alembic revision 0004 runs this file once after 012_pause.sql; sql/install.sql
-- runs it after 011 and 012 too, so every statement is idempotent. idxr_pg/db/queue.py
-- (COALESCING_INSERT) owns the rules:
--
-- * A capture trigger share-locks (FOR SHARE) the pending row of each key it queues, or
--   inserts one. Share locks do not conflict with each other, so two transactions writing one
--   entity (say, tags of one article) neither queue behind each other nor deadlock; the
--   claim's FOR UPDATE SKIP LOCKED still stays off a row until its writers commit.
-- * queue_pending therefore stops being unique: writers that create an entity's first pending
--   row at the same moment may leave one row each; the claim takes them together.
--
-- Capture functions installed before this revision coalesce with
-- ON CONFLICT ... DO UPDATE ... WHERE false, which needs the unique index: they are rewritten
-- here to a plain INSERT (one pending row per change, correct but not coalescing) so that no
-- application write fails; `idxr-pg triggers install` installs the new body.
DO $idxr_0004$
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
END
$idxr_0004$;

-- The pending rows of an entity, for the writers' look-up and the claim.
CREATE INDEX IF NOT EXISTS queue_pending ON idxr.queue (entity_kind, entity_id)
    WHERE claimed_by IS NULL AND attempts = 0;
