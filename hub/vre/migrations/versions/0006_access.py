"""the access layer: projects.downloads and egress_cap, egress_daily counters

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("projects") as batch:
        batch.add_column(sa.Column("downloads", sa.String(16), nullable=False, server_default="none"))
        batch.add_column(sa.Column("egress_cap", sa.BigInteger(), nullable=False, server_default="0"))
    op.create_table(
        "egress_daily",
        sa.Column("day", sa.String(10), primary_key=True),
        sa.Column("session", sa.String(128), primary_key=True),
        sa.Column("user", sa.String(128), nullable=False, index=True),
        sa.Column("project", sa.String(48), nullable=False, index=True),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("classes", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("egress_daily")
    with op.batch_alter_table("projects") as batch:
        batch.drop_column("egress_cap")
        batch.drop_column("downloads")
