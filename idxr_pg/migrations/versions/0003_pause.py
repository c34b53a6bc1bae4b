"""Pausing a kind (issue 18): ``idxr.entity_kinds.paused_at``.

Runs idxr_pg/schema/012_pause.sql: the column that `idxr-pg pause KIND` sets and
`idxr-pg resume KIND` clears (NULL: not paused).

Revision ID: 0003
Revises: 0002
"""

from alembic import op

from idxr_pg.schema import revision_sql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(revision_sql(revision))


def downgrade() -> None:
    # idxr.status reads the column; views are re-applied at head only, so drop it here.
    op.execute(
        """
        DROP VIEW IF EXISTS idxr.status;
        ALTER TABLE idxr.entity_kinds DROP COLUMN IF EXISTS paused_at;
        """
    )
