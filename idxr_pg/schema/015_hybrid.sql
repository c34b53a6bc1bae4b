-- idxr-pg revision 0006: lexical and hybrid search, the stale flag (issues 16 and 18).
-- Revisioned: Alembic revision 0006 runs this file once; sql/install.sql runs it too, so every
-- statement is idempotent.
--
-- * idxr.entity_kinds.text_search_config: the text search configuration (language) of a kind's
--   full-text index (NULL: idxr.default_text_search_config()). idxr.set_text_search_config
--   (045_hybrid.sql) records it and builds the kind's GIN index; the worker's registration
--   calls it, so a configured kind always has its index.
-- * idxr.entity_kinds.composite: the kind's composite template (NULL: none), see 040_search.sql.
-- * idxr.search_hit gains a `stale` column (the entity has queued changes). A composite type
--   cannot be changed while functions return it, so an older search_hit is dropped here with
--   the functions that return it (CASCADE); 040_search.sql, re-applied after the upgrade,
--   creates them again with the new shape.

ALTER TABLE idxr.entity_kinds ADD COLUMN IF NOT EXISTS text_search_config regconfig;
-- The kind's composite template (config `composite:`), recorded by registration: entity search
-- fuses the composite record (path = the kind's root label) with the best field for such kinds.
ALTER TABLE idxr.entity_kinds ADD COLUMN IF NOT EXISTS composite text;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_type t
                WHERE t.oid = to_regtype('idxr.search_hit')
                  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                                   WHERE a.attrelid = t.typrelid AND a.attname = 'stale')) THEN
        DROP TYPE idxr.search_hit CASCADE;
    END IF;
END
$$;
