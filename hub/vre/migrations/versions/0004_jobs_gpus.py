"""batch queue (jobs, project quotas) and GPU leases

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op


revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("projects") as batch:
        batch.add_column(sa.Column("job_slots", sa.Integer(), nullable=False, server_default="2"))
        batch.add_column(sa.Column("job_cpu", sa.Float(), nullable=False, server_default="2"))
        batch.add_column(sa.Column("job_mem_mb", sa.Integer(), nullable=False, server_default="8192"))
        batch.add_column(sa.Column("job_gpus", sa.Integer(), nullable=False, server_default="1"))
    with op.batch_alter_table("profiles") as batch:
        batch.add_column(sa.Column("gpu_shared", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_table(
        "gpu_leases",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("device", sa.Integer(), nullable=False),
        sa.Column("holder", sa.String(200), nullable=False, index=True),
        sa.Column("shared", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("device", "holder"),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("project_id", sa.Integer(), sa.ForeignKey("projects.id", ondelete="CASCADE"), nullable=False,
                  index=True),
        sa.Column("account_id", sa.Integer(), sa.ForeignKey("accounts.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("profile", sa.String(32), nullable=False),
        sa.Column("cpu", sa.Float(), nullable=False),
        sa.Column("mem_mb", sa.Integer(), nullable=False),
        sa.Column("gpus", sa.Integer(), nullable=False),
        sa.Column("max_runtime_s", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False, index=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("worker", sa.String(128), nullable=False),
        sa.Column("devices", sa.String(64), nullable=False),
        sa.Column("usage", sa.JSON(), nullable=False),
        sa.Column("rerun_of", sa.Integer(), nullable=True),
        sa.Column("submitted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("jobs")
    op.drop_table("gpu_leases")
    with op.batch_alter_table("profiles") as batch:
        batch.drop_column("gpu_shared")
    with op.batch_alter_table("projects") as batch:
        for col in ("job_gpus", "job_mem_mb", "job_cpu", "job_slots"):
            batch.drop_column(col)
