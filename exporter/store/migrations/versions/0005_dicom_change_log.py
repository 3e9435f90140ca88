"""DICOM change log, curation clearing, de-identification keys

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22 13:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "export_dicom_change",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("export_id", sa.String(length=32), nullable=False),
        sa.Column("part", sa.Integer(), nullable=False),
        sa.Column("path", sa.String(length=1024), nullable=False),
        sa.Column("tag", sa.String(length=200), nullable=False),
        sa.Column("keyword", sa.String(length=100), nullable=False),
        sa.Column("old_value", sa.Text(), nullable=True),
        sa.Column("new_value", sa.Text(), nullable=True),
        sa.Column("reason", sa.String(length=16), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(
            ["export_id"],
            ["dataset_export.id"],
            name=op.f("fk_export_dicom_change_export_id_dataset_export"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_export_dicom_change")),
    )
    op.create_index(
        op.f("ix_export_dicom_change_export_id_part_id"),
        "export_dicom_change",
        ["export_id", "part", "id"],
        unique=False,
    )
    with op.batch_alter_table("curated_header_value") as batch:
        batch.add_column(
            sa.Column("cleared", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table("dataset_export") as batch:
        batch.add_column(sa.Column("uid_key", sa.String(length=64), nullable=True))
        batch.add_column(
            sa.Column("curated_values", sa.JSON(), nullable=False, server_default="{}")
        )
    with op.batch_alter_table("export_patient") as batch:
        batch.add_column(sa.Column("date_shift_days", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("export_patient") as batch:
        batch.drop_column("date_shift_days")
    with op.batch_alter_table("dataset_export") as batch:
        batch.drop_column("curated_values")
        batch.drop_column("uid_key")
    with op.batch_alter_table("curated_header_value") as batch:
        batch.drop_column("cleared")
    op.drop_index(
        op.f("ix_export_dicom_change_export_id_part_id"), table_name="export_dicom_change"
    )
    op.drop_table("export_dicom_change")
