"""plan_generation: a counter that every change to what a plan is built from moves on

Revision ID: 0008
Revises: 0007

The job engine caches worker plans (membership, profiles, grants, datasets, accounts) and
reads this one row per start instead of rebuilding the plan; ``vre.db`` bumps it in the same
transaction as any change to those tables, so a cached plan never outlives a change.
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "plan_generation",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
    )
    op.bulk_insert(table, [{"id": 1, "n": 0}])


def downgrade() -> None:
    op.drop_table("plan_generation")
