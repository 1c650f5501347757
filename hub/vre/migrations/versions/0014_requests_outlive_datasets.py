"""requests_outlive_datasets: a decided access request outlives its dataset's retirement

Revision ID: 0014
Revises: 0013

Retiring a dataset (``vre dataset remove``) deleted every request for it with it (``ON DELETE
CASCADE``): the requester's and the decider's history vanished from the pages and ``vre
access-request list``. The request now keeps the dataset's slug as text (``dataset_slug``, filled
from ``datasets`` for existing rows) and ``dataset_id`` becomes nullable, ``ON DELETE SET NULL``.

SQLite changes a foreign key only by rebuilding the table (batch mode). Its unnamed foreign key
gets a name from ``NAMING`` for the rebuild; PostgreSQL's is the one it gave it,
``access_requests_dataset_id_fkey``. The partial unique index (one open request per pair) is
dropped before the rebuild and made again after it, with its ``WHERE``: a rebuild that reflected it
could make it a plain unique index, which would refuse a second decided request for a pair.

Projects are never deleted (they expire), so ``project_id`` keeps its foreign key.
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

OPEN = sa.text("state = 'open'")
NAMING = {"fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s"}
FK = "fk_access_requests_dataset_id_datasets"


def _old_fk() -> str:
    return FK if op.get_bind().dialect.name == "sqlite" else "access_requests_dataset_id_fkey"


def upgrade() -> None:
    op.add_column("access_requests", sa.Column("dataset_slug", sa.String(64), nullable=True))
    op.execute("UPDATE access_requests SET dataset_slug = "
               "(SELECT slug FROM datasets WHERE datasets.id = access_requests.dataset_id)")
    op.drop_index("uq_access_requests_open", table_name="access_requests")
    with op.batch_alter_table("access_requests", naming_convention=NAMING) as batch:
        batch.alter_column("dataset_slug", existing_type=sa.String(64), nullable=False)
        batch.drop_constraint(_old_fk(), type_="foreignkey")
        batch.alter_column("dataset_id", existing_type=sa.Integer(), nullable=True)
        batch.create_foreign_key(FK, "datasets", ["dataset_id"], ["id"], ondelete="SET NULL")
    op.create_index("uq_access_requests_open", "access_requests", ["project_id", "dataset_id"], unique=True,
                    sqlite_where=OPEN, postgresql_where=OPEN)


def downgrade() -> None:
    """Requests whose dataset is gone cannot point at one again: they are deleted, as the old
    cascade would have done."""
    op.execute("DELETE FROM access_requests WHERE dataset_id IS NULL")
    op.drop_index("uq_access_requests_open", table_name="access_requests")
    with op.batch_alter_table("access_requests", naming_convention=NAMING) as batch:
        batch.drop_constraint(FK, type_="foreignkey")
        batch.alter_column("dataset_id", existing_type=sa.Integer(), nullable=False)
        batch.create_foreign_key(_old_fk(), "datasets", ["dataset_id"], ["id"], ondelete="CASCADE")
        batch.drop_column("dataset_slug")
    op.create_index("uq_access_requests_open", "access_requests", ["project_id", "dataset_id"], unique=True,
                    sqlite_where=OPEN, postgresql_where=OPEN)
