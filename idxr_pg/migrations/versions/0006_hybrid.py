"""Lexical and hybrid search, the stale flag in search results (issues 16 and 18).

Runs idxr_pg/schema/015_hybrid.sql: adds ``idxr.entity_kinds.text_search_config`` and
``composite``, and drops
an ``idxr.search_hit`` without the ``stale`` column together with the functions returning it
(040_search.sql, re-applied after the upgrade, creates them again with ``stale``).

Revision ID: 0006
Revises: 0005
"""

from alembic import op

from idxr_pg.schema import revision_sql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(revision_sql(revision))


def downgrade() -> None:
    # Functions are re-applied at head only: drop what reads the new column or returns the new
    # types here; the previous head's 040_search.sql creates search_hit again without `stale`.
    op.execute(
        """
        DROP TYPE IF EXISTS idxr.hybrid_hit CASCADE;
        DROP TYPE IF EXISTS idxr.search_hit CASCADE;
        DROP FUNCTION IF EXISTS idxr.set_text_search_config(text, regconfig);
        DROP FUNCTION IF EXISTS idxr.is_stale(text, text);
        DO $$
        DECLARE idx regclass;
        BEGIN
            FOR idx IN SELECT c.oid::regclass FROM pg_catalog.pg_class c
                        WHERE c.relnamespace = 'idxr'::regnamespace AND c.relkind = 'i'
                          AND c.relname LIKE 'search\\_index\\_text\\_%'
            LOOP
                EXECUTE format('DROP INDEX %s', idx);
            END LOOP;
        END
        $$;
        ALTER TABLE idxr.entity_kinds DROP COLUMN IF EXISTS text_search_config;
        ALTER TABLE idxr.entity_kinds DROP COLUMN IF EXISTS composite;
        """
    )
