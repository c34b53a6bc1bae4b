"""Long fields split into chunks, each with its own vector (issue 16).

Runs idxr_pg/schema/019_chunks.sql: ``idxr.search_index`` gains ``chunk`` (in the primary
key), ``chunk_start`` and ``chunk_end``; existing rows become chunk 0 of their field. The
search result types ``idxr.search_hit`` and ``idxr.hybrid_hit`` without ``chunk`` are dropped
with the functions returning them (040_search.sql and 045_hybrid.sql, re-applied after the
upgrade, create them again with ``chunk`` and ``chunk_text``).

Revision ID: 0009
Revises: 0008
"""

from alembic import op

from idxr_pg.schema import revision_sql

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(revision_sql(revision))


def downgrade() -> None:
    # Functions are re-applied at head only: drop what returns the new types or reads the new
    # columns; the previous head's files create them again. Each field keeps its row (chunk 0,
    # its first chunk's vector); the other chunk rows go.
    op.execute(
        """
        DROP VIEW IF EXISTS idxr.search_fields;
        DROP TYPE IF EXISTS idxr.hybrid_hit CASCADE;
        DROP TYPE IF EXISTS idxr.search_hit CASCADE;
        DELETE FROM idxr.search_index WHERE chunk > 0;
        DELETE FROM idxr.version_records WHERE chunk > 0;
        ALTER TABLE idxr.version_records DROP CONSTRAINT IF EXISTS version_records_pkey;
        ALTER TABLE idxr.version_records ADD CONSTRAINT version_records_pkey
            PRIMARY KEY (entity_kind, version, entity_id, path);
        ALTER TABLE idxr.version_records DROP COLUMN IF EXISTS chunk;
        ALTER TABLE idxr.version_records DROP COLUMN IF EXISTS chunk_start;
        ALTER TABLE idxr.version_records DROP COLUMN IF EXISTS chunk_end;
        ALTER TABLE idxr.search_index DROP CONSTRAINT IF EXISTS search_index_chunk_range;
        ALTER TABLE idxr.search_index DROP CONSTRAINT IF EXISTS search_index_pkey;
        ALTER TABLE idxr.search_index
            ADD CONSTRAINT search_index_pkey PRIMARY KEY (entity_kind, entity_id, path);
        DROP INDEX IF EXISTS idxr.search_index_chunks;
        ALTER TABLE idxr.search_index DROP COLUMN IF EXISTS chunk;
        ALTER TABLE idxr.search_index DROP COLUMN IF EXISTS chunk_start;
        ALTER TABLE idxr.search_index DROP COLUMN IF EXISTS chunk_end;
        CREATE OR REPLACE FUNCTION idxr.index_counts()
        RETURNS TABLE (entity_kind text, indexed_entities bigint, indexed_records bigint,
                       embedded_records bigint)
        LANGUAGE sql
        STABLE
        AS $$
            SELECT entity_kind, count(DISTINCT entity_id), count(*), count(embedding)
              FROM idxr.search_index
             GROUP BY entity_kind
        $$;
        """
    )
