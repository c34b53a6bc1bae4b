-- idxr-pg revision 0002: the coalescing queue (issue 13). Revisioned: Alembic revision 0002 runs
-- this file once after 010_tables.sql; sql/install.sql runs it after 010 too, so every
-- statement is idempotent. The rules the runtime relies on (idxr_pg/db/queue.py owns the SQL):
--
-- * idxr.queue keeps at most ONE pending row per (entity_kind, entity_id): pending = not
--   claimed by a worker (claimed_by IS NULL) and not in retry (attempts = 0); the partial
--   unique index queue_pending enforces it and is the ON CONFLICT arbiter of the capture
--   triggers. A hot row updated 10,000 times while no worker runs leaves one row.
-- * A claim sets claimed_by, which takes the row out of queue_pending: a change committed after
--   the claim inserts a new pending row, which the worker's finalize (it deletes the row ids it
--   claimed) leaves alone, so the entity gets another pass (invariant 3). Rows in retry
--   (attempts > 0) are outside queue_pending too: a fix made meanwhile gets a ready row at once.
-- * A statement that changes more than a few keys writes ONE idxr.queue_batches row holding
--   them all; the worker expands it into pending rows at the start of a claim.

ALTER TABLE idxr.queue ADD COLUMN IF NOT EXISTS claimed_by text;  -- worker id; NULL: pending

-- Rows queued under revision 0001 (one per captured change): merge the duplicates of each
-- pending (kind, entity) into one row, keeping the oldest enqueued_at (the lag idxr.status
-- shows) and the earliest not_before; rows in retry keep their attempts and stay as they are.
-- The newest row (highest id) is the one kept. Run it with the workers stopped.
WITH ranked AS (
    SELECT id,
           max(id) OVER w AS keep,
           min(enqueued_at) OVER w AS oldest,
           min(not_before) OVER w AS earliest
      FROM idxr.queue
     WHERE claimed_by IS NULL AND attempts = 0
    WINDOW w AS (PARTITION BY entity_kind, entity_id)
),
merged AS (  -- a data-modifying WITH always runs to completion
    DELETE FROM idxr.queue AS q
     USING ranked AS r
     WHERE q.id = r.id AND r.id <> r.keep
    RETURNING q.id
)
UPDATE idxr.queue AS q
   SET enqueued_at = r.oldest, not_before = r.earliest
  FROM ranked AS r
 WHERE q.id = r.id AND r.id = r.keep
   AND (q.enqueued_at, q.not_before) IS DISTINCT FROM (r.oldest, r.earliest);

-- One pending row per entity; the capture triggers' ON CONFLICT arbiter.
CREATE UNIQUE INDEX IF NOT EXISTS queue_pending ON idxr.queue (entity_kind, entity_id)
    WHERE claimed_by IS NULL AND attempts = 0;
-- The other rows of an entity (claimed, or in retry), for the claim and the failure recorder.
-- Capture triggers only ever insert pending rows, so writers never maintain this index.
CREATE INDEX IF NOT EXISTS queue_held ON idxr.queue (entity_kind, entity_id)
    WHERE claimed_by IS NOT NULL OR attempts > 0;
-- queue_pending and queue_held together answer every per-entity look-up queue_entity served;
-- one index fewer for every captured change. queue_ready (entity_kind, not_before, id) stays:
-- the claim reads ready rows oldest first through it. The primary key stays: the worker
-- deletes exactly the row ids it claimed.
DROP INDEX IF EXISTS idxr.queue_entity;

-- One row per bulk statement (more than capture.triggers.BATCH_THRESHOLD keys; TRUNCATE too):
-- the statement's distinct entity keys as an array. The worker deletes it and inserts its keys
-- into idxr.queue as pending rows in one statement of its claim transaction, so a crash in
-- between loses nothing. No index but the primary key: few rows, read per kind in id order.
CREATE TABLE IF NOT EXISTS idxr.queue_batches (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    entity_kind  text NOT NULL,
    entity_ids   text[] NOT NULL,
    source_table text,
    operation    text,
    enqueued_at  timestamptz NOT NULL DEFAULT now()
);

-- Autovacuum: both tables are queues (every row is inserted, maybe updated once, then
-- deleted), so their live size stays small while dead tuples pile up fast. The default
-- scale factor (20% of a tiny table) would vacuum constantly when the queue is near empty and
-- far too late after a burst has drained a large one; a fixed threshold of 1000 dead (or
-- inserted) tuples keeps the heap and its indexes near their drained size after millions of
-- changes. The claim's UPDATE of claimed_by is never a HOT update (claimed_by is in the
-- predicates of queue_pending and queue_held), so fillfactor 90 only leaves the new version
-- room on the same page, which keeps the heap compact; queue_batches rows are never updated.
ALTER TABLE idxr.queue SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 1000,
    autovacuum_analyze_scale_factor = 0,
    autovacuum_analyze_threshold = 1000,
    fillfactor = 90
);
ALTER TABLE idxr.queue_batches SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 1000
);
