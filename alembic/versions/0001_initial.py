"""Initial idxr schema: runs the SQL files listed in idxr_pg.schema.SCHEMA_FILES.

Revision ID: 0001
Revises:
"""

from alembic import op

from idxr_pg.schema import (
    SCHEMA,
    SCHEMA_FILES,
    read_schema_file,
    uninstall_script,
    version_stamp_sql,
)

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    for name in SCHEMA_FILES:
        op.execute(read_schema_file(name))


def downgrade() -> None:
    # Drop every idxr object (the capture triggers go with their trigger functions), then
    # give Alembic back the version row it is about to delete; env.py drops the emptied schema.
    op.execute(uninstall_script())
    op.execute(f"CREATE SCHEMA {SCHEMA}")
    op.execute(version_stamp_sql(revision))
