"""profile_node_selector: the node labels a profile's sessions must land on (Kubernetes)

Revision ID: 0012
Revises: 0011

Existing profiles get none: they land anywhere, as before.
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("profiles") as batch:
        batch.add_column(sa.Column("node_selector", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("profiles") as batch:
        batch.drop_column("node_selector")
