"""grant_modes: a grant's mode (interactive: sessions and batch jobs; batch-only: batch jobs only)
and its own expiry

Revision ID: 0010
Revises: 0009

Existing grants become ``interactive`` without expiry: what they meant before.
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("grants") as batch:
        batch.add_column(sa.Column("mode", sa.String(16), nullable=False, server_default="interactive"))
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("grants") as batch:
        batch.drop_column("expires_at")
        batch.drop_column("mode")
