"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
Create Date: ${create_date}
"""

from alembic import op

from idxr_pg.schema import revision_sql

revision = ${repr(up_revision)}
down_revision = ${repr(down_revision)}
branch_labels = ${repr(branch_labels)}
depends_on = ${repr(depends_on)}


def upgrade() -> None:
    # Table changes only: add a file to idxr_pg.schema.SCHEMA_FILES with revision=<this id>.
    # Functions and views are re-applied by env.py after every upgrade.
    ${upgrades if upgrades else "op.execute(revision_sql(revision))"}


def downgrade() -> None:
    ${downgrades if downgrades else "pass"}
