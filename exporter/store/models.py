"""ORM tables. ORM objects stay inside ``exporter``: pages and JSON get plain data.

Names mirror the research platform's file registry (``FileRegistry``, ``Modality`` with slug,
short label, extensions and subtypes, jobs with pending/processing/completed/failed) so the
export reads as part of the same system. Schema changes go through Alembic
(``exporter/store/migrations``); ``tests/test_models.py`` checks that the migrations match.
"""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, date, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dict[str, Any]: JSON,
        list[Any]: JSON,
        datetime: DateTime(timezone=True),
    }


def _enum(cls: type[enum.Enum]) -> Enum:
    # Stored as the plain string value (not the member name), with no database enum type, so a
    # new value needs no migration of a type on PostgreSQL.
    return Enum(
        cls,
        native_enum=False,
        length=32,
        values_callable=lambda e: [m.value for m in e],
        validate_strings=True,
    )


class Role(enum.StrEnum):
    RESEARCHER = "researcher"
    DATA_MANAGER = "data_manager"


class FileKind(enum.StrEnum):
    RAW = "raw"
    PROCESSED = "processed"


class ExportStatus(enum.StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    DELETED = "deleted"


class Project(Base):
    __tablename__ = "project"
    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    # The project's imaging tree, relative to the data root; set by the first registration.
    # Folder paths are counted from here, whichever subdirectory is registered later.
    root_path: Mapped[str | None] = mapped_column(String(1024))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # What the project's data managers allow (exporter.privacy.ProjectPolicy as JSON).
    privacy_policy: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # The secret the project's stable date shifts and UID key derive from; set on first
    # use, never shown, never exported.
    privacy_key: Mapped[str | None] = mapped_column(String(64))
    modalities: Mapped[list[Modality]] = relationship(secondary="project_modality")


class User(Base):
    __tablename__ = "user_account"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    memberships: Mapped[list[Membership]] = relationship(back_populates="user")


class Membership(Base):
    __tablename__ = "membership"
    __table_args__ = (UniqueConstraint("user_id", "project_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user_account.id", ondelete="CASCADE"))
    project_id: Mapped[int] = mapped_column(ForeignKey("project.id", ondelete="CASCADE"))
    role: Mapped[Role] = mapped_column(_enum(Role))
    user: Mapped[User] = relationship(back_populates="memberships")
    project: Mapped[Project] = relationship()


class Modality(Base):
    __tablename__ = "modality"
    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)  # the platform's slug
    name: Mapped[str] = mapped_column(String(200))
    short_label: Mapped[str] = mapped_column(String(32))
    extensions: Mapped[list[Any]] = mapped_column(default=list)
    subtypes: Mapped[list[Any]] = mapped_column(default=list)
    multi_file: Mapped[bool] = mapped_column(Boolean, default=False)  # a DICOM series
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)


class ProjectModality(Base):
    __tablename__ = "project_modality"
    project_id: Mapped[int] = mapped_column(
        ForeignKey("project.id", ondelete="CASCADE"), primary_key=True
    )
    modality_id: Mapped[int] = mapped_column(
        ForeignKey("modality.id", ondelete="CASCADE"), primary_key=True
    )


class PatientFolder(Base):
    __tablename__ = "patient_folder"
    __table_args__ = (UniqueConstraint("project_id", "path"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("project.id", ondelete="CASCADE"))
    parent_id: Mapped[int | None] = mapped_column(
        ForeignKey("patient_folder.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(255))
    # The full path from the project's root ("site-a/study-1"): selection of a folder and its
    # descendants is one indexed prefix query instead of a recursive walk.
    path: Mapped[str] = mapped_column(String(1024))


class PatientTag(Base):
    __tablename__ = "patient_tag"
    patient_id: Mapped[int] = mapped_column(
        ForeignKey("patient.id", ondelete="CASCADE"), primary_key=True
    )
    tag_id: Mapped[int] = mapped_column(ForeignKey("tag.id", ondelete="CASCADE"), primary_key=True)
    # Set for system tags such as EXPORTED: the export that put the tag there.
    export_id: Mapped[str | None] = mapped_column(
        ForeignKey("dataset_export.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    __table_args__ = (Index(None, "tag_id", "patient_id"),)


class Tag(Base):
    __tablename__ = "tag"
    __table_args__ = (UniqueConstraint("project_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("project.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    is_system: Mapped[bool] = mapped_column(Boolean, default=False)


class Patient(Base):
    __tablename__ = "patient"
    __table_args__ = (
        UniqueConstraint("project_id", "label"),
        Index(None, "folder_id", "id"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("project.id", ondelete="CASCADE"))
    folder_id: Mapped[int | None] = mapped_column(
        ForeignKey("patient_folder.id", ondelete="SET NULL")
    )
    label: Mapped[str] = mapped_column(String(255))
    # The patient's directory, relative to the data root: one label is one directory, so two
    # directories that share a name are never merged into one person.
    source_dir: Mapped[str | None] = mapped_column(String(2048))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # A patient a release moved out (its originals kept in the release's archive): gone from
    # this project's tree, selections and curation; its rows stay for the history and links.
    left_at: Mapped[datetime | None] = mapped_column()
    left_release_id: Mapped[str | None] = mapped_column(String(32))
    tags: Mapped[list[Tag]] = relationship(secondary="patient_tag", viewonly=True)


class FileRegistry(Base):
    """One stored file: the platform's file row (type, unique path, size, SHA-256, ...)."""

    __tablename__ = "file_registry"
    __table_args__ = (
        Index(None, "modality_id", "patient_id"),
        Index(None, "modality_id", "subtype", "patient_id"),
        Index(None, "patient_id", "modality_id", "kind"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patient.id", ondelete="CASCADE"))
    modality_id: Mapped[int] = mapped_column(ForeignKey("modality.id"))
    kind: Mapped[FileKind] = mapped_column(_enum(FileKind))
    subtype: Mapped[str | None] = mapped_column(String(64))
    file_type: Mapped[str] = mapped_column(String(100))  # e.g. "cbct_raw", "ios_processed_upper"
    path: Mapped[str] = mapped_column(String(2048), unique=True)  # relative to the data root
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    media_type: Mapped[str] = mapped_column(String(100))
    series_label: Mapped[str | None] = mapped_column(String(255))
    acquisition_date: Mapped[date | None] = mapped_column(Date)
    dicom_header: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    extra_metadata: Mapped[dict[str, Any]] = mapped_column(default=dict)
    processing_job_id: Mapped[str | None] = mapped_column(String(64))
    # Set when a registration no longer finds the file: left out of estimates and exports
    # until it is back (or pruned with 'register --prune').
    missing_since: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class PatientFileSummary(Base):
    """Files and bytes per (patient, modality, kind), kept in step with ``FileRegistry``.

    The live estimate sums these few rows per patient instead of scanning every file row:
    10,000 patients have ~80,000 summary rows against ~1,000,000 file rows.
    """

    __tablename__ = "patient_file_summary"
    patient_id: Mapped[int] = mapped_column(
        ForeignKey("patient.id", ondelete="CASCADE"), primary_key=True
    )
    modality_id: Mapped[int] = mapped_column(ForeignKey("modality.id"), primary_key=True)
    kind: Mapped[FileKind] = mapped_column(_enum(FileKind), primary_key=True)
    file_count: Mapped[int] = mapped_column(Integer)
    total_bytes: Mapped[int] = mapped_column(BigInteger)


class CuratedHeaderValue(Base):
    """A data manager's value for one DICOM field of one file or one series; history is kept.

    The newest row per (target, tag) without ``superseded_at`` is the one in force.
    """

    __tablename__ = "curated_header_value"
    __table_args__ = (
        Index(None, "patient_id", "series_label", "tag"),
        Index(None, "file_id", "tag"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patient.id", ondelete="CASCADE"))
    file_id: Mapped[int | None] = mapped_column(ForeignKey("file_registry.id", ondelete="CASCADE"))
    series_label: Mapped[str | None] = mapped_column(String(255))
    tag: Mapped[str] = mapped_column(String(9))  # "gggg,eeee"
    keyword: Mapped[str] = mapped_column(String(100))
    old_value: Mapped[str | None] = mapped_column(Text)
    value: Mapped[str] = mapped_column(Text)
    created_by_id: Mapped[int] = mapped_column(ForeignKey("user_account.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    superseded_at: Mapped[datetime | None] = mapped_column()
    # A row in force with ``cleared`` set takes the curation off: the target goes back to the
    # value the files carry (or a broader curated value). Kept as a row for who and when.
    cleared: Mapped[bool] = mapped_column(Boolean, default=False)


class DatasetExport(Base):
    """The record of one export; the queue only carries its id."""

    __tablename__ = "dataset_export"
    __table_args__ = (
        Index(None, "project_id", "created_at"),
        Index(None, "created_by_id", "status"),
        Index(None, "status", "heartbeat_at"),
    )
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[int] = mapped_column(ForeignKey("project.id"))
    created_by_id: Mapped[int] = mapped_column(ForeignKey("user_account.id"))
    name: Mapped[str] = mapped_column(String(200))
    notes: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[ExportStatus] = mapped_column(_enum(ExportStatus), default=ExportStatus.PENDING)
    criteria: Mapped[dict[str, Any]] = mapped_column(default=dict)
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)
    request_fingerprint: Mapped[str | None] = mapped_column(String(64), index=True)
    # The request's fingerprint on the newest export it made, else NULL: unique, so that two
    # identical requests arriving together cannot both be saved (exports.create).
    request_key: Mapped[str | None] = mapped_column(String(64), unique=True)
    patient_count: Mapped[int] = mapped_column(Integer, default=0)
    file_count: Mapped[int] = mapped_column(Integer, default=0)
    estimated_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    actual_bytes: Mapped[int | None] = mapped_column(BigInteger)
    output_dir: Mapped[str | None] = mapped_column(String(1024))
    output_paths: Mapped[list[Any]] = mapped_column(default=list)
    archive_size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    archive_sha256: Mapped[str | None] = mapped_column(String(64))
    part_count: Mapped[int] = mapped_column(Integer, default=1)
    files_done: Mapped[int] = mapped_column(Integer, default=0)
    bytes_done: Mapped[int] = mapped_column(BigInteger, default=0)
    current_item: Mapped[str | None] = mapped_column(String(255))
    heartbeat_at: Mapped[datetime | None] = mapped_column()
    job_id: Mapped[str | None] = mapped_column(String(64))
    worker_id: Mapped[str | None] = mapped_column(String(255))
    retry_count: Mapped[int] = mapped_column(Integer, default=0)
    error_message: Mapped[str | None] = mapped_column(Text)
    error_detail: Mapped[str | None] = mapped_column(Text)
    # De-identified exports: the key that maps each UID to its replacement, the same in every
    # part. Never written into an archive.
    uid_key: Mapped[str | None] = mapped_column(String(64))
    # The curated DICOM values in force when the export started: every part (and a retry
    # days later) writes the same values.
    curated_values: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # The residual-identifier check's report (files, places, kinds; never a value): every
    # part's, kept for data managers when the check failed and the archive is gone.
    privacy_report: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    completed_at: Mapped[datetime | None] = mapped_column()
    expires_at: Mapped[datetime | None] = mapped_column()
    deleted_at: Mapped[datetime | None] = mapped_column()


class ExportPart(Base):
    """One part (ZIP file) of an export; a small export has exactly one."""

    __tablename__ = "export_part"
    __table_args__ = (UniqueConstraint("export_id", "number"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    export_id: Mapped[str] = mapped_column(ForeignKey("dataset_export.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    status: Mapped[ExportStatus] = mapped_column(_enum(ExportStatus), default=ExportStatus.PENDING)
    patient_ids: Mapped[list[Any]] = mapped_column(default=list)
    # The part's plan, frozen when the export fans out: [file id, entry name, patient folder]
    # per file, so a part built later (or retried days later) holds exactly the same files.
    plan: Mapped[list[Any]] = mapped_column(default=list)
    file_count: Mapped[int] = mapped_column(Integer, default=0)
    estimated_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    path: Mapped[str | None] = mapped_column(String(1024))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))
    files_done: Mapped[int] = mapped_column(Integer, default=0)
    bytes_done: Mapped[int] = mapped_column(BigInteger, default=0)
    job_id: Mapped[str | None] = mapped_column(String(64))
    worker_id: Mapped[str | None] = mapped_column(String(255))
    retry_count: Mapped[int] = mapped_column(Integer, default=0)
    heartbeat_at: Mapped[datetime | None] = mapped_column()
    error_message: Mapped[str | None] = mapped_column(Text)
    error_detail: Mapped[str | None] = mapped_column(Text)
    privacy_report: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    started_at: Mapped[datetime | None] = mapped_column()
    completed_at: Mapped[datetime | None] = mapped_column()


class PatientPseudonym(Base):
    """A patient's stable pseudonym in its project, assigned on its first export: the
    re-identification key (data managers only). Numbers follow the order of first export,
    drawn at random within one export, never the order of labels."""

    __tablename__ = "patient_pseudonym"
    __table_args__ = (
        UniqueConstraint("patient_id", "series"),
        UniqueConstraint("project_id", "series", "number"),
        UniqueConstraint("project_id", "pseudonym"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("project.id", ondelete="CASCADE"))
    patient_id: Mapped[int] = mapped_column(ForeignKey("patient.id", ondelete="CASCADE"))
    # The privacy level whose series it belongs to: pseudonymised (patient_NNN) or
    # de-identified (case_NNN), unrelated to each other.
    series: Mapped[str] = mapped_column(String(16))
    number: Mapped[int] = mapped_column(Integer)
    pseudonym: Mapped[str] = mapped_column(String(64))
    first_export_id: Mapped[str | None] = mapped_column(
        ForeignKey("dataset_export.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ExportPatient(Base):
    """The pseudonym a patient got in one export: the re-identification key."""

    __tablename__ = "export_patient"
    __table_args__ = (
        UniqueConstraint("export_id", "patient_id"),
        UniqueConstraint("export_id", "pseudonym"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    export_id: Mapped[str] = mapped_column(ForeignKey("dataset_export.id", ondelete="CASCADE"))
    patient_id: Mapped[int] = mapped_column(ForeignKey("patient.id", ondelete="CASCADE"))
    pseudonym: Mapped[str] = mapped_column(String(64))
    # De-identified exports with modified dates: this patient's shift, the same in every file.
    date_shift_days: Mapped[int | None] = mapped_column(Integer)


class ExportDicomChange(Base):
    """One changed DICOM field of one exported file, or of every file of a series alike
    (``file_count`` above one, ``path`` the series folder), with its old value: the change
    log, for data managers. Old values are removed with the export's files, or after
    ``CHANGE_LOG_RETENTION_DAYS``. The archive's ``dicom_changes.csv`` lists new values only."""

    __tablename__ = "export_dicom_change"
    __table_args__ = (Index(None, "export_id", "part", "id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    export_id: Mapped[str] = mapped_column(ForeignKey("dataset_export.id", ondelete="CASCADE"))
    part: Mapped[int] = mapped_column(Integer, default=1)
    path: Mapped[str] = mapped_column(String(1024))  # the entry name inside the export folder
    # "(0010,0010)"; in a sequence: "(0008,1115)[0](0020,000E)"; "-" for non-DICOM files
    tag: Mapped[str] = mapped_column(String(200))
    keyword: Mapped[str] = mapped_column(String(100))
    old_value: Mapped[str | None] = mapped_column(Text)
    new_value: Mapped[str | None] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(String(16))  # curated | pseudonym | deidentified
    action: Mapped[str] = mapped_column(String(16))  # set | blanked | removed | replaced | shifted
    file_count: Mapped[int] = mapped_column(Integer, default=1)


class AuditEvent(Base):
    __tablename__ = "audit_event"
    __table_args__ = (Index(None, "export_id", "at"), Index(None, "project_id", "at"))
    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("user_account.id"))
    project_id: Mapped[int | None] = mapped_column(ForeignKey("project.id"))
    export_id: Mapped[str | None] = mapped_column(String(32))
    action: Mapped[str] = mapped_column(String(64))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class ApiToken(Base):
    """A personal API token: only its SHA-256 is stored; the token is shown once."""

    __tablename__ = "api_token"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user_account.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(12))  # shown in lists to tell tokens apart
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column()
    revoked_at: Mapped[datetime | None] = mapped_column()


class DatasetRelease(Base):
    """One release: a source project's curated patients written into a destination project
    (and, optionally, their untouched originals into an archive project). The queue only
    carries its id; the statuses are an export's."""

    __tablename__ = "dataset_release"
    __table_args__ = (
        Index(None, "source_project_id", "created_at"),
        Index(None, "status", "heartbeat_at"),
    )
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    source_project_id: Mapped[int] = mapped_column(ForeignKey("project.id"))
    destination_project_id: Mapped[int] = mapped_column(ForeignKey("project.id"))
    archive_project_id: Mapped[int | None] = mapped_column(ForeignKey("project.id"))
    created_by_id: Mapped[int] = mapped_column(ForeignKey("user_account.id"))
    name: Mapped[str] = mapped_column(String(200))
    notes: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[ExportStatus] = mapped_column(_enum(ExportStatus), default=ExportStatus.PENDING)
    criteria: Mapped[dict[str, Any]] = mapped_column(default=dict)
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)
    patient_count: Mapped[int] = mapped_column(Integer, default=0)
    file_count: Mapped[int] = mapped_column(Integer, default=0)
    estimated_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    files_done: Mapped[int] = mapped_column(Integer, default=0)
    bytes_done: Mapped[int] = mapped_column(BigInteger, default=0)
    # Outcome counts of the destination's files: created, new version, skipped, failed.
    counts: Mapped[dict[str, Any]] = mapped_column(default=dict)
    current_item: Mapped[str | None] = mapped_column(String(255))
    heartbeat_at: Mapped[datetime | None] = mapped_column()
    job_id: Mapped[str | None] = mapped_column(String(64))
    worker_id: Mapped[str | None] = mapped_column(String(255))
    error_message: Mapped[str | None] = mapped_column(Text)
    error_detail: Mapped[str | None] = mapped_column(Text)
    # The curated values in force when the release started.
    curated_values: Mapped[dict[str, Any]] = mapped_column(default=dict)
    privacy_report: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    completed_at: Mapped[datetime | None] = mapped_column()


class PatientLink(Base):
    """A source patient and the patient it became in one destination project: the
    re-identification key of a release, for the source's data managers only. The
    destination's label is the pseudonym; the destination holds nothing else of the person."""

    __tablename__ = "patient_link"
    __table_args__ = (
        UniqueConstraint("source_patient_id", "destination_project_id"),
        UniqueConstraint("destination_project_id", "number"),
        UniqueConstraint("destination_patient_id"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    source_patient_id: Mapped[int] = mapped_column(ForeignKey("patient.id", ondelete="CASCADE"))
    destination_project_id: Mapped[int] = mapped_column(
        ForeignKey("project.id", ondelete="CASCADE")
    )
    destination_patient_id: Mapped[int] = mapped_column(
        ForeignKey("patient.id", ondelete="CASCADE")
    )
    number: Mapped[int] = mapped_column(Integer)
    first_release_id: Mapped[str | None] = mapped_column(
        ForeignKey("dataset_release.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ReleasedFile(Base):
    """What one release did with one source file in its destination or archive project:
    a version written (created, new version), skipped unchanged, or failed. The rows of a
    destination file are its history: which release wrote which version."""

    __tablename__ = "released_file"
    __table_args__ = (
        Index(None, "release_id", "id"),
        Index(None, "source_file_id", "project_id"),
        Index(None, "file_id", "version"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    release_id: Mapped[str] = mapped_column(ForeignKey("dataset_release.id", ondelete="CASCADE"))
    target: Mapped[str] = mapped_column(String(16))  # destination | archive
    project_id: Mapped[int] = mapped_column(ForeignKey("project.id", ondelete="CASCADE"))
    source_file_id: Mapped[int | None] = mapped_column(
        ForeignKey("file_registry.id", ondelete="SET NULL")
    )
    source_patient_id: Mapped[int | None] = mapped_column(
        ForeignKey("patient.id", ondelete="SET NULL")
    )
    file_id: Mapped[int | None] = mapped_column(ForeignKey("file_registry.id", ondelete="SET NULL"))
    status: Mapped[str] = mapped_column(String(16))  # created | new_version | skipped | failed
    version: Mapped[int | None] = mapped_column(Integer)
    origin_path: Mapped[str] = mapped_column(String(2048))
    destination_path: Mapped[str | None] = mapped_column(String(2048))
    # Where this version's bytes are now: the registered path while it is the newest, its
    # place under .versions/ once a newer one took that path.
    stored_path: Mapped[str | None] = mapped_column(String(2048))
    series: Mapped[str | None] = mapped_column(String(255))  # the destination's series label
    source_sha256: Mapped[str | None] = mapped_column(String(64))
    sha256: Mapped[str | None] = mapped_column(String(64))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    # Source hash, curated values and options the version was written from: a release with
    # the same fingerprint skips the file.
    fingerprint: Mapped[str | None] = mapped_column(String(64))
    message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ReleaseChange(Base):
    """One changed DICOM field of one released file, or of every file of a series that one
    batch of the release wrote (``file_count`` above one, ``path`` the series folder), with
    its new value only: the old ones stay in the source."""

    __tablename__ = "release_change"
    __table_args__ = (Index(None, "release_id", "id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    release_id: Mapped[str] = mapped_column(ForeignKey("dataset_release.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(String(2048))  # the destination path
    tag: Mapped[str] = mapped_column(String(200))
    keyword: Mapped[str] = mapped_column(String(100))
    new_value: Mapped[str | None] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(16))
    file_count: Mapped[int] = mapped_column(Integer, default=1)
