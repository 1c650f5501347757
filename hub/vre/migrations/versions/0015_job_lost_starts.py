"""job_lost_starts: how many of a job's starts were lost (not its own doing), apart from its starts

Revision ID: 0015
Revises: 0014

A lost start is re-queued once. Counting that by ``attempts`` spent the retry on starts that
were not lost: a Kubernetes Job made again because the job's datasets changed while it waited
in the cluster's queue. Existing jobs keep what the old rule counted: every start before the
running one (``attempts - 1``), every start of a queued one (each ended in a re-queue), but the
last of one that waits because its datasets changed (that start was not lost).
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("lost_starts", sa.Integer(), nullable=False, server_default="0"))
    # a queued job made again for its datasets (Engine.kube_plan_changed) lost nothing that time
    op.execute("UPDATE jobs SET lost_starts = CASE WHEN state <> 'queued' THEN attempts - 1 "
               "WHEN reason LIKE 'waiting: its datasets changed%' THEN attempts - 1 ELSE attempts END "
               "WHERE attempts > 0")


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("lost_starts")
