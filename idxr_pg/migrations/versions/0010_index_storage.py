"""How each vector size's HNSW index is stored and built: halfvec, m, ef_construction (issue 14).

Runs idxr_pg/schema/019b_index_storage.sql: ``idxr.embedding_index_settings`` (one row per
vector size built otherwise than the default vector / m 16 / ef_construction 64). Existing
indexes stay as they are: they are the default.

Revision ID: 0010
Revises: 0009
"""

from alembic import op

from idxr_pg.schema import revision_sql

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(revision_sql(revision))


def downgrade() -> None:
    # The previous head's 020_dimensions.sql creates vector indexes only: a halfvec index goes
    # (the next `ensure_embedding_indexes` builds the vector one). Functions are re-applied at
    # head only: the ones this revision's files added go with the table; the previous head's
    # files create their own versions of the others again (as 0009's downgrade does).
    op.execute(
        """
        DO $$
        DECLARE
            idx record;
        BEGIN
            FOR idx IN
                SELECT c.relname FROM pg_catalog.pg_class c
                  JOIN pg_catalog.pg_index i ON i.indexrelid = c.oid
                 WHERE i.indrelid = 'idxr.search_index'::regclass
                   AND c.relname ~ '^search_index_embedding_hnsw_\\d+(_next)?$'
                   AND pg_catalog.pg_get_indexdef(c.oid) LIKE '%halfvec%'
            LOOP
                EXECUTE format('DROP INDEX idxr.%I', idx.relname);
            END LOOP;
        END
        $$;
        DROP FUNCTION IF EXISTS idxr.embedding_index_storage(integer);
        DROP FUNCTION IF EXISTS idxr.embedding_index_state(integer);
        DROP FUNCTION IF EXISTS idxr.embedding_index_ddl(integer, text, boolean);
        DROP FUNCTION IF EXISTS idxr.set_embedding_index_options(integer, text, integer, integer);
        DROP FUNCTION IF EXISTS idxr.embedding_index_options(integer);
        DROP FUNCTION IF EXISTS idxr.embedding_index_next_name(integer);
        DROP TABLE IF EXISTS idxr.embedding_index_settings CASCADE;
        """
    )
