"""Duplicate suppression held by the database: a unique request key on the newest export of
each request

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 19:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Existing exports get no key: they are older than any double submit could be.
    with op.batch_alter_table("dataset_export") as batch:
        batch.add_column(sa.Column("request_key", sa.String(length=64), nullable=True))
        batch.create_unique_constraint(batch.f("uq_dataset_export_request_key"), ["request_key"])


def downgrade() -> None:
    with op.batch_alter_table("dataset_export") as batch:
        batch.drop_constraint(batch.f("uq_dataset_export_request_key"), type_="unique")
        batch.drop_column("request_key")
