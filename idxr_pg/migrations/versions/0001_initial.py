"""Initial idxr schema: the tables (idxr_pg/schema files run by revision 0001).

Functions and views are not revisioned: env.py re-applies them after every upgrade.

Revision ID: 0001
Revises:
"""

from alembic import op

from idxr_pg.schema import SCHEMA, revision_sql, uninstall_script, version_stamp_sql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(revision_sql(revision))


def downgrade() -> None:
    # Drop every idxr object (the capture triggers go with their trigger functions), then
    # give Alembic back the version row it is about to delete; env.py drops the emptied schema.
    op.execute(uninstall_script())
    op.execute(f"CREATE SCHEMA {SCHEMA}")
    op.execute(version_stamp_sql(revision))
