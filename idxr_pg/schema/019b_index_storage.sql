-- idxr-pg revision 0010: how each vector size's HNSW index is stored and built (issue 14).
-- Revisioned: Alembic revision 0010 runs this file once; sql/install.sql runs it too, so every
-- statement is idempotent.
--
-- idxr.embedding_index_settings: one row per vector size whose index is not built the default
-- way (no row: storage 'halfvec', m 16, ef_construction 64; see idxr.embedding_index_options).
--   storage          'vector'  HNSW over (embedding::vector(N))  vector_cosine_ops, 4 bytes a
--                              dimension (pgvector indexes up to 2,000 dimensions)
--                    'halfvec' HNSW over (embedding::halfvec(N)) halfvec_cosine_ops, 2 bytes a
--                              dimension (up to 4,000). The column keeps float32 either way:
--                              the search returns exact distances (docs/architecture.md).
--                              The default since this revision (docs/benchmarks.md, "Index
--                              storage and build parameters").
--   m, ef_construction: pgvector's HNSW build parameters (WITH (m = .., ef_construction = ..)).
-- Set with `idxr-pg migrate --index-storage/--hnsw-m/--hnsw-ef-construction` or the config's
-- `index:` section; an existing index whose definition differs is rebuilt concurrently
-- (idxr_pg/db/hnsw.py). 020_dimensions.sql creates the indexes from these rows.

CREATE TABLE IF NOT EXISTS idxr.embedding_index_settings (
    dimensions      integer PRIMARY KEY CHECK (dimensions BETWEEN 1 AND 16000),
    storage         text NOT NULL DEFAULT 'halfvec' CHECK (storage IN ('vector', 'halfvec')),
    m               integer NOT NULL DEFAULT 16 CHECK (m BETWEEN 2 AND 100),
    ef_construction integer NOT NULL DEFAULT 64 CHECK (ef_construction BETWEEN 4 AND 1000),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (ef_construction >= 2 * m)
);

-- An upgraded database keeps the indexes it has: each existing size is recorded as built
-- (vector, pgvector's defaults), so no `migrate` rebuilds it unasked; sizes indexed later
-- get the default. (A fresh install has no index yet here: 020_dimensions.sql runs after.)
INSERT INTO idxr.embedding_index_settings (dimensions, storage, m, ef_construction)
SELECT substring(c.relname FROM '(\d+)$')::integer, 'vector', 16, 64
  FROM pg_catalog.pg_class c
 WHERE c.relnamespace = 'idxr'::regnamespace AND c.relkind = 'i'
   AND c.relname ~ '^search_index_embedding_hnsw_\d+$'
ON CONFLICT (dimensions) DO NOTHING;
