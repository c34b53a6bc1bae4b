-- idxr-pg revision 0009: long fields split into chunks, each with its own vector (issue 16).
-- Revisioned: Alembic revision 0009 runs this file once; sql/install.sql runs it too, so every
-- statement is idempotent.
--
-- Storage shape: a chunk number in the key of idxr.search_index,
--   PRIMARY KEY (entity_kind, entity_id, path, chunk)
-- rather than a child table of chunk vectors. Every vector stays in the one column
-- idxr.search_index.embedding, so a chunk's vector is searched by the same HNSW index (and
-- whatever index layout or vector type that column gets) and the same search functions,
-- with no second vector column or index to keep in step.
-- * chunk 0 is the field's row, as before: the whole value, its value type and content hash,
--   and the vector of its first chunk (or of the whole text when it is not chunked);
-- * chunks 1..n-1 of a chunked field: value '' (the text is not stored twice; the field's
--   value at [chunk_start, chunk_end) is the chunk's text), the field's value type and
--   content hash (so an unchanged field reads as unchanged from any of its rows), the chunk's
--   vector;
-- * chunk_start / chunk_end: the chunk's character range in the field's value (0-based,
--   end exclusive), NULL for a field that is not chunked.
-- One row per field: the view idxr.search_fields (041_chunks.sql), or `WHERE chunk = 0`.
-- Existing rows become chunk 0 of their field; a truncated one (truncation IS NOT NULL) is
-- chunked by the next pass over its entity whose configuration says `chunk` (`idxr-pg
-- reindex KIND`, or a backfill), which reads it as changed.
-- The search result types gain the matched chunk (idxr.search_hit, idxr.hybrid_hit: `chunk`,
-- `chunk_text`): a composite type cannot be changed while functions return it, so an older
-- one is dropped here with the functions returning it (CASCADE); 040_search.sql and
-- 045_hybrid.sql, re-applied after the upgrade, create them again.

ALTER TABLE idxr.search_index ADD COLUMN IF NOT EXISTS chunk integer NOT NULL DEFAULT 0;
ALTER TABLE idxr.search_index ADD COLUMN IF NOT EXISTS chunk_start integer;
ALTER TABLE idxr.search_index ADD COLUMN IF NOT EXISTS chunk_end integer;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint c
                    WHERE c.conrelid = 'idxr.search_index'::regclass AND c.contype = 'p'
                      AND array_length(c.conkey, 1) = 4) THEN
        ALTER TABLE idxr.search_index DROP CONSTRAINT IF EXISTS search_index_pkey;
        ALTER TABLE idxr.search_index
            ADD CONSTRAINT search_index_pkey PRIMARY KEY (entity_kind, entity_id, path, chunk);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint c
                    WHERE c.conrelid = 'idxr.search_index'::regclass
                      AND c.conname = 'search_index_chunk_range') THEN
        ALTER TABLE idxr.search_index ADD CONSTRAINT search_index_chunk_range
            CHECK (chunk >= 0 AND (chunk = 0 OR chunk_start IS NOT NULL)
                   AND (chunk_start IS NULL) = (chunk_end IS NULL)
                   AND chunk_start >= 0 AND chunk_end > chunk_start);
    END IF;
END
$$;

DO $$
DECLARE
    hit_type text;
BEGIN
    FOREACH hit_type IN ARRAY ARRAY['idxr.search_hit', 'idxr.hybrid_hit'] LOOP
        IF EXISTS (SELECT 1 FROM pg_catalog.pg_type t
                    WHERE t.oid = to_regtype(hit_type)
                      AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                                       WHERE a.attrelid = t.typrelid AND a.attname = 'chunk')) THEN
            EXECUTE format('DROP TYPE %s CASCADE', hit_type);
        END IF;
    END LOOP;
END
$$;

-- Whether any field is chunked (idxr.knn_search reads fields chunk-aware only then): a partial
-- index holding the chunk rows alone, so the question costs one index probe.
CREATE INDEX IF NOT EXISTS search_index_chunks
    ON idxr.search_index (entity_kind, entity_id, path) WHERE chunk > 0;

-- The rows of index versions that are not active (idxr.version_records, revision 0008) have
-- the shape of idxr.search_index: `idxr-pg versions activate` swaps a kind's rows between them.
ALTER TABLE idxr.version_records ADD COLUMN IF NOT EXISTS chunk integer NOT NULL DEFAULT 0;
ALTER TABLE idxr.version_records ADD COLUMN IF NOT EXISTS chunk_start integer;
ALTER TABLE idxr.version_records ADD COLUMN IF NOT EXISTS chunk_end integer;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint c
                    WHERE c.conrelid = 'idxr.version_records'::regclass AND c.contype = 'p'
                      AND array_length(c.conkey, 1) = 5) THEN
        ALTER TABLE idxr.version_records DROP CONSTRAINT IF EXISTS version_records_pkey;
        ALTER TABLE idxr.version_records ADD CONSTRAINT version_records_pkey
            PRIMARY KEY (entity_kind, version, entity_id, path, chunk);
    END IF;
END
$$;
