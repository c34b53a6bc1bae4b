"""File loads (issue 17): ``idxr.loads``, ``idxr.load_partitions``, ``idxr.load_keys``.

Runs idxr_pg/schema/014_loads.sql: the manifest of `idxr-pg load`, the partitions each load
committed, and the keys a snapshot load (``--delete-missing``) has read.

Revision ID: 0005
Revises: 0004
"""

from alembic import op

from idxr_pg.schema import revision_sql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(revision_sql(revision))


def downgrade() -> None:
    op.execute(
        """
        DROP TABLE IF EXISTS idxr.load_keys;
        DROP TABLE IF EXISTS idxr.load_partitions;
        DROP TABLE IF EXISTS idxr.loads;
        """
    )
