"""Index versions per entity kind (issue 15).

Runs idxr_pg/schema/018_index_versions.sql: the registry ``idxr.index_versions``, the rows of
versions that are not active (``idxr.version_records``), the entities a building version must
re-run (``idxr.version_pending``); ``idxr.search_index.embedding`` becomes a bare ``vector``
(020_dimensions.sql, re-applied after the upgrade, creates one partial HNSW index per vector
size); every registered kind gets version 1, active, holding the rows it has.

Revision ID: 0008
Revises: 0007
"""

from alembic import op

from idxr_pg.schema import revision_sql

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(revision_sql(revision))


def downgrade() -> None:
    # Back to one vector size: refused while kinds of several sizes coexist. The retired and
    # building versions' rows go; the active rows stay in idxr.search_index.
    op.execute(
        """
        DO $$
        DECLARE
            sizes integer[];
            idx regclass;
        BEGIN
            SELECT array_agg(DISTINCT vector_dims(embedding)) INTO sizes
              FROM idxr.search_index WHERE embedding IS NOT NULL;
            IF cardinality(sizes) > 1 THEN
                RAISE EXCEPTION 'idxr: search_index holds vectors of % sizes (%); drop the other kinds'' rows before downgrading',
                    cardinality(sizes), sizes;
            END IF;
            FOR idx IN SELECT c.oid::regclass FROM pg_catalog.pg_class c
                        WHERE c.relnamespace = 'idxr'::regnamespace AND c.relkind = 'i'
                          AND c.relname ~ '^search_index_embedding_hnsw_\\d+$'
            LOOP
                EXECUTE format('DROP INDEX %s', idx);
            END LOOP;
            EXECUTE format('ALTER TABLE idxr.search_index ALTER COLUMN embedding TYPE vector(%s)',
                           coalesce(sizes[1], 384));
            CREATE INDEX IF NOT EXISTS search_index_embedding_hnsw
                ON idxr.search_index USING hnsw (embedding vector_cosine_ops);
        END
        $$;
        DROP VIEW IF EXISTS idxr.versions;
        DROP FUNCTION IF EXISTS idxr.kind_dimensions(text);
        DROP FUNCTION IF EXISTS idxr.ensure_embedding_indexes();
        DROP FUNCTION IF EXISTS idxr.embedding_sizes();
        DROP FUNCTION IF EXISTS idxr.embedding_index_sizes();
        DROP FUNCTION IF EXISTS idxr.ensure_embedding_index(integer);
        DROP FUNCTION IF EXISTS idxr.embedding_index_name(integer);
        DROP TABLE IF EXISTS idxr.version_pending;
        DROP TABLE IF EXISTS idxr.version_records;
        DROP TABLE IF EXISTS idxr.index_versions;
        """
    )
