-- Vector sizes and the HNSW indexes are handled here and only here.
--
-- idxr.search_index.embedding is a bare `vector` (revision 0008): each entity kind's active
-- index version (idxr.index_versions) has its own model, so kinds of different models hold
-- vectors of different sizes side by side. An HNSW index needs a fixed size, so there is one
-- partial expression index per size N in use:
--     search_index_embedding_hnsw_N ON idxr.search_index
--         USING hnsw ((embedding::STORAGE(N)) STORAGE_cosine_ops) WITH (m = M, ef_construction = EF)
--         WHERE vector_dims(embedding) = N
-- where STORAGE is `halfvec` (float16, the default since revision 0010) or `vector` (float32),
-- and STORAGE, M and EF are the size's row of idxr.embedding_index_settings (revision 0010;
-- defaults halfvec / 16 / 64, idxr.embedding_index_options; an upgraded database's existing
-- sizes are recorded as vector). idxr.embedding_index_ddl is the one owner of the definition.
-- The search functions (040_search.sql) write their ORDER BY and WHERE in exactly that form,
-- with N spliced in as an integer literal and STORAGE read from the index that serves now
-- (idxr.embedding_index_storage), so the planner matches the index.
-- Switching an index's storage or parameters (`idxr-pg migrate --index-storage ...`,
-- idxr_pg/db/hnsw.py) builds the new definition CONCURRENTLY as search_index_embedding_hnsw_N_next,
-- drops the old one CONCURRENTLY and renames the new one: search answers throughout.
-- Re-applied after every upgrade: the functions are CREATE OR REPLACE, and the call at the end
-- creates a missing index for every size in use (384, the default model's, on a fresh install).

-- The name of the HNSW index for vectors of `dims` dimensions (the one owner of the name).
CREATE OR REPLACE FUNCTION idxr.embedding_index_name(dims integer)
RETURNS text
LANGUAGE sql
IMMUTABLE PARALLEL SAFE
AS $$ SELECT 'search_index_embedding_hnsw_' || dims $$;

-- The name an index of `dims`-dimensional vectors is built under while it replaces the one of
-- embedding_index_name (a storage or parameter switch; renamed when the old one is dropped).
CREATE OR REPLACE FUNCTION idxr.embedding_index_next_name(dims integer)
RETURNS text
LANGUAGE sql
IMMUTABLE PARALLEL SAFE
AS $$ SELECT idxr.embedding_index_name(dims) || '_next' $$;

-- How the index of `dims`-dimensional vectors is to be built: its settings row, else the
-- defaults, owned here: halfvec (measured: 0.57x the size, 0.5-0.7x the per-row insert cost,
-- recall@10 within 0.01 of vector at the search functions' ef_search; docs/benchmarks.md,
-- "Index storage and build parameters"), m 16 and ef_construction 64 (pgvector's).
CREATE OR REPLACE FUNCTION idxr.embedding_index_options(dims integer)
RETURNS TABLE (storage text, m integer, ef_construction integer)
LANGUAGE sql
STABLE
AS $$
    SELECT coalesce(s.storage, 'halfvec'), coalesce(s.m, 16), coalesce(s.ef_construction, 64)
      FROM (SELECT dims AS d) q
      LEFT JOIN idxr.embedding_index_settings s ON s.dimensions = q.d
$$;

-- Record how the index of `dims`-dimensional vectors is to be built (NULL: keep the current
-- setting). Raises a clear error for a value pgvector would refuse. Does not build anything:
-- `idxr-pg migrate` rebuilds the index concurrently when its definition differs.
CREATE OR REPLACE FUNCTION idxr.set_embedding_index_options(
    dims integer, storage text DEFAULT NULL, m integer DEFAULT NULL,
    ef_construction integer DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
AS $$
DECLARE
    current record;
    max_dims integer;
BEGIN
    IF dims IS NULL OR dims < 1 OR dims > 16000 THEN
        RAISE EXCEPTION 'idxr: embedding dimensions must be between 1 and 16000, got %', dims
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT * INTO current FROM idxr.embedding_index_options(dims);
    storage := coalesce(storage, current.storage);
    m := coalesce(m, current.m);
    ef_construction := coalesce(ef_construction, current.ef_construction);
    IF storage NOT IN ('vector', 'halfvec') THEN
        RAISE EXCEPTION 'idxr: index storage must be vector or halfvec, got %', quote_literal(storage)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    max_dims := CASE storage WHEN 'vector' THEN 2000 ELSE 4000 END;
    IF dims > max_dims AND storage = 'vector' AND dims <= 4000 THEN
        RAISE EXCEPTION 'idxr: an HNSW index over % holds at most % dimensions, not %',
            storage, max_dims, dims
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use index storage halfvec (up to 4000 dimensions).';
    ELSIF dims > max_dims THEN
        RAISE EXCEPTION 'idxr: an HNSW index over % holds at most % dimensions, not %',
            storage, max_dims, dims
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF m < 2 OR m > 100 THEN
        RAISE EXCEPTION 'idxr: HNSW m must be between 2 and 100, got %', m
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF ef_construction < 4 OR ef_construction > 1000 THEN
        RAISE EXCEPTION 'idxr: HNSW ef_construction must be between 4 and 1000, got %', ef_construction
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF ef_construction < 2 * m THEN
        RAISE EXCEPTION 'idxr: HNSW ef_construction (%) must be at least twice m (%)', ef_construction, m
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO idxr.embedding_index_settings AS s (dimensions, storage, m, ef_construction)
    VALUES (dims, storage, m, ef_construction)
    ON CONFLICT (dimensions) DO UPDATE
       SET storage = EXCLUDED.storage, m = EXCLUDED.m, ef_construction = EXCLUDED.ef_construction,
           updated_at = now()
     WHERE (s.storage, s.m, s.ef_construction)
           IS DISTINCT FROM (EXCLUDED.storage, EXCLUDED.m, EXCLUDED.ef_construction);
END
$$;

-- The statement that builds the index of `dims`-dimensional vectors as `index_name` (the one
-- owner of the index definition; CONCURRENTLY for a switch, which cannot run in a function).
CREATE OR REPLACE FUNCTION idxr.embedding_index_ddl(
    dims integer, index_name text, build_concurrently boolean DEFAULT false)
RETURNS text
LANGUAGE plpgsql
STABLE
AS $$
DECLARE
    o record;
BEGIN
    IF dims IS NULL OR dims < 1 OR dims > 16000 THEN
        RAISE EXCEPTION 'idxr: embedding dimensions must be between 1 and 16000, got %', dims;
    END IF;
    SELECT * INTO o FROM idxr.embedding_index_options(dims);
    RETURN format(
        'CREATE INDEX %s IF NOT EXISTS %I ON idxr.search_index USING hnsw '
        '((embedding::%s(%s)) %s_cosine_ops) WITH (m = %s, ef_construction = %s) '
        'WHERE vector_dims(embedding) = %s',
        CASE WHEN build_concurrently THEN 'CONCURRENTLY' ELSE '' END,
        index_name, o.storage, dims, o.storage, o.m, o.ef_construction, dims);
END
$$;

-- The HNSW indexes of `dims`-dimensional vectors there are (the serving one and one being
-- switched to), with the definition each was built with (from the catalog: an index built
-- before revision 0010 has no WITH options and pgvector's defaults) and whether it is valid
-- (a CONCURRENTLY build that failed, or a drop under way, leaves it invalid: never used).
CREATE OR REPLACE FUNCTION idxr.embedding_index_state(dims integer)
RETURNS TABLE (index_name text, storage text, m integer, ef_construction integer,
               valid boolean)
LANGUAGE sql
STABLE
AS $$
    SELECT c.relname::text,
           CASE WHEN oc.opcname LIKE 'halfvec%' THEN 'halfvec' ELSE 'vector' END,
           coalesce((SELECT substr(o, 3)::integer FROM unnest(c.reloptions) o
                      WHERE o LIKE 'm=%'), 16),
           coalesce((SELECT substr(o, 17)::integer FROM unnest(c.reloptions) o
                      WHERE o LIKE 'ef_construction=%'), 64),
           i.indisvalid AND i.indisready
      FROM pg_catalog.pg_class c
      JOIN pg_catalog.pg_index i ON i.indexrelid = c.oid
      JOIN pg_catalog.pg_opclass oc ON oc.oid = i.indclass[0]
     WHERE c.relnamespace = 'idxr'::regnamespace
       AND c.relname IN (idxr.embedding_index_name(dims), idxr.embedding_index_next_name(dims))
     ORDER BY c.relname = idxr.embedding_index_name(dims) DESC
$$;

-- The storage (vector or halfvec) the search functions cast `dims`-dimensional vectors to, so
-- that their ORDER BY matches the index that serves now: the valid one (the current index,
-- else the one being switched to once the current one is being dropped); with no valid index
-- the configured storage (an exact scan either way).
CREATE OR REPLACE FUNCTION idxr.embedding_index_storage(dims integer)
RETURNS text
LANGUAGE sql
STABLE
AS $$
    SELECT coalesce(
        (SELECT st.storage FROM idxr.embedding_index_state(dims) st WHERE st.valid LIMIT 1),
        (SELECT o.storage FROM idxr.embedding_index_options(dims) o))
$$;

-- Create the HNSW index for `dims`-dimensional vectors if it is missing (instant while no row
-- has that size: `idxr-pg versions create` calls it before a build of a new size), as
-- idxr.embedding_index_options says. Not CONCURRENTLY (a function cannot): over rows of that
-- size it blocks writes for the build; idxr_pg/db/hnsw.py builds concurrently instead.
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
    -- A switch stopped between dropping the old index and renaming the new one: the new one
    -- is the index (when its build completed; a failed one is dropped and built again).
    IF EXISTS (SELECT 1 FROM idxr.embedding_index_state(dims) st
                WHERE st.index_name = idxr.embedding_index_next_name(dims) AND st.valid) THEN
        EXECUTE format('ALTER INDEX idxr.%I RENAME TO %I',
                       idxr.embedding_index_next_name(dims), idxr.embedding_index_name(dims));
        RETURN false;
    END IF;
    EXECUTE format('DROP INDEX IF EXISTS idxr.%I', idxr.embedding_index_next_name(dims));
    EXECUTE idxr.embedding_index_ddl(dims, idxr.embedding_index_name(dims));
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
        EXECUTE format('DROP INDEX IF EXISTS idxr.%I', idxr.embedding_index_next_name(unused));
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
