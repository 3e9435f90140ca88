"""Releases: a release record, the source-destination patient link, released file versions
and their DICOM changes

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 18:30:12.728007
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "dataset_release",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("source_project_id", sa.Integer(), nullable=False),
        sa.Column("destination_project_id", sa.Integer(), nullable=False),
        sa.Column("archive_project_id", sa.Integer(), nullable=True),
        sa.Column("created_by_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("notes", sa.Text(), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "pending",
                "processing",
                "completed",
                "failed",
                "cancelled",
                "expired",
                "deleted",
                name="exportstatus",
                native_enum=False,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("criteria", sa.JSON(), nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("patient_count", sa.Integer(), nullable=False),
        sa.Column("file_count", sa.Integer(), nullable=False),
        sa.Column("estimated_bytes", sa.BigInteger(), nullable=False),
        sa.Column("files_done", sa.Integer(), nullable=False),
        sa.Column("bytes_done", sa.BigInteger(), nullable=False),
        sa.Column("counts", sa.JSON(), nullable=False),
        sa.Column("current_item", sa.String(length=255), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("job_id", sa.String(length=64), nullable=True),
        sa.Column("worker_id", sa.String(length=255), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("error_detail", sa.Text(), nullable=True),
        sa.Column("curated_values", sa.JSON(), nullable=False),
        sa.Column("privacy_report", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["archive_project_id"],
            ["project.id"],
            name=op.f("fk_dataset_release_archive_project_id_project"),
        ),
        sa.ForeignKeyConstraint(
            ["created_by_id"],
            ["user_account.id"],
            name=op.f("fk_dataset_release_created_by_id_user_account"),
        ),
        sa.ForeignKeyConstraint(
            ["destination_project_id"],
            ["project.id"],
            name=op.f("fk_dataset_release_destination_project_id_project"),
        ),
        sa.ForeignKeyConstraint(
            ["source_project_id"],
            ["project.id"],
            name=op.f("fk_dataset_release_source_project_id_project"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dataset_release")),
    )
    with op.batch_alter_table("dataset_release", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_dataset_release_source_project_id_created_at"),
            ["source_project_id", "created_at"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_dataset_release_status_heartbeat_at"),
            ["status", "heartbeat_at"],
            unique=False,
        )

    op.create_table(
        "release_change",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("release_id", sa.String(length=32), nullable=False),
        sa.Column("path", sa.String(length=2048), nullable=False),
        sa.Column("tag", sa.String(length=200), nullable=False),
        sa.Column("keyword", sa.String(length=100), nullable=False),
        sa.Column("new_value", sa.Text(), nullable=True),
        sa.Column("reason", sa.String(length=16), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("file_count", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["release_id"],
            ["dataset_release.id"],
            name=op.f("fk_release_change_release_id_dataset_release"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_release_change")),
    )
    with op.batch_alter_table("release_change", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_release_change_release_id_id"), ["release_id", "id"], unique=False
        )

    op.create_table(
        "patient_link",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source_patient_id", sa.Integer(), nullable=False),
        sa.Column("destination_project_id", sa.Integer(), nullable=False),
        sa.Column("destination_patient_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("first_release_id", sa.String(length=32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["destination_patient_id"],
            ["patient.id"],
            name=op.f("fk_patient_link_destination_patient_id_patient"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["destination_project_id"],
            ["project.id"],
            name=op.f("fk_patient_link_destination_project_id_project"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["first_release_id"],
            ["dataset_release.id"],
            name=op.f("fk_patient_link_first_release_id_dataset_release"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["source_patient_id"],
            ["patient.id"],
            name=op.f("fk_patient_link_source_patient_id_patient"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_patient_link")),
        sa.UniqueConstraint(
            "destination_patient_id", name=op.f("uq_patient_link_destination_patient_id")
        ),
        sa.UniqueConstraint(
            "destination_project_id",
            "number",
            name=op.f("uq_patient_link_destination_project_id_number"),
        ),
        sa.UniqueConstraint(
            "source_patient_id",
            "destination_project_id",
            name=op.f("uq_patient_link_source_patient_id_destination_project_id"),
        ),
    )
    op.create_table(
        "released_file",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("release_id", sa.String(length=32), nullable=False),
        sa.Column("target", sa.String(length=16), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("source_file_id", sa.Integer(), nullable=True),
        sa.Column("source_patient_id", sa.Integer(), nullable=True),
        sa.Column("file_id", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("origin_path", sa.String(length=2048), nullable=False),
        sa.Column("destination_path", sa.String(length=2048), nullable=True),
        sa.Column("stored_path", sa.String(length=2048), nullable=True),
        sa.Column("series", sa.String(length=255), nullable=True),
        sa.Column("source_sha256", sa.String(length=64), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("fingerprint", sa.String(length=64), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["file_id"],
            ["file_registry.id"],
            name=op.f("fk_released_file_file_id_file_registry"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["project.id"],
            name=op.f("fk_released_file_project_id_project"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["release_id"],
            ["dataset_release.id"],
            name=op.f("fk_released_file_release_id_dataset_release"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["source_file_id"],
            ["file_registry.id"],
            name=op.f("fk_released_file_source_file_id_file_registry"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["source_patient_id"],
            ["patient.id"],
            name=op.f("fk_released_file_source_patient_id_patient"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_released_file")),
    )
    with op.batch_alter_table("released_file", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_released_file_file_id_version"), ["file_id", "version"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_released_file_release_id_id"), ["release_id", "id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_released_file_source_file_id_project_id"),
            ["source_file_id", "project_id"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("released_file", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_released_file_source_file_id_project_id"))
        batch_op.drop_index(batch_op.f("ix_released_file_release_id_id"))
        batch_op.drop_index(batch_op.f("ix_released_file_file_id_version"))

    op.drop_table("released_file")
    op.drop_table("patient_link")
    with op.batch_alter_table("release_change", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_release_change_release_id_id"))

    op.drop_table("release_change")
    with op.batch_alter_table("dataset_release", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_dataset_release_status_heartbeat_at"))
        batch_op.drop_index(batch_op.f("ix_dataset_release_source_project_id_created_at"))

    op.drop_table("dataset_release")
