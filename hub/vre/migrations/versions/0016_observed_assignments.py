"""observed_assignments: the job each batch worker pod's observer last took note of (Kubernetes)

Revision ID: 0016
Revises: 0015

The job engine hands a job to a Dask worker pod only once the observer on its node says that it
counts the pod's reads as that job's; the observer says so through the VRE service, which keeps
it here. Nothing to fill: a running worker's next job is acknowledged anew.
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "observed_assignments",
        sa.Column("node", sa.String(253), primary_key=True),   # first: a node's words are read together
        sa.Column("pod_uid", sa.String(64), primary_key=True),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("serial", sa.String(32), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_observed_assignments_at", "observed_assignments", ["at"])


def downgrade() -> None:
    op.drop_index("ix_observed_assignments_at", "observed_assignments")
    op.drop_table("observed_assignments")
