"""Entity model shapes (issue 15): ``idxr.entity_kinds.schema_shape`` and ``schema_change``.

Runs idxr_pg/schema/013_schema_changes.sql: the shape of the model the index was built with,
and what differs in the model last registered (`idxr-pg status`, `plan`, `reindex`).

Revision ID: 0004
Revises: 0003
"""

from alembic import op

from idxr_pg.schema import revision_sql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(revision_sql(revision))


def downgrade() -> None:
    # idxr.status reads the columns; views are re-applied at head only, so drop it here.
    op.execute(
        """
        DROP VIEW IF EXISTS idxr.status;
        ALTER TABLE idxr.entity_kinds DROP COLUMN IF EXISTS schema_change;
        ALTER TABLE idxr.entity_kinds DROP COLUMN IF EXISTS schema_shape;
        """
    )
