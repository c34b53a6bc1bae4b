-- Vector sizes and the HNSW indexes are handled here and only here.
--
-- idxr.search_index.embedding is a bare `vector` (revision 0008): each entity kind's active
-- index version (idxr.index_versions) has its own model, so kinds of different models hold
-- vectors of different sizes side by side. An HNSW index needs a fixed size, so there is one
-- partial expression index per size N in use:
--     search_index_embedding_hnsw_N ON idxr.search_index
--         USING hnsw ((embedding::vector(N)) vector_cosine_ops) WHERE vector_dims(embedding) = N
-- The search functions (040_search.sql) write their ORDER BY and WHERE in exactly that form,
-- with N spliced in as an integer literal, so the planner matches the index.
-- Re-applied after every upgrade: the functions are CREATE OR REPLACE, and the call at the end
-- creates a missing index for every size in use (384, the default model's, on a fresh install).

-- The name of the HNSW index for vectors of `dims` dimensions (the one owner of the name).
CREATE OR REPLACE FUNCTION idxr.embedding_index_name(dims integer)
RETURNS text
LANGUAGE sql
IMMUTABLE PARALLEL SAFE
AS $$ SELECT 'search_index_embedding_hnsw_' || dims $$;

-- Create the HNSW index for `dims`-dimensional vectors if it is missing (instant while no row
-- has that size: `idxr-pg versions create` calls it before a build of a new size).
CREATE OR REPLACE FUNCTION idxr.ensure_embedding_index(dims integer)
RETURNS boolean  -- true when it was created now
LANGUAGE plpgsql
AS $$
BEGIN
    IF dims IS NULL OR dims < 1 OR dims > 16000 THEN
        RAISE EXCEPTION 'idxr: embedding dimensions must be between 1 and 16000, got %', dims;
    END IF;
    IF to_regclass('idxr.' || idxr.embedding_index_name(dims)) IS NOT NULL THEN
        RETURN false;
    END IF;
    EXECUTE format(
        'CREATE INDEX IF NOT EXISTS %I ON idxr.search_index USING hnsw '
        '((embedding::vector(%s)) vector_cosine_ops) WHERE vector_dims(embedding) = %s',
        idxr.embedding_index_name(dims), dims, dims);
    RETURN true;
END
$$;

-- The sizes of the HNSW indexes there are (from their names).
CREATE OR REPLACE FUNCTION idxr.embedding_index_sizes()
RETURNS SETOF integer
LANGUAGE sql
STABLE
AS $$
    SELECT substring(c.relname FROM '(\d+)$')::integer
      FROM pg_catalog.pg_class c
     WHERE c.relnamespace = 'idxr'::regnamespace AND c.relkind = 'i'
       AND c.relname ~ '^search_index_embedding_hnsw_\d+$'
$$;

-- The vector sizes that need an index: those of the kinds' active and building versions;
-- while no version exists, those of the indexes there are, or 384 (the default model's).
CREATE OR REPLACE FUNCTION idxr.embedding_sizes()
RETURNS SETOF integer
LANGUAGE sql
STABLE
AS $$
    SELECT DISTINCT v.dimensions FROM idxr.index_versions v WHERE v.state IN ('active', 'building')
    UNION
    SELECT d FROM idxr.embedding_index_sizes() d
     WHERE NOT EXISTS (SELECT 1 FROM idxr.index_versions)
    UNION
    SELECT 384 WHERE NOT EXISTS (SELECT 1 FROM idxr.index_versions)
                 AND NOT EXISTS (SELECT 1 FROM idxr.embedding_index_sizes())
$$;

-- Create every missing index of idxr.embedding_sizes(); returns how many were created.
CREATE OR REPLACE FUNCTION idxr.ensure_embedding_indexes()
RETURNS integer
LANGUAGE sql
AS $$
    SELECT count(*) FILTER (WHERE idxr.ensure_embedding_index(d))::integer
      FROM idxr.embedding_sizes() d
$$;

-- The database's default vector size (`idxr-pg migrate --dimensions N`, the configured
-- model's). Before revision 0008 this retyped the column vector(N), refusing while vectors
-- existed. Now it makes sure the index for N-dimensional vectors exists and drops the indexes
-- of other sizes that nothing uses (no active or building version, no row of that size).
CREATE OR REPLACE FUNCTION idxr.set_embedding_dimensions(dims integer)
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    unused integer;
BEGIN
    PERFORM idxr.ensure_embedding_index(dims);
    FOR unused IN
        SELECT d FROM idxr.embedding_index_sizes() d
         WHERE d <> dims
           AND NOT EXISTS (SELECT 1 FROM idxr.index_versions v
                            WHERE v.dimensions = d AND v.state IN ('active', 'building'))
           AND NOT EXISTS (SELECT 1 FROM idxr.search_index s WHERE vector_dims(s.embedding) = d)
    LOOP
        EXECUTE format('DROP INDEX idxr.%I', idxr.embedding_index_name(unused));
    END LOOP;
END
$$;

-- The vector size of a kind's active version (NULL: the kind has none yet).
CREATE OR REPLACE FUNCTION idxr.kind_dimensions(entity_kind text)
RETURNS integer
LANGUAGE sql
STABLE
AS $$
    SELECT v.dimensions FROM idxr.index_versions v
     WHERE v.entity_kind = kind_dimensions.entity_kind AND v.state = 'active'
$$;

-- The one vector size of this database: the size of every kind's active version when they
-- agree; with no version yet, the size of the only HNSW index there is. NULL when kinds of
-- different sizes coexist (then ask idxr.kind_dimensions(kind)).
CREATE OR REPLACE FUNCTION idxr.embedding_dimensions()
RETURNS integer
LANGUAGE sql
STABLE
AS $$
    SELECT CASE
        WHEN EXISTS (SELECT 1 FROM idxr.index_versions WHERE state = 'active') THEN
            (SELECT CASE WHEN count(DISTINCT v.dimensions) = 1 THEN min(v.dimensions) END
               FROM idxr.index_versions v WHERE v.state = 'active')
        ELSE
            (SELECT CASE WHEN count(*) = 1 THEN min(d) END FROM idxr.embedding_index_sizes() d)
    END
$$;

-- The registry as users read it (`idxr-pg versions list`): one row per kind and version.
CREATE OR REPLACE VIEW idxr.versions AS
SELECT v.entity_kind, v.version, v.state, v.model_name, v.model_source, v.model_version, v.dimensions,
       v.backend, v.precision, v.schema_fingerprint, v.texts, v.build_seconds, v.coverage,
       v.job_id, j.state AS build_state, j.total AS build_total, j.done AS build_done,
       v.created_at, v.activated_at, v.retired_at
  FROM idxr.index_versions v
  LEFT JOIN idxr.jobs j ON j.id = v.job_id;

SELECT idxr.ensure_embedding_indexes();
