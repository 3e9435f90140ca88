"""The release record: who may release what where, every change of its status, the
source-destination patient link, the destination's file history, and the release log.

A release is made by a data manager of the source project into a destination project they
also manage (and optionally an archive project they manage). Only the source's data managers
see a release, its log and the patient link; the destination's members see released patients
under their pseudonyms and nothing of the source.
"""

from __future__ import annotations

import csv
import io
import re
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from exporter.access.accounts import Principal, ProjectAccess, accessible_projects, require_project
from exporter.access.audit import record
from exporter.archive.layout import pseudonym
from exporter.errors import (
    InvalidOption,
    InvalidSelection,
    InvalidState,
    NotFound,
    PermissionDenied,
)
from exporter.records.exports import Room, clean_name, policy_of, text_problem
from exporter.registry.query import select_files
from exporter.schemas import (
    ExportOptions,
    FileEntry,
    FileVersion,
    ReleaseRequest,
    ReleaseView,
)
from exporter.store import db
from exporter.store.models import (
    DatasetRelease,
    ExportStatus,
    FileRegistry,
    Patient,
    PatientLink,
    Project,
    ReleaseChange,
    ReleasedFile,
    Role,
    User,
    new_id,
)

PREFIX = "subject"  # a destination's patient labels: subject_001, subject_002, ...
ACTIVE = (ExportStatus.PENDING, ExportStatus.PROCESSING)
_ID = re.compile(r"[0-9a-f]{32}")
_LABEL = re.compile(rf"{PREFIX}_\d+")
WRITTEN = ("created", "new_version")  # statuses of a row that wrote a version


def default_name(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).strftime("release_%Y-%m-%d_%H%M%S")


@dataclass(frozen=True)
class Planned:
    """What ``create`` checked: the projects, the files and the options."""

    source: ProjectAccess
    destination: ProjectAccess
    archive: ProjectAccess | None
    files: list[FileEntry]
    options: ExportOptions


def _managed(session: Session, user: Principal, slug: str, what: str) -> ProjectAccess:
    try:
        return require_project(session, user, slug, Role.DATA_MANAGER)
    except PermissionDenied:
        verb = "release from" if what == "source" else "release into"
        raise PermissionDenied(
            f"Only data managers of the {what} project {slug!r} may {verb} it; ask one of "
            "them to add you as a data manager"
        ) from None


def plan(session: Session, user: Principal, source: str, request: ReleaseRequest) -> Planned:
    """Check a release request against the projects and the registry (nothing is saved):
    the user manages the source, the destination and the archive, which are three projects;
    the selection has files; the destination has no patient whose label a release would
    take; the privacy level is one a release may have."""
    for label, value, multiline in (
        ("name", request.name, False),
        ("notes", request.notes, True),
    ):
        problem = text_problem(value, multiline)
        if problem:
            raise InvalidOption(f"The {label} {problem}")
    src = _managed(session, user, source, "source")
    dest = _managed(session, user, request.destination, "destination")
    arch = _managed(session, user, request.archive, "archive") if request.archive else None
    if dest.project_id == src.project_id:
        raise InvalidOption(
            "A release goes into another project: choose a destination other than "
            f"{src.slug!r} (create one with 'python -m exporter project add')"
        )
    if arch is not None and arch.project_id in (src.project_id, dest.project_id):
        raise InvalidOption(
            "The archive must be a third project, apart from the source and the destination"
        )
    if request.move_out and arch is None:
        raise InvalidOption(
            "Moving patients out of the project needs an archive for their originals: "
            "choose an archive project, or release without moving them out"
        )
    options = request.options(policy_of(session, src.project_id))
    if not request.selection.modalities:
        raise InvalidSelection("Choose at least one modality")
    files = select_files(session, user, src.slug, request.selection)
    if not files:
        raise InvalidSelection(
            "The selection has no files: choose other patients, modalities or kinds"
        )
    if arch is not None:
        kept = archive_collisions(session, src, arch, {f.patient_label for f in files})
        if kept:
            raise InvalidOption(
                f"The archive {arch.slug!r} already keeps other patients labelled "
                f"{', '.join(kept[:3])} (from another project): release the originals of "
                "each source project into an archive of its own"
            )
    taken = collisions(session, dest.project_id)
    if taken:
        raise InvalidOption(
            f"Project {dest.slug!r} has patients no release created whose labels a release "
            f"would use ({', '.join(taken[:3])}): release into a project of its own"
        )
    return Planned(src, dest, arch, files, options)


def archive_collisions(
    session: Session, source: ProjectAccess, archive: ProjectAccess, labels: set[str]
) -> list[str]:
    """Labels of the selection that the archive keeps for another source project (an
    archive's patients keep their labels, which are unique in it)."""
    root = session.scalar(select(Project.root_path).where(Project.id == archive.project_id))
    mine = "/".join(p for p in ((archive.slug if root is None else root), source.slug) if p) + "/"
    rows = session.execute(
        select(Patient.label, Patient.source_dir).where(
            Patient.project_id == archive.project_id, Patient.label.in_(sorted(labels))
        )
    )
    return sorted(label for label, kept in rows if not (kept or "").startswith(mine))


def collisions(session: Session, project_id: int) -> list[str]:
    """Labels in the destination that look like a release's but no link holds."""
    linked = select(PatientLink.destination_patient_id).where(
        PatientLink.destination_project_id == project_id
    )
    labels = session.scalars(
        select(Patient.label)
        .where(Patient.project_id == project_id, Patient.id.not_in(linked))
        .order_by(Patient.label)
    )
    return [label for label in labels if _LABEL.fullmatch(label)]


def create(
    session: Session,
    user: Principal,
    source: str,
    request: ReleaseRequest,
    data_root: Path,
    room: Room | None = None,
) -> DatasetRelease:
    """Save a pending release after :func:`plan`'s checks, the destination's and archive's
    trees, and the data root's room for the files it may write."""
    checked = plan(session, user, source, request)
    for target in (checked.destination, checked.archive):
        if target is not None:
            project_root(session, target.project_id, data_root)
    size = sum(f.size for f in checked.files)
    needed = size * (2 if checked.archive else 1)
    refusal = room(needed) if room is not None else None
    if refusal is not None:
        raise refusal.error()
    row = DatasetRelease(
        id=new_id(),
        source_project_id=checked.source.project_id,
        destination_project_id=checked.destination.project_id,
        archive_project_id=checked.archive.project_id if checked.archive else None,
        created_by_id=user.id,
        name=clean_name(request.name) if request.name.strip() else default_name(),
        notes=request.notes.strip(),
        status=ExportStatus.PENDING,
        criteria=request.selection.as_dict(),
        options={
            **checked.options.to_json(),
            "skip_changed": request.skip_changed,
            "move_out": request.move_out,
        },
        patient_count=len({f.patient_id for f in checked.files}),
        file_count=len(checked.files),
        estimated_bytes=needed,
        counts={},
    )
    shared = [p for p in (row.destination_project_id, row.archive_project_id) if p]
    session.execute(update(Project).where(Project.id.in_(shared)).values(name=Project.name))
    other = busy(session, row)
    if other is not None:
        raise InvalidState(
            f"Release {other!r} into the same destination or archive is pending or running: "
            "wait for it to end (releases into one project take turns), then release again"
        )
    session.add(row)
    session.flush()
    record(
        session,
        "release",
        user.id,
        checked.source.project_id,
        None,
        {
            "release": row.id,
            "destination": checked.destination.slug,
            "archive": checked.archive.slug if checked.archive else None,
            "privacy": checked.options.privacy,
            "patients": row.patient_count,
            "move_out": request.move_out,
        },
    )
    return row


@dataclass(frozen=True)
class Leaving:
    """A released patient whose every live file has its original in the archive: where
    the patient's folder is, and each source file with its SHA-256 and archive copy."""

    source_dir: str | None
    files: list[tuple[str, str, str]]  # (source path, sha256, archive path)


def leaving(
    session: Session, release_id: str, patient_ids: Iterable[int], *, left: bool = False
) -> dict[int, Leaving]:
    """Of these source patients (released whole by ``release_id``), those that may leave
    the source project as far as the registry knows: none of their files is missing, and
    each has a copy in the release's archive (written or kept by any release into it) whose
    registered SHA-256 is the source's. The caller checks the bytes on disk
    (``publish.verified_originals``) before they leave.

    ``left``: of the patients this release moved out, the files still registered as present
    (their deletion did not happen: the worker stopped after the commit), with the same
    checks; those already deleted are marked missing and left out."""
    row = session.get(DatasetRelease, release_id)
    assert row is not None and row.archive_project_id is not None
    ids = sorted(set(patient_ids))
    if not ids:
        return {}
    archived = (
        select(ReleasedFile.source_file_id, FileRegistry.path, FileRegistry.sha256)
        .join(FileRegistry, FileRegistry.id == ReleasedFile.file_id)
        .where(
            ReleasedFile.project_id == row.archive_project_id,
            ReleasedFile.target == "archive",
            ReleasedFile.source_patient_id.in_(ids),
            ReleasedFile.status.in_((*WRITTEN, "skipped")),
        )
    )
    copies: dict[int, tuple[str, str]] = {}
    for source_id, path, digest in session.execute(archived):
        if source_id is not None:
            copies[source_id] = (path, digest)
    in_files = [FileRegistry.patient_id.in_(ids)]
    if left:
        in_files.append(FileRegistry.missing_since.is_(None))
    files = session.execute(
        select(
            FileRegistry.id,
            FileRegistry.patient_id,
            FileRegistry.path,
            FileRegistry.sha256,
            FileRegistry.missing_since,
        )
        .where(*in_files)
        .order_by(FileRegistry.id)
    ).all()
    state = (
        [Patient.left_at.is_not(None), Patient.left_release_id == release_id]
        if left
        else [Patient.left_at.is_(None)]
    )
    dirs = dict(
        session.execute(
            select(Patient.id, Patient.source_dir).where(Patient.id.in_(ids), *state)
        ).all()
    )
    found: dict[int, list[tuple[str, str, str]]] = {pid: [] for pid in dirs}
    whole = set(dirs)
    for file_id, pid, path, digest, missing in files:
        copy = copies.get(file_id)
        if pid not in found or missing is not None or copy is None or copy[1] != digest:
            # A file the archive does not hold as registered, or one a registration no
            # longer found (it may be back, unarchived): the patient stays.
            whole.discard(pid)
            continue
        found[pid].append((path, digest, copy[0]))
    return {pid: Leaving(dirs[pid], found[pid]) for pid in sorted(whole)}


def mark_deleted(session: Session, paths: list[str]) -> None:
    """Registry rows of moved-out patients' source files that were deleted: missing."""
    now = datetime.now(UTC)
    for start in range(0, len(paths), 500):
        session.execute(
            update(FileRegistry)
            .where(FileRegistry.path.in_(paths[start : start + 500]))
            .values(missing_since=now)
        )


def mark_left(
    session: Session, user_id: int, release_id: str, patients: dict[int, Leaving]
) -> None:
    """The patients leave the source project (its tree, selections and curation), in the
    caller's transaction, with an audit event that names the release."""
    row = session.get(DatasetRelease, release_id)
    assert row is not None
    session.execute(
        update(Patient)
        .where(Patient.id.in_(sorted(patients)))
        .values(left_at=datetime.now(UTC), left_release_id=release_id)
    )
    record(
        session,
        "release-move-out",
        user_id,
        row.source_project_id,
        None,
        {"release": release_id, "patients": len(patients)},
    )


def options_of(row: DatasetRelease) -> tuple[ExportOptions, bool, bool]:
    """The rewrite's options, ``skip_changed`` and ``move_out``, as the release stored
    them."""
    stored = dict(row.options)
    skip = bool(stored.pop("skip_changed", False))
    move_out = bool(stored.pop("move_out", False))
    return ExportOptions.from_json(stored), skip, move_out


def get_row(session: Session, user: Principal, release_id: str) -> DatasetRelease:
    """The release if the user manages its source project (else NotFound)."""
    plausible = isinstance(release_id, str) and _ID.fullmatch(release_id)
    row = session.get(DatasetRelease, release_id) if plausible else None
    managed = {
        a.project_id for a in accessible_projects(session, user) if a.role is Role.DATA_MANAGER
    }
    if row is None or row.source_project_id not in managed:
        shown = release_id if plausible else str(release_id)[:40]
        raise NotFound(f"No release {shown!r} that you can see")
    return row


def view(session: Session, row: DatasetRelease) -> ReleaseView:
    slugs = dict(
        session.execute(
            select(Project.id, Project.slug).where(
                Project.id.in_(
                    [
                        row.source_project_id,
                        row.destination_project_id,
                        row.archive_project_id or -1,
                    ]
                )
            )
        ).all()
    )
    creator = session.scalar(select(User.email).where(User.id == row.created_by_id))
    return ReleaseView(
        id=row.id,
        project=slugs[row.source_project_id],
        destination=slugs[row.destination_project_id],
        archive=slugs.get(row.archive_project_id) if row.archive_project_id else None,
        name=row.name,
        notes=row.notes,
        status=row.status.value,
        creator=creator or "",
        created_at=_utc(row.created_at),
        started_at=_utc(row.started_at),
        completed_at=_utc(row.completed_at),
        patient_count=row.patient_count,
        file_count=row.file_count,
        estimated_bytes=row.estimated_bytes,
        files_done=row.files_done,
        bytes_done=row.bytes_done,
        counts={k: int(v) for k, v in (row.counts or {}).items()},
        current_item=row.current_item,
        error_message=row.error_message,
        criteria=dict(row.criteria),
        options=dict(row.options),
        privacy=str(row.options.get("privacy", "pseudonymised")),
    )


def _utc(value: datetime | None) -> Any:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def list_rows(
    session: Session, user: Principal, project: str | None = None, limit: int = 100
) -> list[DatasetRelease]:
    """Releases out of the projects the user manages (or of ``project``), newest first."""
    managed = [a for a in accessible_projects(session, user) if a.role is Role.DATA_MANAGER]
    if project is not None:
        require_project(session, user, project, Role.DATA_MANAGER)
        managed = [a for a in managed if a.slug == project]
    ids = [a.project_id for a in managed]
    if not ids:
        return []
    return list(
        session.scalars(
            select(DatasetRelease)
            .where(DatasetRelease.source_project_id.in_(ids))
            .order_by(DatasetRelease.created_at.desc(), DatasetRelease.id)
            .limit(limit)
        )
    )


# --- the state machine: pending --start--> processing --complete--> completed ---------------
#                          |                    \--fail--> failed
#                          \--cancel------------>+--cancel--> cancelled
# Each change is one conditional UPDATE, so a job and a cancel cannot both win.


def transition(
    session: Session,
    release_id: str,
    from_statuses: tuple[ExportStatus, ...],
    to_status: ExportStatus,
    **values: Any,
) -> bool:
    return db.move_status(session, DatasetRelease, release_id, from_statuses, to_status, **values)


def start(session: Session, release_id: str, worker: str) -> bool:
    """pending -> processing for the run ``worker`` (a token unique to the run: every later
    write of the run is conditional on it). False when the release is no longer pending, or
    another release into the same destination or archive is processing (its job is put
    back on the queue by the caller)."""
    row = session.get(DatasetRelease, release_id)
    if row is None or row.status is not ExportStatus.PENDING:
        return False
    # Releases that share a destination or an archive take turns: the projects' rows are
    # locked (PostgreSQL) or the write transaction starts here (SQLite, one writer).
    shared = [p for p in (row.destination_project_id, row.archive_project_id) if p]
    session.execute(update(Project).where(Project.id.in_(shared)).values(name=Project.name))
    if busy(session, row, (ExportStatus.PROCESSING,)):
        return False
    now = datetime.now(UTC)
    return transition(
        session,
        release_id,
        (ExportStatus.PENDING,),
        ExportStatus.PROCESSING,
        started_at=now,
        heartbeat_at=now,
        worker_id=worker,
        files_done=0,
        bytes_done=0,
    )


def busy(
    session: Session, row: DatasetRelease, statuses: tuple[ExportStatus, ...] = ACTIVE
) -> str | None:
    """The name of another release in ``statuses`` that writes into the same destination
    or archive as ``row`` (either as its destination or its archive), else None."""
    mine = [p for p in (row.destination_project_id, row.archive_project_id) if p]
    return session.scalar(
        select(DatasetRelease.name)
        .where(
            DatasetRelease.id != row.id,
            DatasetRelease.status.in_(statuses),
            or_(
                DatasetRelease.destination_project_id.in_(mine),
                DatasetRelease.archive_project_id.in_(mine),
            ),
        )
        .limit(1)
    )


def owns(
    session: Session, release_id: str, worker: str, stopped: bool = False, **values: Any
) -> bool:
    """Write ``values`` (progress, heartbeat) only if the run ``worker`` still owns the
    release (processing, and not taken over by a later run): False means stop. ``stopped``:
    the run is ending (cancelled, failed) and saves what it wrote; no later run has started."""
    statuses = tuple(ExportStatus) if stopped else (ExportStatus.PROCESSING,)
    result = session.execute(
        update(DatasetRelease)
        .where(
            DatasetRelease.id == release_id,
            DatasetRelease.status.in_(statuses),
            DatasetRelease.worker_id == worker,
        )
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0))


def complete(
    session: Session,
    release_id: str,
    counts: dict[str, int],
    report: dict[str, Any] | None,
    worker: str,
) -> bool:
    """processing -> completed, for the run that owns the release only."""
    row = session.get(DatasetRelease, release_id)
    assert row is not None
    won = owns(
        session,
        release_id,
        worker,
        status=ExportStatus.COMPLETED,
        completed_at=datetime.now(UTC),
        counts=counts,
        privacy_report=report,
        current_item=None,
    )
    if won:
        record(
            session,
            "release-completed",
            row.created_by_id,
            row.source_project_id,
            None,
            {"release": release_id, **counts},
        )
    return won


def fail(
    session: Session,
    release_id: str,
    message: str,
    detail: str,
    counts: dict[str, int] | None = None,
    report: dict[str, Any] | None = None,
    worker: str | None = None,
) -> bool:
    """pending or processing -> failed; with ``worker``, only while that run owns it (a run
    that was cancelled and run again fails nothing of the new run)."""
    row = session.get(DatasetRelease, release_id)
    if row is None:
        return False
    if worker is not None and (
        row.status is not ExportStatus.PROCESSING or row.worker_id != worker
    ):
        return False
    won = transition(
        session,
        release_id,
        ACTIVE,
        ExportStatus.FAILED,
        completed_at=datetime.now(UTC),
        error_message=message,
        error_detail=detail,
        current_item=None,
        **({"counts": counts} if counts is not None else {}),
        **({"privacy_report": report} if report is not None else {}),
    )
    if won:
        record(
            session,
            "release-failed",
            row.created_by_id,
            row.source_project_id,
            None,
            {"release": release_id},
        )
    return won


def mark_cancelled(session: Session, user: Principal, row: DatasetRelease) -> bool:
    won = transition(
        session,
        row.id,
        ACTIVE,
        ExportStatus.CANCELLED,
        completed_at=datetime.now(UTC),
        error_message="Cancelled by " + user.email,
    )
    if won:
        record(session, "release-cancel", user.id, row.source_project_id, None, {"release": row.id})
        session.refresh(row)
    return won


def retry(session: Session, user: Principal, row: DatasetRelease) -> bool:
    """failed or cancelled -> pending, to run the same release again: what it wrote and
    registered is skipped, the rest is written. Only a user who manages the source, the
    destination and the archive may (a data manager of the source alone could otherwise
    push values into a destination they do not manage)."""
    slugs = dict(session.execute(select(Project.id, Project.slug)).all())
    _managed(session, user, slugs[row.source_project_id], "source")
    _managed(session, user, slugs[row.destination_project_id], "destination")
    if row.archive_project_id:
        _managed(session, user, slugs[row.archive_project_id], "archive")
    if row.status in (ExportStatus.FAILED, ExportStatus.CANCELLED):
        other = busy(session, row)
        if other is not None:
            raise InvalidState(
                f"Release {other!r} into the same destination or archive is pending or "
                "running: wait for it to end, then run this one again"
            )
    won = transition(
        session,
        row.id,
        (ExportStatus.FAILED, ExportStatus.CANCELLED),
        ExportStatus.PENDING,
        error_message=None,
        error_detail=None,
        completed_at=None,
    )
    if won:
        record(session, "release-retry", user.id, row.source_project_id, None, {"release": row.id})
        session.refresh(row)
    return won


# --- the patient link ----------------------------------------------------------------------


def link_patients(
    session: Session, release: DatasetRelease, patients: dict[int, str], dest_root: str
) -> dict[int, tuple[int, str]]:
    """Each source patient's destination patient (id, label), creating the ones released
    for the first time. New numbers follow the destination's last one, drawn in a random
    order within the release (never the order of the source's labels)."""
    dest = release.destination_project_id
    # Releases into one destination take turns here (the project row is locked on
    # PostgreSQL; SQLite has one writer at a time).
    session.execute(update(Project).where(Project.id == dest).values(name=Project.name))
    found = {
        src: (pid, label)
        for src, pid, label in session.execute(
            select(PatientLink.source_patient_id, Patient.id, Patient.label)
            .join(Patient, Patient.id == PatientLink.destination_patient_id)
            .where(
                PatientLink.destination_project_id == dest,
                PatientLink.source_patient_id.in_(list(patients)),
            )
        )
    }
    new = [pid for pid in patients if pid not in found]
    secrets.SystemRandom().shuffle(new)
    last = session.scalar(
        select(func.max(PatientLink.number)).where(PatientLink.destination_project_id == dest)
    )
    used = set(session.scalars(select(Patient.label).where(Patient.project_id == dest)))
    number = last or 0
    for src in new:
        number += 1
        while pseudonym(number, PREFIX) in used:
            number += 1
        label = pseudonym(number, PREFIX)
        patient = Patient(project_id=dest, label=label, source_dir=f"{dest_root}/{label}")
        session.add(patient)
        session.flush()
        session.add(
            PatientLink(
                source_patient_id=src,
                destination_project_id=dest,
                destination_patient_id=patient.id,
                number=number,
                first_release_id=release.id,
            )
        )
        found[src] = (patient.id, label)
        used.add(label)
    session.flush()
    return found


@dataclass(frozen=True)
class LinkRow:
    source_label: str
    destination: str
    destination_label: str
    first_release_id: str | None


def links(session: Session, user: Principal, source: str) -> list[LinkRow]:
    """The source's patient links (the re-identification key): its data managers only."""
    access = require_project(session, user, source, Role.DATA_MANAGER)
    dest_patient = Patient.__table__.alias("dest_patient")
    rows = session.execute(
        select(Patient.label, Project.slug, dest_patient.c.label, PatientLink.first_release_id)
        .join(PatientLink, PatientLink.source_patient_id == Patient.id)
        .join(Project, Project.id == PatientLink.destination_project_id)
        .join(dest_patient, dest_patient.c.id == PatientLink.destination_patient_id)
        .where(Patient.project_id == access.project_id)
        .order_by(Project.slug, dest_patient.c.label)
    )
    return [LinkRow(*r) for r in rows]


# --- history and log -----------------------------------------------------------------------


def file_history(session: Session, user: Principal, project: str, path: str) -> list[FileVersion]:
    """Every version a release wrote of the file registered at ``path`` in ``project`` (a
    destination or archive the user manages), oldest first."""
    access = require_project(session, user, project, Role.DATA_MANAGER)
    file_id = session.scalar(
        select(FileRegistry.id)
        .join(Patient, Patient.id == FileRegistry.patient_id)
        .where(Patient.project_id == access.project_id, FileRegistry.path == path)
    )
    if file_id is None:
        raise NotFound(f"No file {path[:200]!r} in project {project!r}")
    rows = session.execute(
        select(ReleasedFile, DatasetRelease.name)
        .join(DatasetRelease, DatasetRelease.id == ReleasedFile.release_id)
        .where(ReleasedFile.file_id == file_id, ReleasedFile.status.in_(WRITTEN))
        .order_by(ReleasedFile.version)
    )
    return [
        FileVersion(
            version=r.version or 0,
            release_id=r.release_id,
            release_name=name,
            status=r.status,
            path=r.destination_path or "",
            stored_path=r.stored_path or "",
            sha256=r.sha256 or "",
            size=r.size_bytes or 0,
            created_at=_utc(r.created_at),
        )
        for r, name in rows
    ]


LOG_COLUMNS = [
    "level",
    "target",
    "patient",
    "destination_patient",
    "series",
    "status",
    "origin_path",
    "destination_path",
    "version",
    "found",
    "created",
    "new_version",
    "skipped",
    "failed",
    "message",
]
STATUSES = ("created", "new_version", "skipped", "failed")


def log_rows(session: Session, release_id: str) -> Iterator[dict[str, Any]]:
    """``release_log.csv``'s rows: per patient, per series, then per file; counts for
    patients and series."""
    rows = session.execute(
        select(ReleasedFile, Patient.label, Patient.left_release_id)
        .outerjoin(Patient, Patient.id == ReleasedFile.source_patient_id)
        .where(ReleasedFile.release_id == release_id)
        .order_by(ReleasedFile.target, ReleasedFile.id)
    ).all()
    dest_labels = _destination_labels(session, release_id)
    groups: dict[tuple[str, str, str], list[ReleasedFile]] = {}
    patients: dict[tuple[str, str], list[ReleasedFile]] = {}
    moved = {label for _, label, left in rows if left == release_id}
    for r, label, _ in rows:
        patient = label or "(deleted)"
        patients.setdefault((r.target, patient), []).append(r)
        groups.setdefault((r.target, patient, r.series or ""), []).append(r)

    def counts(items: list[ReleasedFile]) -> dict[str, int]:
        found = {s: sum(1 for i in items if i.status == s) for s in STATUSES}
        return {"found": len(items), **found}

    for (target, patient), items in patients.items():
        dest = (
            dest_labels.get(items[0].source_patient_id or -1, "") if target == "destination" else ""
        )
        yield {
            "level": "patient",
            "target": target,
            "patient": patient,
            "destination_patient": dest,
            # moved out: the patient left the source project, its originals in the archive
            "status": "moved_out" if target == "archive" and patient in moved else "",
            **counts(items),
        }
        for (t, p, series), in_series in groups.items():
            if (t, p) != (target, patient) or not series:
                continue
            yield {
                "level": "series",
                "target": target,
                "patient": patient,
                "destination_patient": dest,
                "series": series,
                **counts(in_series),
            }
        for r in items:
            yield {
                "level": "file",
                "target": target,
                "patient": patient,
                "destination_patient": dest,
                "series": r.series or "",
                "status": r.status,
                "origin_path": r.origin_path,
                "destination_path": r.destination_path or "",
                "version": r.version or "",
                "message": r.message or "",
            }


def _destination_labels(session: Session, release_id: str) -> dict[int, str]:
    row = session.get(DatasetRelease, release_id)
    assert row is not None
    return dict(
        session.execute(
            select(PatientLink.source_patient_id, Patient.label)
            .join(Patient, Patient.id == PatientLink.destination_patient_id)
            .where(PatientLink.destination_project_id == row.destination_project_id)
        ).all()
    )


def log_csv(rows: Iterable[dict[str, Any]]) -> bytes:
    """``release_log.csv`` of these rows (:func:`log_rows`)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, LOG_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue().encode()


CHANGE_COLUMNS = ["path", "tag", "keyword", "new_value", "reason", "action", "files"]


def changes_csv(session: Session, release_id: str) -> bytes:
    """The per-field DICOM changes of the release's files, as ``dicom_changes.csv`` with a
    ``files`` column: a row whose path is a series folder is a change made alike to that
    many files of the series."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CHANGE_COLUMNS)
    for c in session.scalars(
        select(ReleaseChange)
        .where(ReleaseChange.release_id == release_id)
        .order_by(ReleaseChange.id)
    ):
        writer.writerow(
            [c.path, c.tag, c.keyword, c.new_value or "", c.reason, c.action, c.file_count]
        )
    return out.getvalue().encode()


def project_root(session: Session, project_id: int, data_root: Path) -> str:
    """The project's tree under the data root, set to its slug on first use. A directory
    of that name that holds something already is refused (it is not the project's)."""
    project = session.get(Project, project_id)
    assert project is not None
    if project.root_path is not None:  # "": the project's tree is the data root itself
        return project.root_path
    target = data_root / project.slug
    if target.exists() and any(target.iterdir()):
        raise InvalidOption(
            f"{target} exists and is not empty, and project {project.slug!r} has no tree "
            "yet: move that directory aside or release into another project"
        )
    project.root_path = project.slug
    return project.slug
