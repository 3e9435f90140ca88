"""Export records: create, read, cancel, delete, and every change of an export's status (the
state machine, below its heading). The database row is the record of an export.

What a user does here takes the acting user and checks what they may do: researchers see and act on
their own exports; data managers on every export of their projects. An export of a project
the user does not belong to is "not found", never "forbidden", so that ids reveal nothing.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from humanize import naturalsize
from sqlalchemy import Select, and_, func, or_, select, update
from sqlalchemy.orm import Session

from exporter.access.accounts import Principal, ProjectAccess, accessible_projects, require_project
from exporter.access.audit import record
from exporter.archive.build import ManifestPart, PartResult, privacy_facts
from exporter.archive.layout import PlannedPart, export_folder_name, sanitize_component
from exporter.errors import (
    InvalidInput,
    InvalidOption,
    InvalidState,
    NotFound,
    PermissionDenied,
)
from exporter.registry.query import estimate, tag_exported
from exporter.schemas import (
    COMPRESSION_LEVELS,
    TITLES,
    Estimate,
    ExportOptions,
    ExportRequest,
    ExportView,
    PartView,
    PrivacyLevel,
    ProjectPolicy,
    Refusal,
    RefusalReason,
    Selection,
    legacy_level,
)
from exporter.store import db
from exporter.store.models import (
    DatasetExport,
    ExportDicomChange,
    ExportPart,
    ExportPatient,
    ExportStatus,
    Membership,
    Project,
    Role,
    User,
)

LIVE = (ExportStatus.PENDING, ExportStatus.PROCESSING, ExportStatus.COMPLETED)
ACTIVE = (ExportStatus.PENDING, ExportStatus.PROCESSING)
# The same request again within this many seconds of the first gives the first export back,
# also when that one has already completed (a small export takes under a second) or failed (a
# failure that quick is the same failure again; the twin carries its reason). Long enough for
# a double click, a second tab or a client's retry after a dropped connection, short enough
# that a deliberate re-export (after reading a result) creates a new one. A cancelled or
# deleted twin never absorbs a request: cancelling says "not that one".
DOUBLE_SUBMIT_SECONDS = 30
TWIN_STATUSES = (*LIVE, ExportStatus.FAILED)
MAX_NAME = 100  # the name is the archive's top folder: sanitize_component keeps 100
MAX_ITEM = 1024  # characters in one folder, patient, tag, modality or kind (a folder path's column)
_EXPORT_ID = re.compile(r"[0-9a-f]{32}")
# Text that cannot be stored or shown as it is: lone surrogates (not encodable as UTF-8; the
# database refuses them), C0 and C1 controls and DEL (NUL is refused by PostgreSQL). Notes
# may keep tabs and line breaks.
_BAD_TEXT = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_BAD_NOTES = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def describe_privacy(view: ExportView) -> str:
    """An export's privacy level and what was done, in one line for its page."""
    options = view.options
    if "privacy" not in options:  # made before privacy levels: say what it did
        if not options.get("pseudonyms", True):
            return "Privacy: made before privacy levels, with patient labels (identified)"
        if not options.get("deidentify"):
            return "Privacy: made before privacy levels, pseudonyms in PatientID/Name only"
        return "Privacy: made before privacy levels, de-identified (PS3.15 Basic profile)"
    built = ExportOptions.from_json(options)
    facts = privacy_facts(built)
    words = [TITLES[built.level], f"pseudonyms {facts['pseudonyms']}"]
    if built.level is not PrivacyLevel.IDENTIFIED:
        words.append(f"dates {facts['dates']}")
        kept = (
            ("UIDs kept", built.retain_uids),
            ("device identity kept", built.retain_device_identity),
            ("age, sex, size and weight kept", built.retain_patient_characteristics),
            ("descriptions cleaned", built.clean_descriptors),
        )
        words += [w for w, on in kept if on]
        words.append(f"{len(built.kept_private)} private tag(s) kept")
    checks = {
        "passed": "privacy check passed",
        "failed": "privacy check failed",
        "identifiers present": "privacy check: identifiers present, as asked",
    }
    if view.privacy_check:
        words.append(checks.get(view.privacy_check, view.privacy_check))
    return "Privacy: " + " · ".join(words)


def default_name(now: datetime | None = None) -> str:
    return export_folder_name(now or datetime.now(UTC))


def clean_name(name: str) -> str:
    """The export's name as it will be used for folders: sanitised, bounded."""
    text = name.strip()
    if not text:
        return default_name()
    if len(text) > MAX_NAME:
        raise InvalidOption(f"The export name is longer than {MAX_NAME} characters: shorten it")
    cleaned = sanitize_component(text, "")
    if not cleaned:
        raise InvalidOption(
            f"The export name {name!r} has no usable characters: use letters, digits, '-' or '_'"
        )
    return cleaned


def text_problem(value: str, multiline: bool = False) -> str | None:
    """Why ``value`` cannot be stored as text (a lone surrogate, a control character; tabs
    and line breaks are fine when ``multiline``), or None."""
    found = (_BAD_NOTES if multiline else _BAD_TEXT).search(value)
    if found is None:
        return None
    char = found.group()
    if "\ud800" <= char <= "\udfff":
        return (
            f"is not valid text (a lone surrogate, {char!r}, at character {found.start()}): "
            "send UTF-8 text"
        )
    return f"contains a control character ({char!r} at character {found.start()}): remove it"


def selection_problems(selection: Selection, max_items: int) -> dict[str, str]:
    """Each list of ``selection`` that is too long or holds an entry that cannot be text,
    with why (empty: it fits). Checked before a selection reaches the database."""
    problems: dict[str, str] = {}
    for key, values in selection.as_dict().items():
        if isinstance(values, str):
            values = [values]
        elif not isinstance(values, list):
            continue
        if len(values) > max_items:
            problems[key] = f"has {len(values)} entries, more than {max_items}: select fewer"
            continue
        for n, value in enumerate(values):
            why = text_problem(value)
            if why is None and len(value) > MAX_ITEM:
                why = f"is longer than {MAX_ITEM} characters"
            if why is not None:
                problems[key] = why if key == "tag_mode" else f"entry {n + 1} {why}"
                break
    return problems


def request_problems(
    request: ExportRequest, max_items: int, max_notes: int, max_name: int
) -> dict[str, str]:
    """Each field of ``request`` over the limits (``MAX_LIST_ITEMS``, ``MAX_NOTES_LENGTH``,
    ``MAX_NAME_LENGTH``) or holding text that cannot be stored, with why; empty: it fits."""
    problems = selection_problems(request.selection, max_items)
    why = text_problem(request.name)
    if why is None and len(request.name.strip()) > max_name:
        why = f"is longer than {max_name} characters: shorten it"
    if why is not None:
        problems["name"] = why
    why = text_problem(request.notes, multiline=True)
    if why is None and len(request.notes.strip()) > max_notes:
        why = f"is {len(request.notes.strip())} characters, more than {max_notes}: shorten it"
    if why is not None:
        problems["notes"] = why
    for key in ("compression", "privacy"):
        why = text_problem(getattr(request, key))
        if why is not None:
            problems[f"options.{key}"] = why
    return problems


def fingerprint(user: Principal, project: str, request: ExportRequest) -> str:
    """The request itself, in a canonical form: who, which project, the selection (lists
    sorted: their order selects nothing), every option, the name and notes as saved."""
    selection = {
        k: sorted(v) if isinstance(v, list) else v for k, v in request.selection.as_dict().items()
    }
    choices = request.choices()
    choices["name"], choices["notes"] = request.name.strip(), request.notes.strip()
    data = {"u": user.id, "p": project, "s": selection, "o": choices}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def made_again(
    session: Session, user: Principal, project: str, request: ExportRequest
) -> DatasetExport | None:
    """The newest export of this very request by this user that is pending, running or
    completed (a retry made already), or None."""
    return session.scalar(
        select(DatasetExport)
        .where(
            DatasetExport.request_fingerprint == fingerprint(user, project, request),
            DatasetExport.created_by_id == user.id,
            DatasetExport.status.in_(
                (ExportStatus.PENDING, ExportStatus.PROCESSING, ExportStatus.COMPLETED)
            ),
        )
        .order_by(DatasetExport.created_at.desc())
        .limit(1)
    )


def find_twin(
    session: Session, user: Principal, project: str, request: ExportRequest
) -> DatasetExport | None:
    """The export this very request made less than ``DOUBLE_SUBMIT_SECONDS`` ago (pending,
    processing, completed or failed), or None."""
    twin = session.scalar(
        select(DatasetExport).where(
            DatasetExport.request_key == fingerprint(user, project, request),
            DatasetExport.created_by_id == user.id,
        )
    )
    return twin if twin is not None and _absorbs(twin) else None


def _absorbs(twin: DatasetExport) -> bool:
    age = datetime.now(UTC) - as_utc(twin.created_at)
    return twin.status in TWIN_STATUSES and age <= timedelta(seconds=DOUBLE_SUBMIT_SECONDS)


def policy_of(session: Session, project_id: int) -> ProjectPolicy:
    """The project's privacy policy (what its data managers allow)."""
    stored = session.scalar(select(Project.privacy_policy).where(Project.id == project_id))
    return ProjectPolicy.from_json(stored)


def data_managers(session: Session, project_id: int) -> list[str]:
    """E-mails of the project's data managers (whom a refusal tells a researcher to ask)."""
    return list(
        session.scalars(
            select(User.email)
            .join(Membership, Membership.user_id == User.id)
            .where(Membership.project_id == project_id, Membership.role == Role.DATA_MANAGER)
            .order_by(User.email)
            .limit(5)
        )
    )


def require_level(session: Session, access: ProjectAccess, level: str) -> ProjectPolicy:
    """Refuse a privacy level the user may not ask for here; the project's policy otherwise.

    An identified export is for the project's data managers, or for its researchers when a
    data manager allowed it.
    """
    policy = policy_of(session, access.project_id)
    if (
        level == PrivacyLevel.IDENTIFIED
        and access.role is not Role.DATA_MANAGER
        and not policy.identified_for_researchers
    ):
        managers = ", ".join(data_managers(session, access.project_id)) or "none yet"
        raise PermissionDenied(
            f"Identified exports of project {access.slug!r} are for its data managers "
            f"({managers}). A data manager can allow them for researchers in the project's "
            "privacy settings; otherwise choose pseudonymised or de-identified."
        )
    return policy


def held_bytes(session: Session, user_id: int) -> int:
    """Bytes the user holds in live exports (archive size when known, else the estimate)."""
    total = session.scalar(
        select(
            func.coalesce(
                func.sum(
                    func.coalesce(DatasetExport.archive_size_bytes, DatasetExport.estimated_bytes)
                ),
                0,
            )
        ).where(DatasetExport.created_by_id == user_id, DatasetExport.status.in_(LIVE))
    )
    return int(total or 0)


@dataclass(frozen=True)
class Preflight:
    """Whether a request would be accepted, and the figures behind the answer: computed once
    per click and passed along (the page shows it, and creating the export reuses it)."""

    user_id: int
    project: str
    request: ExportRequest
    estimate: Estimate
    name: str
    quota_left: int
    refusal: Refusal | None

    def fits(self, user: Principal, project: str, request: ExportRequest) -> bool:
        """Whether this preflight was made for this very request, by this user (how old its
        estimate may be, :func:`preflight` judges)."""
        return self.user_id == user.id and self.project == project and self.request == request


REUSE_SECONDS = 10.0
"""How old an estimate may be and still be reused (a click's page run takes well under)."""


Room = Callable[[int], Refusal | None]
"""Whether the export root has room for an export of so many bytes (None: it has)."""


def _roomy(needed: int) -> Refusal | None:
    """No disk check (the services layer passes the export root's)."""
    return None


def _size(n: int) -> str:
    """A size as people read it (binary units: 1.5 GiB)."""
    return naturalsize(n, binary=True)


def refusal_for(request: ExportRequest, est: Estimate, max_bytes: int, left: int) -> Refusal | None:
    """What stops this request with this estimate, or None."""
    if not request.selection.modalities:
        return Refusal(RefusalReason.NO_MODALITY, "Choose at least one modality")
    if est.file_count == 0:
        return Refusal(
            RefusalReason.EMPTY,
            "The selection has no files: choose other patients, modalities or kinds",
        )
    if est.total_bytes > max_bytes:
        return Refusal(
            RefusalReason.SIZE_LIMIT,
            f"The export would be {_size(est.total_bytes)}, over the limit of "
            f"{_size(max_bytes)}: "
            "select fewer patients or modalities",
        )
    if est.total_bytes > left:
        return Refusal(
            RefusalReason.QUOTA,
            f"The export would be {_size(est.total_bytes)} but your quota has "
            f"{_size(max(left, 0))} left: delete exports you no longer need",
        )
    return None


def preflight(
    session: Session,
    user: Principal,
    project: str,
    request: ExportRequest,
    max_bytes: int,
    quota: int,
    room: Room,
    known: Estimate | None = None,
) -> Preflight:
    """Validate a request without creating anything: the page's live check, the API's
    estimate endpoint and :func:`create` use this. ``known`` is an estimate of the request's
    selection the caller already holds (the page's, made for the modality list)."""
    if request.compression not in COMPRESSION_LEVELS:
        raise InvalidOption(
            f"Compression {request.compression!r} is not known: use store, fast or small"
        )
    request.options()  # validates the level, its options and the part size
    require_level(session, require_project(session, user, project), request.privacy)
    if known is not None and known.stands_for(project, request.selection, REUSE_SECONDS):
        est = known  # made for this user's selection by the registry (_resolve checked it)
    else:
        est = estimate(session, user, project, request.selection)
    left = quota - held_bytes(session, user.id)
    refusal = refusal_for(request, est, max_bytes, left) or room(est.total_bytes)
    return Preflight(user.id, project, request, est, clean_name(request.name), left, refusal)


def create(
    session: Session,
    user: Principal,
    project: str,
    request: ExportRequest,
    max_bytes: int,
    quota: int,
    room: Room | None = None,
    checked: Preflight | None = None,
) -> tuple[DatasetExport, bool]:
    """Save a pending export; returns (row, created). A double submit returns the first.

    ``room`` checks the export root's free space (services pass it; without it, none).
    ``checked`` is the preflight the caller made for this request (its estimate is used, not
    made again); the quota is checked again here, under the lock, whatever it says.

    The database holds the guarantee: ``request_key`` is unique, and only the newest export
    of a request carries it, so two identical requests cannot both be saved however they
    interleave (the loser's flush raises IntegrityError; run the transaction again to get the
    twin). The key moves to a new export once its twin is too old to absorb a request.
    """
    # One user's requests take turns from here to the commit, so that the quota and
    # double-submit checks below see an export that a request arriving at the same moment
    # has just saved: the user's row is locked (PostgreSQL), or the write transaction starts
    # here (SQLite has one writer at a time). Without it, both requests passed both checks.
    session.execute(update(User).where(User.id == user.id).values(name=User.name))
    access = require_project(session, user, project)
    key = fingerprint(user, project, request)
    holder = session.scalar(select(DatasetExport).where(DatasetExport.request_key == key))
    if holder is not None and _absorbs(holder):
        return holder, False  # before the quota and space: the twin may have used them up
    known = (
        checked.estimate if checked is not None and checked.fits(user, project, request) else None
    )
    check = preflight(session, user, project, request, max_bytes, quota, room or _roomy, known)
    if check.refusal:
        raise check.refusal.error()
    if holder is not None:  # too old or cancelled: the request may be made again
        session.execute(
            update(DatasetExport)
            .where(DatasetExport.id == holder.id, DatasetExport.request_key == key)
            .values(request_key=None)
            .execution_options(synchronize_session=False)
        )
    est = check.estimate
    options = request.options(policy_of(session, access.project_id))
    row = DatasetExport(
        project_id=access.project_id,
        created_by_id=user.id,
        name=check.name,
        notes=request.notes.strip(),
        status=ExportStatus.PENDING,
        criteria=request.selection.as_dict(),
        options=options.to_json(),
        request_fingerprint=key,
        request_key=key,
        patient_count=est.patient_count,
        file_count=est.file_count,
        estimated_bytes=est.total_bytes,
    )
    session.add(row)
    session.flush()
    record(
        session,
        "create",
        user.id,
        access.project_id,
        row.id,
        {"name": row.name, "privacy": options.privacy},
    )
    if options.level is PrivacyLevel.IDENTIFIED:
        record(
            session,
            "identified-export",
            user.id,
            access.project_id,
            row.id,
            {"role": access.role.value, "patients": est.patient_count},
        )
    return row, True


def _visible(session: Session, user: Principal) -> dict[int, ProjectAccess]:
    return {a.project_id: a for a in accessible_projects(session, user)}


def get_row(session: Session, user: Principal, export_id: str) -> DatasetExport:
    """The export if the user may see it: its creator, or a data manager of its project."""
    # Ids are 32 hex digits: anything else is not looked up (NUL or a surrogate in an id
    # made PostgreSQL fail the query).
    plausible = isinstance(export_id, str) and _EXPORT_ID.fullmatch(export_id)
    row = session.get(DatasetExport, export_id) if plausible else None
    access = _visible(session, user).get(row.project_id) if row is not None else None
    if (
        row is None
        or access is None
        or (access.role is not Role.DATA_MANAGER and row.created_by_id != user.id)
    ):
        shown = export_id if plausible else str(export_id)[:40]  # an error echoes little
        raise NotFound(f"No export {shown!r} that you can see")
    return row


def view(session: Session, row: DatasetExport) -> ExportView:
    """The plain-data view of an export row."""
    creator = session.get(User, row.created_by_id)
    project = session.get(Project, row.project_id)
    parts = session.scalars(
        select(ExportPart).where(ExportPart.export_id == row.id).order_by(ExportPart.number)
    ).all()
    eta = None
    if row.status is ExportStatus.PROCESSING and row.started_at and row.bytes_done:
        elapsed = (datetime.now(UTC) - as_utc(row.started_at)).total_seconds()
        eta = max(0.0, elapsed * (row.estimated_bytes - row.bytes_done) / row.bytes_done)
    return ExportView(
        id=row.id,
        project=project.slug if project else "",
        name=row.name,
        notes=row.notes,
        status=row.status.value,
        creator=creator.email if creator else "",
        created_at=as_utc(row.created_at),
        started_at=as_utc(row.started_at),
        completed_at=as_utc(row.completed_at),
        expires_at=as_utc(row.expires_at),
        patient_count=row.patient_count,
        file_count=row.file_count,
        estimated_bytes=row.estimated_bytes,
        archive_bytes=row.archive_size_bytes,
        archive_sha256=row.archive_sha256,
        files_done=row.files_done,
        bytes_done=row.bytes_done,
        current_item=row.current_item,
        eta_seconds=eta,
        error_message=row.error_message,
        criteria=dict(row.criteria),
        options=dict(row.options),
        privacy=legacy_level(row.options),
        privacy_check=(row.privacy_report or {}).get("result"),
        parts=[
            PartView(
                p.number,
                p.status.value,
                p.path.rpartition("/")[2] if p.path else None,
                p.size_bytes,
                p.sha256,
            )
            for p in parts
        ],
    )


def as_utc(value: datetime | None) -> Any:
    """SQLite hands back naive datetimes; every time the portal shows is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def list_rows(
    session: Session,
    user: Principal,
    project: str | None = None,
    status: str | None = None,
    limit: int = 100,
    offset: int = 0,
    mine: bool = False,
    text: str = "",
) -> list[DatasetExport]:
    """Exports the user may see, newest first (researchers: their own; ``mine``: a data
    manager's own too); ``text``: whose name or notes contain it (any case)."""
    visible = _visible(session, user)
    query = select(DatasetExport).order_by(DatasetExport.created_at.desc())
    if project is not None:
        access = require_project(session, user, project)
        visible = {access.project_id: access}
    managed = [pid for pid, a in visible.items() if a.role is Role.DATA_MANAGER]
    own = [pid for pid, a in visible.items() if a.role is not Role.DATA_MANAGER]
    query = query.where(
        or_(
            DatasetExport.project_id.in_(managed),
            and_(DatasetExport.project_id.in_(own), DatasetExport.created_by_id == user.id),
        )
    )
    if mine:
        query = query.where(DatasetExport.created_by_id == user.id)
    needle = text.strip()
    if needle:
        query = query.where(
            or_(
                DatasetExport.name.icontains(needle, autoescape=True),
                DatasetExport.notes.icontains(needle, autoescape=True),
            )
        )
    if status:
        try:
            query = query.where(DatasetExport.status == ExportStatus(status))
        except ValueError:
            allowed = ", ".join(s.value for s in ExportStatus)
            raise InvalidInput(f"Status {status!r} is not known: use one of {allowed}") from None
    return list(session.scalars(query.limit(min(limit, 1000)).offset(offset)))


def mark_cancelled(session: Session, user: Principal, row: DatasetExport) -> bool:
    """Cancel a pending or processing export (the job notices within a second or two).

    Returns False when the export had already finished.
    """
    # One conditional UPDATE: a job completing at the same moment either wins (and the
    # cancel reports "nothing to cancel") or loses (and finds the export cancelled).
    won = transition(
        session,
        row.id,
        ACTIVE,
        ExportStatus.CANCELLED,
        completed_at=datetime.now(UTC),
        error_message="Cancelled by " + user.email,
    )
    if won:
        record(session, "cancel", user.id, row.project_id, row.id, {})
        session.refresh(row)
    return won


def transition(
    session: Session,
    export_id: str,
    from_statuses: tuple[ExportStatus, ...],
    to_status: ExportStatus,
    **values: Any,
) -> bool:
    """Move an export to ``to_status`` only if it is in one of ``from_statuses`` (atomic)."""
    return db.move_status(session, DatasetExport, export_id, from_statuses, to_status, **values)


# --- the state machine: every change of an export's or a part's status is made here -------
#
#   pending --start--> processing --complete--> completed --expire--> expired
#      |                  |   \--fail--> failed --retry (parts)--> processing
#      |--fail (a job that could not start, a lost queue entry) --> failed
#      \--cancel--------->+--cancel--> cancelled          (any but deleted) --delete--> deleted
#
# The changes two actors can race for (start, claim, complete, fail, cancel, retry) are one
# conditional UPDATE each (``transition``, or the part's own for a claim): one of them wins.
#
# Parts of a multi-part export: pending --claim--> processing --finish_part--> completed,
# failed or cancelled; retry puts the unfinished ones back to pending.


def start(session: Session, export_id: str, worker: str) -> bool:
    """pending -> processing; False when the export is no longer pending (e.g. cancelled)."""
    now = datetime.now(UTC)
    return transition(
        session,
        export_id,
        (ExportStatus.PENDING,),
        ExportStatus.PROCESSING,
        started_at=now,
        heartbeat_at=now,
        worker_id=worker,
        files_done=0,
        bytes_done=0,
    )


def save_parts(session: Session, export_id: str, parts: list[PlannedPart]) -> None:
    """The parts of an export, each pending with its frozen plan (file ids and entry names:
    parts never re-plan)."""
    row = session.get(DatasetExport, export_id)
    assert row is not None
    row.part_count = len(parts)
    session.query(ExportPart).filter(ExportPart.export_id == export_id).delete()
    for part in parts:
        session.add(
            ExportPart(
                export_id=export_id,
                number=part.number,
                status=ExportStatus.PENDING,
                patient_ids=part.patient_dirs,
                file_count=len(part.files),
                estimated_bytes=part.bytes,
                plan=[[f.source.id, f.arcname, f.patient_dir] for f in part.files],
            )
        )


def set_part_jobs(session: Session, export_id: str, job_ids: dict[int, str]) -> None:
    """Which queue job builds each part (by part number)."""
    for number, job_id in job_ids.items():
        session.execute(
            update(ExportPart)
            .where(ExportPart.export_id == export_id, ExportPart.number == number)
            .values(job_id=job_id)
        )


@dataclass(frozen=True)
class PartClaim:
    """A part a job took: its row, frozen plan, the export's part count and status."""

    part_id: int
    plan: list[Any]
    count: int | None
    export_status: ExportStatus | None


def claim_part(session: Session, export_id: str, number: int, worker: str) -> PartClaim | None:
    """A part's pending -> processing, once (a duplicate job gets None), with its plan."""
    now = datetime.now(UTC)
    claimed = session.execute(
        update(ExportPart)
        .where(
            ExportPart.export_id == export_id,
            ExportPart.number == number,
            ExportPart.status == ExportStatus.PENDING,
        )
        .values(status=ExportStatus.PROCESSING, started_at=now, heartbeat_at=now, worker_id=worker)
    )
    part = session.scalar(
        select(ExportPart).where(ExportPart.export_id == export_id, ExportPart.number == number)
    )
    status = session.scalar(select(DatasetExport.status).where(DatasetExport.id == export_id))
    if not getattr(claimed, "rowcount", 0) or part is None:
        return None
    count = session.scalar(select(DatasetExport.part_count).where(DatasetExport.id == export_id))
    return PartClaim(part.id, list(part.plan), count, status)


def finish_part(
    session: Session,
    part_id: int,
    status: ExportStatus,
    result: PartResult | None = None,
    message: str | None = None,
    detail: str | None = None,
    report: dict[str, Any] | None = None,
) -> None:
    """A part ends: completed (with its file), failed (with the message) or cancelled."""
    part = session.get(ExportPart, part_id)
    assert part is not None
    part.status = status
    part.completed_at = datetime.now(UTC)
    if result is not None:
        part.path = str(result.path)
        part.size_bytes = result.size
        part.sha256 = result.sha256
        part.privacy_report = result.privacy_report
    if report is not None:
        part.privacy_report = report
    if message is not None:
        part.error_message = message
        part.error_detail = detail


def complete(
    session: Session,
    export_id: str,
    results: list[ManifestPart],
    report: dict[str, Any] | None,
    retention_days: int,
    export_dir: Path,
) -> bool:
    """processing -> completed, with its parts and privacy report; audits it and tags the
    carried patients EXPORTED. False when the export was cancelled or failed meanwhile."""
    now = datetime.now(UTC)
    row = session.get(DatasetExport, export_id)
    assert row is not None
    won = transition(
        session,
        export_id,
        (ExportStatus.PROCESSING,),
        ExportStatus.COMPLETED,
        completed_at=now,
        expires_at=now + timedelta(days=retention_days),
        output_dir=str(export_dir),
        output_paths=[str(export_dir / r.file) for r in results],
        part_count=len(results),
        archive_size_bytes=sum(r.size for r in results),
        archive_sha256=results[0].sha256 if len(results) == 1 else None,
        actual_bytes=row.bytes_done,
        files_done=sum(r.files for r in results),
        heartbeat_at=now,
        current_item=None,
        privacy_report=report,
    )
    if won:
        record(session, "complete", None, row.project_id, row.id, {"parts": len(results)})
        carried = list(
            session.scalars(
                select(ExportPatient.patient_id).where(ExportPatient.export_id == export_id)
            )
        )
        tag_exported(session, row.project_id, export_id, carried)
    return won


def fail(
    session: Session, export_id: str, message: str, detail: str, report: dict[str, Any] | None
) -> bool:
    """pending or processing -> failed, with what users read and what administrators read;
    audited. False when the export had already finished."""
    won = transition(
        session,
        export_id,
        ACTIVE,
        ExportStatus.FAILED,
        completed_at=datetime.now(UTC),
        error_message=message,
        error_detail=detail,
        **({"privacy_report": report} if report is not None else {}),
    )
    project_id = session.scalar(
        select(DatasetExport.project_id).where(DatasetExport.id == export_id)
    )
    if won:
        record(session, "fail", None, project_id, export_id, {"error": message})
    return won


def retry(session: Session, export_id: str) -> tuple[int, list[tuple[int, int]]] | None:
    """failed -> processing for a multi-part export, its unfinished parts back to pending:
    (the attempt, [(part number, estimated bytes)]), or None (nothing to retry, or a retry
    at the same moment won)."""
    row = session.get(DatasetExport, export_id)
    parts = session.scalars(
        select(ExportPart).where(ExportPart.export_id == export_id).order_by(ExportPart.number)
    ).all()
    redo = [p for p in parts if p.status is not ExportStatus.COMPLETED]
    if row is None or not parts or not redo:
        return None
    attempt = row.retry_count + 1
    won = transition(
        session,
        export_id,
        (ExportStatus.FAILED,),
        ExportStatus.PROCESSING,
        error_message=None,
        error_detail=None,
        completed_at=None,
        heartbeat_at=datetime.now(UTC),
        retry_count=attempt,
        files_done=row.files_done - sum(p.files_done for p in redo),
        bytes_done=row.bytes_done - sum(p.bytes_done for p in redo),
    )
    if not won:
        return None
    for part in redo:
        part.status = ExportStatus.PENDING
        part.error_message = part.error_detail = None
        part.files_done = part.bytes_done = 0
    return attempt, [(p.number, p.estimated_bytes) for p in redo]


def mark_expired(session: Session, row: DatasetExport) -> None:
    """completed -> expired (its files are gone: the caller removed them); audited."""
    row.status = ExportStatus.EXPIRED
    record(session, "expire", None, row.project_id, row.id, {})


def mark_deleted(
    session: Session, user: Principal, row: DatasetExport, remove_files: Callable[[], None]
) -> None:
    """Any status but deleted -> deleted, its files removed first; audited."""
    if row.status is ExportStatus.DELETED:
        raise InvalidState(f"Export {row.name!r} is already deleted")
    remove_files()
    row.status = ExportStatus.DELETED
    row.deleted_at = datetime.now(UTC)
    record(session, "delete", user.id, row.project_id, row.id, {})


def require_downloadable(row: DatasetExport) -> None:
    if row.status is not ExportStatus.COMPLETED:
        raise InvalidState(
            f"Export {row.name!r} is {row.status.value}: only completed exports can be downloaded"
        )


# Share of the original size left after deflate, by modality (DICOM measured ~2.0x at level 1
# and ~2.09x at level 6 on CBCT here); photos and .gz volumes are stored.
_DEFLATE_SHARE = {"fast": 0.5, "small": 0.48}
_DEFLATED_MODALITIES = {"cbct", "ios", "panoramic", "cephalometric"}


def archive_bytes_estimate(est: Estimate, compression: str) -> int:
    """About how large the archive will be with this compression (a planning figure)."""
    share = _DEFLATE_SHARE.get(compression)
    total = 0
    for m in est.by_modality:
        if m.selected:
            total += int(m.bytes * share) if share and m.key in _DEFLATED_MODALITIES else m.bytes
    return total


def forget_old_values(session: Any, export_ids: list[str] | Select[Any]) -> None:
    """Remove the old (identifying) values from these exports' change logs (ids, or a query
    of them); what changed, and the new values, stay."""
    if isinstance(export_ids, list) and not export_ids:
        return
    session.execute(
        update(ExportDicomChange)
        .where(
            ExportDicomChange.export_id.in_(export_ids), ExportDicomChange.old_value.is_not(None)
        )
        .values(old_value=None)
        .execution_options(synchronize_session=False)
    )
