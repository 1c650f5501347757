"""audit trail: hash-chained events and signed checkpoints

Revision ID: 0002
Revises: 0001

Hand-written to match ``vre.audit.store.audit_events`` / ``audit_checkpoints`` (a unit test
compares the migrated database with those Table definitions). ``seq`` is supplied by the writer
(no autoincrement, no sequence): on SQLite it is the INTEGER PRIMARY KEY (the rowid), on
PostgreSQL a BIGINT. Times are canonical UTC strings (see the store's docstring for why).
"""

import sqlalchemy as sa
from alembic import op


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
INDEXED = ("time", "actor", "action", "outcome", "project", "dataset", "session")


def upgrade() -> None:
    op.create_table(
        'audit_events',
        sa.Column('seq', SEQ, autoincrement=False, nullable=False),
        sa.Column('event_id', sa.String(length=64), nullable=False),
        sa.Column('time', sa.String(length=27), nullable=False),
        sa.Column('received_at', sa.String(length=27), nullable=False),
        sa.Column('actor', sa.String(length=255), nullable=False),
        sa.Column('action', sa.String(length=64), nullable=False),
        sa.Column('outcome', sa.String(length=8), nullable=False),
        sa.Column('project', sa.String(length=255), nullable=True),
        sa.Column('dataset', sa.String(length=255), nullable=True),
        sa.Column('session', sa.String(length=255), nullable=True),
        sa.Column('record', sa.Text(), nullable=False),
        sa.Column('prev_hash', sa.String(length=64), nullable=False),
        sa.Column('hash', sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint('seq'),
        sa.UniqueConstraint('event_id', name='uq_audit_events_event_id'),
    )
    for column in INDEXED:
        op.create_index(f'ix_audit_events_{column}', 'audit_events', [column])
    op.create_table(
        'audit_checkpoints',
        sa.Column('seq', SEQ, autoincrement=False, nullable=False),
        sa.Column('hash', sa.String(length=64), nullable=False),
        sa.Column('time', sa.String(length=27), nullable=False),
        sa.Column('key_id', sa.String(length=16), nullable=False),
        sa.Column('signature', sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint('seq'),
    )


def downgrade() -> None:
    op.drop_table('audit_checkpoints')
    for column in INDEXED:
        op.drop_index(f'ix_audit_events_{column}', table_name='audit_events')
    op.drop_table('audit_events')
