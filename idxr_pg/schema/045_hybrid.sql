-- idxr-pg lexical (full-text) and hybrid search over idxr.search_index (issue 16).
--
-- Public functions (schema idxr):
--   text_search(query_text, path_filter, entity_kind, k, filters)
--       the k string fields that best match the words of query_text (PostgreSQL full-text
--       search); text_search_entities: one row per entity, its best-matching field
--   hybrid_search(query_text, query_vector, path_filter, entity_kind, k, filters, weights)
--       lexical and vector candidates fused by reciprocal rank fusion, one row per field;
--       hybrid_search_entities: one row per entity
--   set_text_search_config(entity_kind, config)
--       the kind's text search configuration (language), and its GIN index
-- All take the path filter (lquery), kind and structured filters of idxr.search, and return
-- idxr.hybrid_hit rows, best first, with `stale` (the entity has queued changes).
--
-- The full-text index. A text search configuration (e.g. 'simple', 'english') is chosen per
-- kind (YAML `text_search:`; NULL: idxr.default_text_search_config()). Each kind gets one
-- partial expression GIN index,
--   USING gin (to_tsvector('<config>'::regconfig, value))
--     WHERE (entity_kind = '<kind>') IS TRUE AND value_type = 'string'
-- (`IS TRUE`: the queries repeat that condition, which proves the partial index applies, and
-- the planner cannot answer it from the btree on entity_kind instead: planner statistics are
-- not kept for a partial index's expression, so it guesses the text condition's selectivity and
-- preferred reading every row of the kind through the btree, parsing each text)
-- named idxr.text_search_index_name(kind), built by idxr.set_text_search_config (the worker's
-- registration calls it). An expression index, not a stored tsvector column: the write path
-- (upserts, COPY) writes the same columns as before, and no second copy of every text is kept.
-- The queries below splice the kind and its configuration in as literals (quoted with %L) so
-- that the planner matches the partial index; every other argument is a parameter. A kind
-- without an index (never registered by a worker) is still searched, by a sequential scan.
--
-- Scoring (lexical): PostgreSQL's ts_rank has no inverse document frequency, so a query's rare
-- exact term (a part number, a name) weighs no more than its common words. Here each distinct
-- lexeme of the query gets a BM25 idf, ln(1 + (N - df + 0.5) / (df + 0.5)), with df counted
-- through the index up to `common_cap` rows (5% of the rows, between 100 and 1000: bounded cost)
-- and N the table's row estimate; a lexeme that the index's planner statistics
-- (idxr.text_term_stats) put in at least 2 * common_cap rows is taken as df = common_cap without
-- counting (the count would stop there; counting common words was most of a query's cost at
-- 100k records, docs/benchmarks.md). The candidates are the fields holding a rare lexeme
-- (df < common_cap; matching is OR, so a paraphrase sharing one rare word finds a field), or,
-- when every word of the query is common, those holding the rarest one (at most common_cap).
-- A field's score is the sum of the idf of the picked lexemes it holds, computed from the GIN
-- index alone: no candidate's text is parsed (to_tsvector of a long text costs ~0.1-0.3 ms,
-- and parsing every candidate made a query of common words cost 100 ms at 2,000 records).
-- Measured in bench/quality.py: 0.015 nDCG@10 below also scoring common words and breaking
-- ties with ts_rank on the parsed text, for a bounded cost (docs/benchmarks.md).
--
-- Fusion (hybrid): reciprocal rank fusion, score = sum over the lists of weight / (rrf_k + rank)
-- over the vector list (idxr.knn_search; entity level: idxr.entity_knn) and the lexical list,
-- each `depth` candidates deep (4k, at least 60), plus an exact-match boost
-- weight_exact / (rrf_k + 1) for a field of the lexical list that
--   * is identifier-like (at most 64 characters) and equals the whole query, or has no
--     whitespace and equals one of the query's words (case-insensitive), or
--   * holds every picked lexeme of the query, two or more (a name, a title), or
--   * holds a query lexeme with a digit (a part number, a code).
-- Weights: a jsonb object
--   {"vector": 1, "lexical": 1, "exact": 1, "rrf_k": 60}   (the defaults; any key may be left out)
-- Re-applied after every upgrade: functions are CREATE OR REPLACE, the type is created once.

DO $$
BEGIN
    CREATE TYPE idxr.hybrid_hit AS (
        entity_kind text,
        entity_id   text,
        path        ltree,
        value       text,
        score       double precision,  -- fused score (hybrid) or lexical score (text_search)
        distance    double precision,  -- cosine distance, when the vector list holds the row
        text_rank   integer,           -- position in the lexical list (NULL: not in it)
        vector_rank integer,           -- position in the vector list (NULL: not in it)
        exact       boolean,           -- an exact match (see the boost above; NULL: not looked at)
        stale       boolean,           -- the entity has queued changes (idxr.is_stale)
        chunk       integer,           -- the vector list's matched chunk (NULL: not chunked)
        chunk_text  text               -- that chunk's text (idxr.search_hit, 019_chunks.sql)
    );
EXCEPTION WHEN duplicate_object THEN NULL;
END
$$;

-- The text search configuration of kinds that name none (decided on bench/quality.py, see
-- docs/benchmarks.md).
CREATE OR REPLACE FUNCTION idxr.default_text_search_config()
RETURNS regconfig
LANGUAGE sql
STABLE PARALLEL SAFE
AS $$ SELECT 'pg_catalog.english'::regconfig $$;

CREATE OR REPLACE FUNCTION idxr.text_search_index_name(entity_kind text)
RETURNS text
LANGUAGE sql
IMMUTABLE PARALLEL SAFE
AS $$ SELECT 'search_index_text_' || left(md5($1), 12) $$;

-- Records `config` (NULL: the default) as the kind's text search configuration and makes sure
-- its partial GIN index exists with that configuration (built again when it changed). Returns
-- the configuration in use. SECURITY DEFINER so that the worker role, which does not own
-- idxr.search_index, can build the index of a kind it registers; it only ever builds that one
-- index shape, for a kind recorded in idxr.entity_kinds.
CREATE OR REPLACE FUNCTION idxr.set_text_search_config(entity_kind text, config regconfig DEFAULT NULL)
RETURNS regconfig
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cfg      regconfig := coalesce(config, idxr.default_text_search_config());
    idx      text := idxr.text_search_index_name(entity_kind);
    expected text;
    current  text;
BEGIN
    IF entity_kind IS NULL THEN
        RAISE EXCEPTION 'idxr: set_text_search_config needs an entity kind'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM idxr.entity_kinds ek WHERE ek.name = entity_kind) THEN
        RAISE EXCEPTION 'idxr: unknown entity kind %', quote_literal(entity_kind)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Register the kind first (start a worker or a backfill for it).';
    END IF;
    UPDATE idxr.entity_kinds ek SET text_search_config = cfg
     WHERE ek.name = entity_kind AND ek.text_search_config IS DISTINCT FROM cfg;
    expected := format('idxr: full-text index of entity kind %s (%s)', entity_kind, cfg::text);
    SELECT obj_description(c.oid, 'pg_class') INTO current
      FROM pg_class c
     WHERE c.relname = idx AND c.relnamespace = 'idxr'::regnamespace;
    IF current IS DISTINCT FROM expected THEN
        EXECUTE format('DROP INDEX IF EXISTS idxr.%I', idx);
        EXECUTE format(
            'CREATE INDEX %I ON idxr.search_index USING gin (to_tsvector(%L::regconfig, value))'
            ' WHERE (entity_kind = %L) IS TRUE AND value_type = ''string''',
            idx, cfg::text, entity_kind);
        EXECUTE format('COMMENT ON INDEX idxr.%I IS %L', idx, expected);
    END IF;
    RETURN cfg;
END
$$;

-- The planner statistics of a kind's full-text index (ANALYZE keeps them for the partial
-- expression index, in pg_stats under the index's name): its most common lexemes, the fraction
-- of the index's rows holding each (same order), and the index's row estimate. No rows when
-- the index has no statistics yet (never analyzed) or does not exist. SECURITY DEFINER because
-- pg_stats shows an index's statistics to its owner only; it returns lexeme frequencies of the
-- kind's texts, which a caller of the search functions can read from idxr.search_index anyway.
CREATE OR REPLACE FUNCTION idxr.text_term_stats(
    entity_kind text,
    OUT lexemes text[], OUT freqs real[], OUT index_rows double precision)
RETURNS SETOF record
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT st.most_common_elems::text::text[], st.most_common_elem_freqs, c.reltuples::float8
      FROM pg_class c
      JOIN pg_stats st ON st.schemaname = 'idxr' AND st.tablename = c.relname
     WHERE c.relnamespace = 'idxr'::regnamespace
       AND c.relname = idxr.text_search_index_name($1)
       AND st.most_common_elems IS NOT NULL
       AND c.reltuples > 0
$$;

-- Refuses a missing or blank query text.
CREATE OR REPLACE FUNCTION idxr.check_text_query(query_text text)
RETURNS void
LANGUAGE plpgsql
IMMUTABLE
AS $$
BEGIN
    IF query_text IS NULL OR btrim(query_text, E' \t\r\n') = '' THEN
        RAISE EXCEPTION 'idxr: the query text is empty: give the words to search for'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;

-- The distinct lexemes of `query_text` under `config`, each as a one-term tsquery.
CREATE OR REPLACE FUNCTION idxr.text_query_terms(config regconfig, query_text text)
RETURNS tsquery[]
LANGUAGE sql
IMMUTABLE PARALLEL SAFE
AS $$
    SELECT coalesce(array_agg(
               format('''%s''', replace(replace(t.lexeme, '\', '\\'), '''', ''''''))::tsquery
               ORDER BY t.lexeme), '{}')
      FROM unnest(to_tsvector($1, $2)) AS t
$$;

-- Validates the hybrid weights (see the top of this file); returns them with defaults filled in.
CREATE OR REPLACE FUNCTION idxr.hybrid_weights(
    weights jsonb,
    OUT vector double precision, OUT lexical double precision,
    OUT exact double precision, OUT rrf_k double precision)
LANGUAGE plpgsql
IMMUTABLE
AS $$
DECLARE
    key text;
    known constant text[] := ARRAY['vector', 'lexical', 'exact', 'rrf_k'];
BEGIN
    vector := 1; lexical := 1; exact := 1; rrf_k := 60;
    IF weights IS NULL OR jsonb_typeof(weights) = 'null' THEN
        RETURN;
    END IF;
    IF jsonb_typeof(weights) <> 'object' THEN
        RAISE EXCEPTION 'idxr: weights must be a JSON object, got a JSON %', jsonb_typeof(weights)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'e.g. {"vector": 1, "lexical": 0.5, "exact": 1, "rrf_k": 60}';
    END IF;
    FOR key IN SELECT jsonb_object_keys(weights) LOOP
        IF key <> ALL (known) THEN
            RAISE EXCEPTION 'idxr: unknown weight % (allowed: %)', quote_literal(key),
                array_to_string(known, ', ')
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF jsonb_typeof(weights -> key) <> 'number' OR (weights ->> key)::numeric < 0
           OR (weights ->> key)::numeric > 1000 THEN
            RAISE EXCEPTION 'idxr: weight % must be a number between 0 and 1000, got %', key, weights -> key
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END LOOP;
    vector := coalesce((weights ->> 'vector')::double precision, vector);
    lexical := coalesce((weights ->> 'lexical')::double precision, lexical);
    exact := coalesce((weights ->> 'exact')::double precision, exact);
    rrf_k := coalesce((weights ->> 'rrf_k')::double precision, rrf_k);
    IF vector = 0 AND lexical = 0 THEN
        RAISE EXCEPTION 'idxr: weights "vector" and "lexical" are both 0: nothing would be searched'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF rrf_k < 1 THEN
        RAISE EXCEPTION 'idxr: weight rrf_k must be at least 1, got %', rrf_k
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;

-- The engine of lexical search (call text_search / text_search_entities / hybrid_search).
-- Field rows best first (per_entity: each entity's best field), `score` and `text_rank` set,
-- `stale` NULL. See the scoring notes at the top of this file.
CREATE OR REPLACE FUNCTION idxr.lexical_search(
    query_text  text,
    path_filter lquery,
    entity_kind text,
    k           integer,
    filters     jsonb,
    per_entity  boolean
)
RETURNS SETOF idxr.hybrid_hit
LANGUAGE plpgsql
VOLATILE
SET jit = off  -- see knn_search
-- A term in most rows makes the planner prefer a sequential scan, which parses every text it
-- reads (to_tsvector of a long text costs ~0.2 ms); the GIN index answers without parsing.
-- A kind without its index is still searched (the setting only discourages a seq scan).
SET enable_seqscan = off
SET search_path FROM CURRENT  -- see knn_search
AS $$
DECLARE
    kind_name  text;
    cfg        regconfig;
    terms      tsquery[];
    idf        double precision[];
    pick       boolean[];  -- the terms whose rows are the candidates
    code       boolean[];  -- the terms with a digit (part numbers, codes)
    picked     integer;
    rarest     integer;
    rarest_df  bigint;
    df         bigint;
    total      double precision;
    kind_where text;
    doc        text;
    extra      text := '';
    hits       idxr.hybrid_hit[] := '{}';
    part       idxr.hybrid_hit[];
    common_cap integer;
    phrase     text := lower(btrim(query_text));
    words      text[];
    lexemes    text[];  -- the terms' lexemes, same order
    mce        text[];  -- the kind's most common lexemes (planner statistics)
    mce_freqs  real[];
    mce_rows   double precision;
    pos        integer;
BEGIN
    PERFORM idxr.check_text_query(query_text);
    PERFORM idxr.check_search_args(NULL, entity_kind, k);
    SELECT coalesce(array_agg(DISTINCT y.t), '{}') INTO words
      FROM regexp_split_to_table(phrase, '[\s,;!?()"]+') AS x(word)
     CROSS JOIN LATERAL (SELECT btrim(x.word, '.:''') AS t) y
     WHERE y.t <> '';
    IF path_filter IS NOT NULL THEN
        extra := extra || ' AND s.path ~ $1';
    END IF;
    IF filters IS NOT NULL AND jsonb_typeof(filters) <> 'null' THEN
        extra := extra || idxr.search_filter_sql(filters, 2);
    END IF;
    SELECT c.reltuples INTO total FROM pg_class c WHERE c.oid = 'idxr.search_index'::regclass;
    common_cap := least(1000, greatest(100, 0.05 * total))::integer;

    FOR kind_name, cfg IN
        WITH RECURSIVE indexed(name) AS (  -- the distinct kinds, by skipping through the btree
            (SELECT s.entity_kind FROM idxr.search_index s ORDER BY s.entity_kind LIMIT 1)
            UNION ALL
            SELECT (SELECT s.entity_kind FROM idxr.search_index s
                     WHERE s.entity_kind > i.name ORDER BY s.entity_kind LIMIT 1)
              FROM indexed i WHERE i.name IS NOT NULL
        )
        SELECT kk.name, coalesce(ek.text_search_config, idxr.default_text_search_config())
          FROM (SELECT lexical_search.entity_kind AS name WHERE lexical_search.entity_kind IS NOT NULL
                UNION ALL
                SELECT i.name FROM indexed i
                 WHERE lexical_search.entity_kind IS NULL AND i.name IS NOT NULL) kk
          LEFT JOIN idxr.entity_kinds ek ON ek.name = kk.name
    LOOP
        terms := idxr.text_query_terms(cfg, query_text);
        CONTINUE WHEN cardinality(terms) = 0;
        SELECT coalesce(array_agg(t.lexeme ORDER BY t.lexeme), '{}') INTO lexemes
          FROM unnest(to_tsvector(cfg, query_text)) AS t;
        mce := NULL;
        mce_freqs := NULL;
        mce_rows := NULL;
        SELECT st.lexemes, st.freqs, st.index_rows INTO mce, mce_freqs, mce_rows
          FROM idxr.text_term_stats(kind_name) st;
        kind_where := format('(s.entity_kind = %L) IS TRUE AND s.value_type = ''string''', kind_name);
        doc := format('to_tsvector(%L::regconfig, s.value)', cfg::text);
        idf := '{}';
        pick := '{}';
        code := '{}';
        rarest := NULL;
        rarest_df := NULL;
        FOR i IN 1 .. cardinality(terms) LOOP
            -- A lexeme that the statistics put in at least twice common_cap rows (the margin
            -- covers their sampling error) is common: its count would stop at common_cap, so
            -- it is taken as that without reading the index (each count read up to common_cap
            -- heap rows: ~5 ms per common word at 100k records). Any other lexeme is counted.
            pos := array_position(mce, lexemes[i]);
            IF pos IS NOT NULL AND mce_freqs[pos] * mce_rows >= 2 * common_cap THEN
                df := common_cap;
            ELSE
                EXECUTE format('SELECT count(*) FROM (SELECT 1 FROM idxr.search_index s'
                               ' WHERE %s AND %s @@ $1 LIMIT %s) x', kind_where, doc, common_cap)
                    INTO df USING terms[i];
            END IF;
            idf := idf || ln(1 + (greatest(total, df, 1) - df + 0.5) / (df + 0.5));
            pick := pick || (df > 0 AND df < common_cap);
            code := code || (terms[i]::text ~ '\d' AND length(terms[i]::text) >= 4);  -- 'x1'
            IF df > 0 AND (rarest IS NULL OR df < rarest_df) THEN
                rarest := i;
                rarest_df := df;
            END IF;
        END LOOP;
        CONTINUE WHEN rarest IS NULL;  -- no word of the query occurs in this kind
        IF NOT (true = ANY (pick)) THEN
            pick[rarest] := true;  -- only common words: the rarest one finds the candidates
        END IF;
        picked := cardinality(array_positions(pick, true));
        -- Scored from the index alone: each picked term's rows come from the GIN index (no text
        -- is parsed), a field's score is the sum of the idf of the terms it holds.
        EXECUTE format(
            'WITH t AS (SELECT u.term, u.idf, u.code FROM unnest($3, $4, $8, $9)'
            '             AS u(term, idf, pick, code) WHERE u.pick),'
            ' m AS (SELECT x.entity_id, x.path, sum(t.idf) AS score, count(*) AS matched,'
            '              bool_or(t.code) AS code'
            '         FROM t CROSS JOIN LATERAL ('
            '              SELECT s.entity_id, s.path FROM idxr.search_index s'
            '               WHERE %1$s AND %2$s @@ t.term %3$s LIMIT %5$s) x'
            '        GROUP BY x.entity_id, x.path),'
            ' best AS (SELECT * FROM m WHERE NOT $7'
            '          UNION ALL'
            '          (SELECT DISTINCT ON (entity_id) * FROM m WHERE $7'
            '            ORDER BY entity_id, score DESC, path)),'
            ' top AS (SELECT * FROM best ORDER BY score DESC, entity_id, path LIMIT $6)'
            ' SELECT array_agg(ROW(s.entity_kind, s.entity_id, s.path, s.value, top.score,'
            '                      NULL, NULL, NULL,'
            '                      (length(s.value) <= 64 AND (lower(btrim(s.value)) = $10'
            '                           OR (s.value !~ ''\s'' AND lower(s.value) = ANY ($11))))'
            '                      OR top.code OR (top.matched >= 2 AND top.matched = $12),'
            '                      NULL, NULL, NULL)::idxr.hybrid_hit)'
            '   FROM top JOIN idxr.search_index s'
            '     ON s.entity_kind = %4$L AND s.entity_id = top.entity_id AND s.path = top.path'
            '    AND s.chunk = 0',
            kind_where, doc, extra, kind_name, common_cap)
            INTO part
            USING path_filter, filters, terms, idf, NULL, k, per_entity, pick, code, phrase, words,
                  picked;
        hits := hits || coalesce(part, '{}');
    END LOOP;

    RETURN QUERY
        SELECT h.entity_kind, h.entity_id, h.path, h.value, h.score, h.distance,
               (row_number() OVER (ORDER BY h.score DESC, h.entity_kind, h.entity_id, h.path))::integer,
               h.vector_rank, h.exact, h.stale, h.chunk, h.chunk_text
          FROM unnest(hits) h
         ORDER BY h.score DESC, h.entity_kind, h.entity_id, h.path
         LIMIT k;
END
$$;

-- The k string fields best matching the words of `query_text` (see lexical scoring above),
-- among those whose path matches `path_filter`, of kind `entity_kind`, in entities meeting
-- `filters` (as idxr.search); NULL = no limit.
CREATE OR REPLACE FUNCTION idxr.text_search(
    query_text  text,
    path_filter lquery DEFAULT NULL,
    entity_kind text DEFAULT NULL,
    k           integer DEFAULT 10,
    filters     jsonb DEFAULT NULL
)
RETURNS SETOF idxr.hybrid_hit
LANGUAGE sql
VOLATILE  -- as lexical_search
AS $$
    SELECT h.entity_kind, h.entity_id, h.path, h.value, h.score, h.distance, h.text_rank,
           h.vector_rank, h.exact, idxr.is_stale(h.entity_kind, h.entity_id), h.chunk,
           h.chunk_text
      FROM idxr.lexical_search(query_text, path_filter, entity_kind, k, filters, false) h
$$;

-- Like text_search, one row per entity: its best-matching field.
CREATE OR REPLACE FUNCTION idxr.text_search_entities(
    query_text  text,
    path_filter lquery DEFAULT NULL,
    entity_kind text DEFAULT NULL,
    k           integer DEFAULT 10,
    filters     jsonb DEFAULT NULL
)
RETURNS SETOF idxr.hybrid_hit
LANGUAGE sql
VOLATILE  -- as lexical_search
AS $$
    SELECT h.entity_kind, h.entity_id, h.path, h.value, h.score, h.distance, h.text_rank,
           h.vector_rank, h.exact, idxr.is_stale(h.entity_kind, h.entity_id), h.chunk,
           h.chunk_text
      FROM idxr.lexical_search(query_text, path_filter, entity_kind, k, filters, true) h
$$;

-- The engine of hybrid search (call hybrid_search / hybrid_search_entities): reciprocal rank
-- fusion of the vector and lexical candidate lists, plus the exact-match boost.
CREATE OR REPLACE FUNCTION idxr.fused_search(
    query_text   text,
    query_vector vector,
    path_filter  lquery,
    entity_kind  text,
    k            integer,
    filters      jsonb,
    weights      jsonb,
    per_entity   boolean
)
RETURNS SETOF idxr.hybrid_hit
LANGUAGE plpgsql
VOLATILE
SET jit = off  -- see knn_search
SET search_path FROM CURRENT  -- see knn_search
AS $$
DECLARE
    w      record;
    depth  integer;
BEGIN
    PERFORM idxr.check_text_query(query_text);
    IF query_vector IS NULL THEN
        RAISE EXCEPTION 'idxr: the query vector is NULL'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM idxr.check_search_args(query_vector, entity_kind, k);
    SELECT * INTO w FROM idxr.hybrid_weights(weights);
    IF filters IS NOT NULL THEN
        PERFORM idxr.search_filter_sql(filters, 5);  -- a bad filter fails before any search
    END IF;
    -- How deep each list is read: RRF needs more than k from each, so that a row ranked well
    -- by one list and moderately by the other is seen by both. At least 60 (it was 100): at
    -- k = 10 the hybrid p50 at 100k records fell from 1.71x to 1.12x vector-only, and the top
    -- 10's nDCG@10 in bench/quality.py went 0.864 -> 0.866 (english; 40 gave 0.860).
    -- docs/benchmarks.md.
    depth := least(1000, greatest(60, 4 * k));

    RETURN QUERY
    WITH vec AS (
        SELECT v.entity_kind, v.entity_id, v.path, v.value, v.distance, v.r,
               CASE WHEN per_entity THEN NULL ELSE v.path END AS kp, v.chunk, v.chunk_text
          FROM idxr.knn_search(query_vector, path_filter, entity_kind, depth, filters, false)
               WITH ORDINALITY
               AS v(entity_kind, entity_id, path, value, distance, stale, chunk, chunk_text, r)
         WHERE w.vector > 0 AND NOT per_entity
        UNION ALL
        SELECT v.entity_kind, v.entity_id, v.path, v.value, v.distance, v.r, NULL::ltree,
               v.chunk, v.chunk_text
          FROM idxr.entity_knn(query_vector, path_filter, entity_kind, depth, filters)
               WITH ORDINALITY
               AS v(entity_kind, entity_id, path, value, distance, stale, chunk, chunk_text, r)
         WHERE w.vector > 0 AND per_entity
    ),
    lexf AS (
        SELECT l.entity_kind, l.entity_id, l.path, l.value, l.text_rank AS r, l.exact,
               CASE WHEN per_entity THEN NULL ELSE l.path END AS kp
          FROM idxr.lexical_search(query_text, path_filter, entity_kind, depth, filters, false) l
         WHERE w.lexical > 0 OR w.exact > 0
    ),
    lex AS (  -- the lexical list: fields, or entities ranked by their best field
        SELECT b.*, row_number() OVER (ORDER BY b.r) AS lr
          FROM (SELECT DISTINCT ON (f.entity_kind, f.entity_id, f.kp) f.*
                  FROM lexf f ORDER BY f.entity_kind, f.entity_id, f.kp, f.r) b
    ),
    exact AS (
        SELECT DISTINCT f.entity_kind, f.entity_id, f.kp
          FROM lexf f
         WHERE w.exact > 0 AND f.exact
    ),
    keys AS (
        SELECT v.entity_kind, v.entity_id, v.kp FROM vec v
        UNION
        SELECT l.entity_kind, l.entity_id, l.kp FROM lex l WHERE w.lexical > 0
        UNION
        SELECT e.entity_kind, e.entity_id, e.kp FROM exact e
    ),
    fused AS (
        SELECT key.entity_kind, key.entity_id,
               coalesce(v.path, l.path) AS path, coalesce(v.value, l.value) AS value,
               coalesce(w.vector / (w.rrf_k + v.r), 0)
               + CASE WHEN w.lexical > 0 THEN coalesce(w.lexical / (w.rrf_k + l.lr), 0) ELSE 0 END
               + CASE WHEN e.entity_id IS NOT NULL THEN w.exact / (w.rrf_k + 1) ELSE 0 END AS score,
               v.distance,
               CASE WHEN w.lexical > 0 THEN l.lr::integer END AS text_rank,
               v.r::integer AS vector_rank,
               e.entity_id IS NOT NULL AS exact,
               v.chunk, v.chunk_text
          FROM keys key
          LEFT JOIN vec v ON v.entity_kind = key.entity_kind AND v.entity_id = key.entity_id
                         AND v.kp IS NOT DISTINCT FROM key.kp
          LEFT JOIN lex l ON l.entity_kind = key.entity_kind AND l.entity_id = key.entity_id
                         AND l.kp IS NOT DISTINCT FROM key.kp
          LEFT JOIN exact e ON e.entity_kind = key.entity_kind AND e.entity_id = key.entity_id
                           AND e.kp IS NOT DISTINCT FROM key.kp
         ORDER BY score DESC, key.entity_kind, key.entity_id, path
         LIMIT k
    )
    SELECT f.entity_kind, f.entity_id, f.path, f.value, f.score, f.distance, f.text_rank,
           f.vector_rank, f.exact, idxr.is_stale(f.entity_kind, f.entity_id), f.chunk,
           f.chunk_text
      FROM fused f
     ORDER BY f.score DESC, f.entity_kind, f.entity_id, f.path;
END
$$;

-- Hybrid search: the k field records best matching `query_text` (its words, full-text) and
-- `query_vector` (the same text embedded with the index's model), fused by reciprocal rank;
-- path_filter, entity_kind and filters as idxr.search; weights see the top of this file.
CREATE OR REPLACE FUNCTION idxr.hybrid_search(
    query_text   text,
    query_vector vector,
    path_filter  lquery DEFAULT NULL,
    entity_kind  text DEFAULT NULL,
    k            integer DEFAULT 10,
    filters      jsonb DEFAULT NULL,
    weights      jsonb DEFAULT NULL
)
RETURNS SETOF idxr.hybrid_hit
LANGUAGE sql
VOLATILE  -- as fused_search
AS $$
    SELECT * FROM idxr.fused_search(query_text, query_vector, path_filter, entity_kind, k,
                                    filters, weights, false)
$$;

-- Like hybrid_search, one row per entity: entities ranked by fusing their best vector field's
-- rank and their best lexical field's rank; the row shows the best vector field (or, for an
-- entity only the lexical list found, its best lexical field).
CREATE OR REPLACE FUNCTION idxr.hybrid_search_entities(
    query_text   text,
    query_vector vector,
    path_filter  lquery DEFAULT NULL,
    entity_kind  text DEFAULT NULL,
    k            integer DEFAULT 10,
    filters      jsonb DEFAULT NULL,
    weights      jsonb DEFAULT NULL
)
RETURNS SETOF idxr.hybrid_hit
LANGUAGE sql
VOLATILE  -- as fused_search
AS $$
    SELECT * FROM idxr.fused_search(query_text, query_vector, path_filter, entity_kind, k,
                                    filters, weights, true)
$$;
