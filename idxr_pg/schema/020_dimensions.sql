-- Vector dimensions are handled here and only here: the embedding column is typed vector(N)
-- so the HNSW (cosine) index can exist. `idxr-pg migrate` calls this with the configured
-- model's dimensions; DBAs installing by hand call it after install.sql for another model.
-- Re-applied after every upgrade: the functions are CREATE OR REPLACE, and the call below keeps
-- the dimensions the column already has (384 on a fresh install).

CREATE OR REPLACE FUNCTION idxr.set_embedding_dimensions(dims integer)
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    current_dims integer;
BEGIN
    IF dims IS NULL OR dims < 1 OR dims > 16000 THEN
        RAISE EXCEPTION 'idxr: embedding dimensions must be between 1 and 16000, got %', dims;
    END IF;
    SELECT atttypmod INTO current_dims
      FROM pg_attribute
     WHERE attrelid = 'idxr.search_index'::regclass AND attname = 'embedding';
    IF current_dims IS DISTINCT FROM dims THEN
        IF EXISTS (SELECT 1 FROM idxr.search_index WHERE embedding IS NOT NULL) THEN
            RAISE EXCEPTION 'idxr: search_index holds %-dimensional embeddings; cannot switch to % dimensions',
                current_dims, dims
                USING HINT = 'Empty the index first (TRUNCATE idxr.search_index), migrate again, then backfill every kind with the new model.';
        END IF;
        DROP INDEX IF EXISTS idxr.search_index_embedding_hnsw;
        EXECUTE format('ALTER TABLE idxr.search_index ALTER COLUMN embedding TYPE vector(%s)', dims);
    END IF;
    CREATE INDEX IF NOT EXISTS search_index_embedding_hnsw
        ON idxr.search_index USING hnsw (embedding vector_cosine_ops);
END
$$;

CREATE OR REPLACE FUNCTION idxr.embedding_dimensions()
RETURNS integer
LANGUAGE sql
STABLE
AS $$
    SELECT NULLIF(atttypmod, -1)
      FROM pg_attribute
     WHERE attrelid = 'idxr.search_index'::regclass AND attname = 'embedding'
$$;

-- The default model, all-MiniLM-L6-v2, has 384 dimensions.
SELECT idxr.set_embedding_dimensions(COALESCE(idxr.embedding_dimensions(), 384));
