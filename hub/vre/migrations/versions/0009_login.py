"""login: accounts made by OIDC login are bound to the provider's identity (issuer and sub); local
accounts' second factor (TOTP secret, last accepted step, recovery code digests)

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(sa.Column("oidc_subject", sa.String(512), nullable=True))
        batch.create_unique_constraint("uq_accounts_oidc_subject", ["oidc_subject"])
        batch.add_column(sa.Column("totp_secret", sa.String(64), nullable=True))
        batch.add_column(sa.Column("totp_last_step", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("recovery_codes", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("accounts") as batch:
        for column in ("recovery_codes", "totp_last_step", "totp_secret"):
            batch.drop_column(column)
        batch.drop_constraint("uq_accounts_oidc_subject", type_="unique")
        batch.drop_column("oidc_subject")
