-- idxr-pg revision 0004: entity model shapes (issue 15). Revisioned: Alembic revision 0004 runs
-- this file once; sql/install.sql runs it too, so it is idempotent.
--
-- idxr.entity_kinds.schema_shape: the shape of the kind's model the index was built with
-- ({"fields": {path pattern: type}, "exclude_paths": [...]}, idxr_pg/records/shape.py), with
-- schema_fingerprint beside it. Recorded when a kind is first registered (or its index is
-- empty) and after a backfill or `idxr-pg reindex` that finished with no failed entity
-- (idxr_pg/indexing/schema_state.py).
-- idxr.entity_kinds.schema_change: what differs in the model a worker, backfill or
-- `idxr-pg status` last saw ({"summary": ..., "added": [...], ...}); NULL: up to date.
-- idxr.status shows it (columns schema_stale, schema_change).

ALTER TABLE idxr.entity_kinds ADD COLUMN IF NOT EXISTS schema_shape jsonb;
ALTER TABLE idxr.entity_kinds ADD COLUMN IF NOT EXISTS schema_change jsonb;
