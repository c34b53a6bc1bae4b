-- idxr-pg revision 0003: pausing a kind (issue 18). Revisioned: Alembic revision 0003 runs this
-- file once after 011_coalescing_queue.sql; sql/install.sql runs it too, so it is idempotent.
--
-- idxr.entity_kinds.paused_at: set by `idxr-pg pause KIND` (NULL: not paused), cleared by
-- `idxr-pg resume KIND`. While it is set the capture triggers keep queueing the kind's changes
-- and no worker claims them (runtime/worker.py asks db/kinds.py `refresh_state`); idxr.status shows
-- it (columns paused, paused_since).

ALTER TABLE idxr.entity_kinds ADD COLUMN IF NOT EXISTS paused_at timestamptz;
