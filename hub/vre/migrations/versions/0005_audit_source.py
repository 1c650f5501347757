"""audit_events.source: who reported each event (audit schema v2)

Revision ID: 0005
Revises: 0004

Records sealed before this revision keep ``source`` NULL, meaning "recorded before provenance":
their sealed text (schema v1) names no source, and guessing one ("hub") would put a claim in the
column that the record does not make (verification compares the two, so it would also fail).
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit_events") as batch:
        batch.add_column(sa.Column("source", sa.String(length=16), nullable=True))
    op.create_index("ix_audit_events_source", "audit_events", ["source"])


def downgrade() -> None:
    op.drop_index("ix_audit_events_source", table_name="audit_events")
    with op.batch_alter_table("audit_events") as batch:
        batch.drop_column("source")
