"""job_lanes: a batch job's lane (open: the project's shared workers; held: batch-only data, outputs held)

Revision ID: 0013
Revises: 0012

Existing jobs ran on the shared workers: they are ``open``.
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("lane", sa.String(8), nullable=False, server_default="open"))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("lane")
