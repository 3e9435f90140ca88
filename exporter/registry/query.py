"""Selection of patients and files, and the live count and size estimate.

A selection is folders and/or patients and/or tags within one project, plus modalities and
kinds. Every function takes the acting user and only ever returns patients of projects the
user belongs to. The estimate reads ``patient_file_summary`` (a few rows per patient), never
the file rows, so that it stays fast at a million files.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Select, delete, distinct, exists, func, insert, or_, select
from sqlalchemy.orm import Session

from exporter.access.accounts import Principal, ProjectAccess, accessible_projects, require_project
from exporter.errors import InvalidSelection
from exporter.schemas import (
    STUDY_TEXT_FIELDS,
    TAG_MODES,
    Estimate,
    FileEntry,
    ModalityEstimate,
    Selection,
    StudyFilter,
)
from exporter.store.models import (
    FileKind,
    FileRegistry,
    Modality,
    Patient,
    PatientFileSummary,
    PatientFolder,
    PatientLink,
    PatientTag,
    ProjectModality,
    ReleasedFile,
    Role,
    Tag,
)

EXPORTED_TAG = "EXPORTED"  # a system tag: set on a patient by each completed export


def released_tag(destination: str) -> str:
    """The system tag of patients released to ``destination`` (a project slug)."""
    return f"{EXPORTED_TAG}:{destination}"


def tag_exported(
    session: Session,
    project_id: int,
    export_id: str | None,
    patient_ids: list[int],
    name: str = EXPORTED_TAG,
) -> None:
    """Tag these patients EXPORTED, linked to the export (a queue-like workflow).

    Two exports completing at once on two workers may both create the tag or tag the same
    patient: the inserts ignore rows that already exist instead of failing the export.
    """
    _insert_ignore(session, Tag, [{"project_id": project_id, "name": name, "is_system": True}])
    tag_id = session.scalar(select(Tag.id).where(Tag.project_id == project_id, Tag.name == name))
    rows = [{"patient_id": p, "tag_id": tag_id, "export_id": export_id} for p in patient_ids]
    if rows:
        _insert_ignore(session, PatientTag, rows)


def _insert_ignore(session: Session, model: Any, rows: list[dict[str, Any]]) -> None:
    """INSERT ... ON CONFLICT DO NOTHING on PostgreSQL and SQLite alike."""
    from sqlalchemy.dialects import postgresql, sqlite

    dialect = session.get_bind().dialect.name
    table = model.metadata.tables[model.__tablename__]
    statement = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)
    session.execute(statement.on_conflict_do_nothing(), rows)


@dataclass(frozen=True)
class _Resolved:
    access: ProjectAccess
    patient_ids: Select[int]
    modality_ids: dict[int, Modality]
    chosen: set[int]
    kinds: tuple[FileKind, ...]
    # What a file must match (the study filter), on FileRegistry; empty: every file.
    files: tuple[ColumnElement[bool], ...] = ()


def study_conditions(study: StudyFilter) -> tuple[ColumnElement[bool], ...]:
    """The study filter as conditions on a file row: its acquisition date in the range, and
    its header subset's values (files without a header have none, so they are left out)."""
    found: list[ColumnElement[bool]] = []
    if study.date_from:
        found.append(FileRegistry.acquisition_date >= study.date_from)
    if study.date_to:
        found.append(FileRegistry.acquisition_date <= study.date_to)
    for name, value in study.texts().items():
        keyword, how = STUDY_TEXT_FIELDS[name]
        stored = FileRegistry.dicom_header[keyword].as_string()
        found.append(  # both sides folded by the database (SQLite folds ASCII only)
            func.upper(stored) == func.upper(value)
            if how == "is"
            else stored.icontains(value, autoescape=True)
        )
    return tuple(found)


def _enabled(session: Session, project_id: int) -> list[Modality]:
    return list(
        session.scalars(
            select(Modality)
            .join(ProjectModality, ProjectModality.modality_id == Modality.id)
            .where(ProjectModality.project_id == project_id, Modality.is_active)
            .order_by(Modality.id)
        )
    )


def modality_keys(session: Session, user: Principal, project: str) -> list[str]:
    """The keys of the modalities enabled in a project the user belongs to."""
    return [m.key for m in _enabled(session, require_project(session, user, project).project_id)]


def _resolve(session: Session, user: Principal, project: str, sel: Selection) -> _Resolved:
    access = require_project(session, user, project)
    pid = access.project_id
    if sel.tag_mode not in TAG_MODES:
        raise InvalidSelection(f"Tag mode {sel.tag_mode!r} is not known: use 'any' or 'all'")
    try:
        kinds = tuple(FileKind(k) for k in sel.kinds)
    except ValueError:
        raise InvalidSelection(
            f"Kinds {list(sel.kinds)} are not all known: use 'raw' and/or 'processed'"
        ) from None
    enabled = {m.id: m for m in _enabled(session, pid)}
    by_key = {m.key: m for m in enabled.values()}
    unknown = [k for k in sel.modalities if k not in by_key]
    if unknown:
        raise InvalidSelection(
            f"Modality {unknown[0]!r} is not enabled in project {access.slug!r}: "
            f"choose from {', '.join(sorted(by_key))}"
        )
    chosen = {by_key[k].id for k in sel.modalities}

    # A patient a release moved out is no longer in the project.
    conditions: list[ColumnElement[bool]] = [Patient.project_id == pid, Patient.left_at.is_(None)]
    scope: list[ColumnElement[bool]] = []
    folders = [f.strip("/") for f in sel.folders]
    if "" in folders:
        scope = []  # the whole project
    else:
        if folders:
            found = set(
                session.scalars(
                    select(PatientFolder.path).where(
                        PatientFolder.project_id == pid, PatientFolder.path.in_(folders)
                    )
                )
            )
            missing = [f for f in folders if f not in found]
            if missing:
                raise InvalidSelection(f"No folder {missing[0]!r} in project {access.slug!r}")
            folder_ids = select(PatientFolder.id).where(PatientFolder.project_id == pid)
            prefix = [PatientFolder.path == f for f in folders] + [
                PatientFolder.path.startswith(f + "/", autoescape=True) for f in folders
            ]
            scope.append(Patient.folder_id.in_(folder_ids.where(or_(*prefix))))
        if sel.patients:
            labels = set(sel.patients)
            found = set(
                session.scalars(
                    select(Patient.label).where(
                        Patient.project_id == pid,
                        Patient.label.in_(labels),
                        Patient.left_at.is_(None),
                    )
                )
            )
            missing = sorted(labels - found)
            if missing:
                raise InvalidSelection(f"No patient {missing[0]!r} in project {access.slug!r}")
            scope.append(Patient.label.in_(labels))
        if not scope and not sel.tags:
            raise InvalidSelection("Nothing selected: tick folders or patients, or filter by tags")
    if scope:
        conditions.append(or_(*scope))
    if sel.tags:
        found_tags = session.execute(
            select(Tag.name, Tag.id).where(Tag.project_id == pid, Tag.name.in_(sel.tags))
        ).all()
        tag_ids: dict[str, int] = dict(found_tags)
        missing = [t for t in sel.tags if t not in tag_ids]
        if missing:
            raise InvalidSelection(f"No tag {missing[0]!r} in project {access.slug!r}")
        has_tag = [
            exists().where(PatientTag.patient_id == Patient.id, PatientTag.tag_id == tag_ids[t])
            for t in sel.tags
        ]
        if sel.tag_mode == "all":
            conditions.extend(has_tag)
        else:
            conditions.append(
                exists().where(
                    PatientTag.patient_id == Patient.id,
                    PatientTag.tag_id.in_(list(tag_ids.values())),
                )
            )
    if sel.not_exported:
        conditions.append(
            ~exists().where(
                PatientTag.patient_id == Patient.id,
                PatientTag.tag_id.in_(
                    select(Tag.id).where(Tag.project_id == pid, Tag.name == EXPORTED_TAG)
                ),
            )
        )
    if sel.not_released_to:
        conditions.append(
            ~exists().where(
                PatientTag.patient_id == Patient.id,
                PatientTag.tag_id.in_(
                    select(Tag.id).where(
                        Tag.project_id == pid, Tag.name == released_tag(sel.not_released_to)
                    )
                ),
            )
        )
    files = study_conditions(sel.study)
    if files:  # the patients with at least one file that matches
        conditions.append(
            exists().where(
                FileRegistry.patient_id == Patient.id,
                FileRegistry.missing_since.is_(None),
                *files,
            )
        )
    return _Resolved(access, select(Patient.id).where(*conditions), enabled, chosen, kinds, files)


def estimate(session: Session, user: Principal, project: str, sel: Selection) -> Estimate:
    """Patient count, file count, bytes and per-modality breakdown of a selection."""
    r = _resolve(session, user, project, sel)
    patients_selected = session.scalar(select(func.count()).select_from(r.patient_ids.subquery()))
    # Without a study filter the per-patient summaries answer; with one, the files do.
    table: Any = FileRegistry if r.files else PatientFileSummary
    in_scope: tuple[ColumnElement[bool], ...] = (
        table.patient_id.in_(r.patient_ids),
        table.kind.in_(r.kinds),
    )
    files: Any
    if r.files:
        in_scope += (FileRegistry.missing_since.is_(None), *r.files)
        files, size = func.count(FileRegistry.id), func.sum(FileRegistry.size_bytes)
    else:
        files, size = func.sum(table.file_count), func.sum(table.total_bytes)
    rows = session.execute(
        select(table.modality_id, func.count(distinct(table.patient_id)), files, size)
        .where(*in_scope)
        .group_by(table.modality_id)
    )
    found = {mid: (p, int(f or 0), int(b or 0)) for mid, p, f, b in rows}
    breakdown = [
        ModalityEstimate(m.key, m.short_label, mid in r.chosen, *found[mid])
        for mid, m in r.modality_ids.items()
        if mid in found
    ]
    patient_count = 0
    if r.chosen:
        patient_count = (
            session.scalar(
                select(func.count(distinct(table.patient_id))).where(
                    *in_scope, table.modality_id.in_(r.chosen)
                )
            )
            or 0
        )
    chosen = [b for b in breakdown if b.selected]
    return Estimate(
        project=r.access.slug,
        patients_selected=patients_selected or 0,
        patient_count=patient_count,
        file_count=sum(b.files for b in chosen),
        total_bytes=sum(b.bytes for b in chosen),
        by_modality=breakdown,
        selection=sel,
        made_at=time.monotonic(),
    )


_FILE_COLUMNS = select(
    FileRegistry.id,
    FileRegistry.patient_id,
    Patient.label,
    Modality.key,
    FileRegistry.kind,
    FileRegistry.subtype,
    FileRegistry.path,
    FileRegistry.size_bytes,
    FileRegistry.sha256,
    FileRegistry.media_type,
    FileRegistry.series_label,
    FileRegistry.mtime_ns,
)


def select_files(
    session: Session, user: Principal, project: str, sel: Selection
) -> list[FileEntry]:
    """The files of a selection, ordered by patient label, modality, series and path."""
    r = _resolve(session, user, project, sel)
    if not r.chosen:
        raise InvalidSelection("Choose at least one modality")
    # Columns, not ORM objects: the header JSON and the identity map cost ~10 KB a file.
    rows = session.execute(
        _FILE_COLUMNS.join(Patient, Patient.id == FileRegistry.patient_id)
        .join(Modality, Modality.id == FileRegistry.modality_id)
        .where(
            FileRegistry.patient_id.in_(r.patient_ids),
            FileRegistry.modality_id.in_(r.chosen),
            FileRegistry.kind.in_(r.kinds),
            FileRegistry.missing_since.is_(None),
            *r.files,
        )
        .order_by(Patient.label, Modality.key, FileRegistry.series_label, FileRegistry.path)
    )
    return [
        FileEntry(fid, pid, label, key, kind.value, sub, path, size, sha, media, series, mtime)
        for fid, pid, label, key, kind, sub, path, size, sha, media, series, mtime in rows
    ]


def files_by_id(session: Session, ids: list[int]) -> dict[int, FileEntry]:
    """Registered files by id (for a frozen export plan); the caller checked permissions."""
    found: dict[int, FileEntry] = {}
    for start in range(0, len(ids), 500):
        rows = session.execute(
            _FILE_COLUMNS.join(Patient, Patient.id == FileRegistry.patient_id)
            .join(Modality, Modality.id == FileRegistry.modality_id)
            .where(
                FileRegistry.id.in_(ids[start : start + 500]),
                Patient.left_at.is_(None),  # moved out by a release: no longer the project's
            )
        )
        for fid, pid, label, key, kind, sub, path, size, sha, media, series, mtime in rows:
            found[fid] = FileEntry(
                fid, pid, label, key, kind.value, sub, path, size, sha, media, series, mtime
            )
    return found


@dataclass(frozen=True)
class PatientIdentity:
    """What the registry knows that identifies a patient (for the residual check)."""

    patient_id: int
    label: str
    source_dir: str | None
    headers: list[dict[str, Any]]  # the DICOM header subset of one file per series


def identities(session: Session, patient_ids: Iterable[int]) -> list[PatientIdentity]:
    """Labels, directories and one DICOM header subset per series (and per DICOM file
    outside a series) of these patients; the caller checked permissions. Headers repeat
    within a series: one is read per series."""
    ids = sorted(set(patient_ids))
    found: list[PatientIdentity] = []
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        firsts = (
            select(func.min(FileRegistry.id))
            .where(
                FileRegistry.patient_id.in_(chunk),
                FileRegistry.media_type == "application/dicom",
            )
            .group_by(
                FileRegistry.patient_id,
                FileRegistry.modality_id,
                func.coalesce(FileRegistry.series_label, FileRegistry.path),
            )
        )
        headers: dict[int, list[dict[str, Any]]] = {}
        for pid, header in session.execute(
            select(FileRegistry.patient_id, FileRegistry.dicom_header).where(
                FileRegistry.id.in_(firsts)
            )
        ):
            if header:
                headers.setdefault(pid, []).append(header)
        for pid, label, source_dir in session.execute(
            select(Patient.id, Patient.label, Patient.source_dir).where(Patient.id.in_(chunk))
        ):
            found.append(PatientIdentity(pid, label, source_dir, headers.get(pid, [])))
    return found


def refresh_summaries(session: Session, patient_ids: Iterable[int]) -> None:
    """Recompute ``patient_file_summary`` for these patients from their present file rows."""
    ids = sorted(set(patient_ids))
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        session.execute(delete(PatientFileSummary).where(PatientFileSummary.patient_id.in_(chunk)))
        session.execute(
            insert(PatientFileSummary).from_select(
                ["patient_id", "modality_id", "kind", "file_count", "total_bytes"],
                select(
                    FileRegistry.patient_id,
                    FileRegistry.modality_id,
                    FileRegistry.kind,
                    func.count(),
                    func.sum(FileRegistry.size_bytes),
                )
                .where(FileRegistry.patient_id.in_(chunk), FileRegistry.missing_since.is_(None))
                .group_by(FileRegistry.patient_id, FileRegistry.modality_id, FileRegistry.kind),
            )
        )


@dataclass(frozen=True)
class ProjectOverview:
    slug: str
    name: str
    role: str
    patients: int
    files: int
    bytes: int
    by_modality: list[ModalityEstimate]
    # Releases: patients released into this project (a destination), and files a release
    # copied here as originals (an archive).
    released_patients: int = 0
    archived_files: int = 0
    moved_out: int = 0  # patients releases moved out of this project (data managers only)


def overview(session: Session, user: Principal) -> list[ProjectOverview]:
    """Patients, files and bytes per modality for each project the user may see, and what
    releases brought into it."""
    result = []
    for access in accessible_projects(session, user):
        est = estimate(session, user, access.slug, Selection(folders=("",)))
        released = session.scalar(
            select(func.count())
            .select_from(PatientLink)
            .where(PatientLink.destination_project_id == access.project_id)
        )
        archived = session.scalar(
            select(func.count())
            .select_from(ReleasedFile)
            .where(
                ReleasedFile.project_id == access.project_id,
                ReleasedFile.target == "archive",
                ReleasedFile.status.in_(("created", "new_version")),
            )
        )
        moved = (
            session.scalar(
                select(func.count(Patient.id)).where(
                    Patient.project_id == access.project_id, Patient.left_at.is_not(None)
                )
            )
            if access.role is Role.DATA_MANAGER
            else 0
        )
        result.append(
            ProjectOverview(
                slug=access.slug,
                name=access.name,
                role=access.role.value,
                patients=est.patients_selected,
                files=sum(m.files for m in est.by_modality),
                bytes=sum(m.bytes for m in est.by_modality),
                by_modality=est.by_modality,
                released_patients=released or 0,
                archived_files=archived or 0,
                moved_out=moved or 0,
            )
        )
    return result


@dataclass(frozen=True)
class TreePatient:
    label: str
    folder: str  # "" at the project's root
    tags: tuple[str, ...]


@dataclass(frozen=True)
class ProjectTree:
    """What the selection page shows: folders, patients and tags of one project."""

    project: str
    folders: list[str]  # every folder path, parents before children
    patients: list[TreePatient]
    tags: list[str]
    truncated: bool


def project_tree(session: Session, user: Principal, project: str, cap: int) -> ProjectTree:
    """Folders, patients (at most ``cap``) and tags of a project the user belongs to."""
    access = require_project(session, user, project)
    pid = access.project_id
    folders = list(
        session.scalars(
            select(PatientFolder.path)
            .where(PatientFolder.project_id == pid)
            .order_by(PatientFolder.path)
        )
    )
    rows = session.execute(
        select(Patient.id, Patient.label, PatientFolder.path)
        .outerjoin(PatientFolder, PatientFolder.id == Patient.folder_id)
        .where(Patient.project_id == pid, Patient.left_at.is_(None))
        .order_by(Patient.label)
        .limit(cap + 1)
    ).all()
    tag_rows = session.execute(
        select(PatientTag.patient_id, Tag.name)
        .join(Tag, Tag.id == PatientTag.tag_id)
        .where(Tag.project_id == pid)
    ).all()
    # Where patients were released is for the project's data managers: the tag names a
    # project a researcher may not know of.
    hidden = (
        (lambda name: False)
        if access.role is Role.DATA_MANAGER
        else (lambda name: name.startswith(EXPORTED_TAG + ":"))
    )
    tags_of: dict[int, list[str]] = {}
    for patient_id, name in tag_rows:
        if not hidden(name):
            tags_of.setdefault(patient_id, []).append(name)
    patients = [
        TreePatient(label, path or "", tuple(sorted(tags_of.get(patient_id, []))))
        for patient_id, label, path in rows[:cap]
    ]
    tags = sorted(
        t for t in session.scalars(select(Tag.name).where(Tag.project_id == pid)) if not hidden(t)
    )
    return ProjectTree(access.slug, folders, patients, tags, len(rows) > cap)
