"""Privacy levels: project policy and secret, stable pseudonyms, privacy reports, a series-level
change log

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 14:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("project") as batch:
        batch.add_column(
            sa.Column("privacy_policy", sa.JSON(), nullable=False, server_default="{}")
        )
        batch.add_column(sa.Column("privacy_key", sa.String(length=64), nullable=True))
    op.create_table(
        "patient_pseudonym",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("patient_id", sa.Integer(), nullable=False),
        sa.Column("series", sa.String(length=16), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("pseudonym", sa.String(length=64), nullable=False),
        sa.Column("first_export_id", sa.String(length=32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["first_export_id"],
            ["dataset_export.id"],
            name=op.f("fk_patient_pseudonym_first_export_id_dataset_export"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["patient_id"],
            ["patient.id"],
            name=op.f("fk_patient_pseudonym_patient_id_patient"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["project.id"],
            name=op.f("fk_patient_pseudonym_project_id_project"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_patient_pseudonym")),
        sa.UniqueConstraint(
            "patient_id", "series", name=op.f("uq_patient_pseudonym_patient_id_series")
        ),
        sa.UniqueConstraint(
            "project_id",
            "series",
            "number",
            name=op.f("uq_patient_pseudonym_project_id_series_number"),
        ),
        sa.UniqueConstraint(
            "project_id", "pseudonym", name=op.f("uq_patient_pseudonym_project_id_pseudonym")
        ),
    )
    with op.batch_alter_table("dataset_export") as batch:
        batch.add_column(sa.Column("privacy_report", sa.JSON(), nullable=True))
    with op.batch_alter_table("export_part") as batch:
        batch.add_column(sa.Column("privacy_report", sa.JSON(), nullable=True))
    with op.batch_alter_table("export_dicom_change") as batch:
        batch.add_column(sa.Column("file_count", sa.Integer(), nullable=False, server_default="1"))


def downgrade() -> None:
    with op.batch_alter_table("export_dicom_change") as batch:
        batch.drop_column("file_count")
    with op.batch_alter_table("export_part") as batch:
        batch.drop_column("privacy_report")
    with op.batch_alter_table("dataset_export") as batch:
        batch.drop_column("privacy_report")
    op.drop_table("patient_pseudonym")
    with op.batch_alter_table("project") as batch:
        batch.drop_column("privacy_key")
        batch.drop_column("privacy_policy")
