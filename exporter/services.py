"""Use cases shared by pages, API and CLI. Each opens its own unit of work.

Transports call these with the portal's settings and the signed-in user's e-mail; the
permission checks happen here (and below), never only in a transport.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from redis.exceptions import RedisError
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from exporter import schemas
from exporter.access import accounts, tokens
from exporter.access.audit import record
from exporter.archive.build import remove_outputs
from exporter.config import Settings

# What screens show that is computed below the services, offered here so that pages import
# only exporter.services, exporter.schemas and exporter.ui (the layer rule).
from exporter.dicom.values import CURATABLE_HINT as CURATABLE_HINT
from exporter.errors import (
    Gone,
    InvalidInput,
    InvalidOption,
    InvalidSelection,
    InvalidState,
    NotFound,
)
from exporter.jobs import releases as release_jobs
from exporter.jobs import tasks as jobs
from exporter.jobs import upkeep
from exporter.jobs.queue import connect
from exporter.records import curation, exports, preview, releases
from exporter.records.exports import Preflight
from exporter.records.exports import archive_bytes_estimate as archive_bytes_estimate
from exporter.records.exports import default_name as default_name
from exporter.records.exports import describe_privacy as describe_privacy
from exporter.records.preview import Preview
from exporter.registry import ingest
from exporter.registry import query as registry
from exporter.registry.query import ProjectOverview
from exporter.schemas import (
    POLICY_FLAGS,
    ChangeRow,
    Estimate,
    ExportRequest,
    ExportView,
    PolicyView,
    PrivateTag,
    ProjectPolicy,
    Refusal,
    RefusalReason,
    Selection,
)
from exporter.store import db
from exporter.store.modalities import seed_modalities
from exporter.store.models import (
    AuditEvent,
    DatasetExport,
    DatasetRelease,
    ExportDicomChange,
    ExportPatient,
    ExportStatus,
    Patient,
    Project,
    Role,
    User,
)

log = logging.getLogger(__name__)

DEMO_PROJECT = "demo"
OTHER_PROJECT = "other"
DEMO_USERS = (
    ("researcher@demo.example", DEMO_PROJECT, "researcher", "Rita Researcher"),
    ("manager@demo.example", DEMO_PROJECT, "data_manager", "Dana Manager"),
    ("outsider@other.example", OTHER_PROJECT, "researcher", "Otto Outsider"),
)
# Where the demo's data manager releases curated patients (make run and 'demo' add them):
# a destination with a researcher of its own, and an archive for the originals.
DEMO_RELEASED = "demo-released"
DEMO_ARCHIVE = "demo-archive"
DEMO_RELEASE_PROJECTS = (
    (DEMO_RELEASED, "Released for data science"),
    (DEMO_ARCHIVE, "Vault of originals (restricted)"),
)
DEMO_RELEASE_USERS = (
    ("manager@demo.example", DEMO_RELEASED, "data_manager", "Dana Manager"),
    ("manager@demo.example", DEMO_ARCHIVE, "data_manager", "Dana Manager"),
    ("scientist@demo.example", DEMO_RELEASED, "researcher", "Sam Scientist"),
)


# The demo project's data manager lets pseudonymised exports keep study dates and the
# patients' age and sex (a longitudinal dental cohort needs both); UIDs, device identity and
# every private tag (one of which copies the patient's name) are removed.
DEMO_POLICY = ProjectPolicy(retain_full_dates=True, retain_patient_characteristics=True)


def migrate(settings: Settings) -> None:
    """Create or upgrade the schema and seed the known modalities."""
    db.migrate(settings.database_url)
    with db.session_scope(settings) as session:
        seed_modalities(session)


def register(
    settings: Settings,
    project_slug: str,
    directory: Path,
    tags_csv: Path | None = None,
    prune: bool = False,
    reread: bool = False,
) -> ingest.IngestReport:
    """Register a directory tree (inside the data root) into a project (an operator's task)."""
    with db.session_scope(settings) as session:
        return ingest.register_directory(
            session, settings.data_root, project_slug, directory, tags_csv, prune, reread
        )


def add_project(settings: Settings, slug: str, name: str = "") -> ProjectSummary:
    """Create a project (with every active modality enabled), or return the existing one."""
    with db.session_scope(settings) as session:
        project = accounts.ensure_project(session, slug, name or None)
        count = session.scalar(
            select(func.count(Patient.id)).where(
                Patient.project_id == project.id, Patient.left_at.is_(None)
            )
        )
        return ProjectSummary(project.slug, project.name, count or 0)


@dataclass(frozen=True)
class UserResult:
    email: str
    project: str
    role: str
    created: bool


def add_user(
    settings: Settings,
    email: str,
    project_slug: str,
    role: str,
    name: str = "",
    is_admin: bool = False,
) -> UserResult:
    """Create a user (if new) and give them a role in a project."""
    with db.session_scope(settings) as session:
        user, created = accounts.add_user(session, email, project_slug, role, name, is_admin)
        return UserResult(user.email, project_slug, role, created)


@dataclass(frozen=True)
class ProjectSummary:
    slug: str
    name: str
    patients: int


def list_projects(settings: Settings) -> list[ProjectSummary]:
    """Every project with its patient count (an operator's command, not a user's)."""
    with db.session_scope(settings) as session:
        rows = session.execute(
            select(Project.slug, Project.name, func.count(Patient.id))
            .outerjoin(Patient, (Patient.project_id == Project.id) & Patient.left_at.is_(None))
            .group_by(Project.id)
            .order_by(Project.slug)
        )
        return [ProjectSummary(slug, name, count) for slug, name, count in rows]


@dataclass(frozen=True)
class DemoResult:
    loaded: bool
    message: str
    reports: tuple[ingest.IngestReport, ...] = ()


def load_demo(
    settings: Settings,
    patients: int = 12,
    seed: int = 1,
    scale: str = "small",
    only_if_empty: bool = False,
    release_projects: bool = False,
) -> DemoResult:
    """Write a synthetic imaging tree under the data root, register it, and add demo users.

    With ``only_if_empty`` nothing happens when the demo project already has patients (what
    ``make run`` uses, so demo data is loaded once). A demo directory that already holds files
    is registered as it is, never overwritten. ``release_projects``: also an empty
    destination and archive project for releases, managed by the demo's data manager.
    """
    from exporter.dev import demo_data

    with db.session_scope(settings) as session:
        count = session.scalar(
            select(func.count(Patient.id))
            .join(Project, Project.id == Patient.project_id)
            .where(Project.slug == DEMO_PROJECT)
        )
    if only_if_empty and count:
        if release_projects:
            _demo_release_projects(settings)
        return DemoResult(False, f"Demo data already loaded ({count} patients)")
    reports = []
    plan = (
        (DEMO_PROJECT, "Demo cohort", patients, seed),
        (OTHER_PROJECT, "Other study", 3, seed + 1),
    )
    for slug, name, n, s in plan:
        root = settings.data_root / slug
        tags_csv = settings.data_root / f"{slug}-tags.csv"
        if not root.exists() or not any(root.iterdir()):
            manifest = demo_data.write_demo_tree(root, patients=n, seed=s, scale=scale)
            demo_data.write_tags_csv(tags_csv, manifest)
        with db.session_scope(settings) as session:
            project = accounts.ensure_project(session, slug, name)
            if slug == DEMO_PROJECT and not project.privacy_policy:
                project.privacy_policy = DEMO_POLICY.to_json()
        reports.append(register(settings, slug, root, tags_csv if tags_csv.exists() else None))
    for email, slug, role, full_name in DEMO_USERS:
        add_user(settings, email, slug, role, full_name)
    if release_projects:
        _demo_release_projects(settings)
    total = sum(r.patients for r in reports)
    return DemoResult(
        True, f"Demo data loaded: {total} patients in {len(reports)} projects", tuple(reports)
    )


def _demo_release_projects(settings: Settings) -> None:
    for slug, name in DEMO_RELEASE_PROJECTS:
        add_project(settings, slug, name)
    for email, slug, role, full_name in DEMO_RELEASE_USERS:
        add_user(settings, email, slug, role, full_name)


def estimate(
    settings: Settings, user_email: str, project_slug: str, selection: Selection
) -> Estimate:
    """The live count and size estimate of a selection, for a member of the project."""
    problems = exports.selection_problems(selection, settings.max_list_items)
    if problems:
        field, why = next(iter(problems.items()))
        raise InvalidSelection(f"{field!r} {why}")
    with db.session_scope(settings) as session:
        user = accounts.principal_for(session, user_email)
        return registry.estimate(session, user, project_slug, selection)


def modality_keys(settings: Settings, user_email: str, project_slug: str) -> list[str]:
    """The modalities enabled in a project (for the New export page's ticks)."""
    with db.session_scope(settings) as session:
        user = accounts.principal_for(session, user_email)
        return registry.modality_keys(session, user, project_slug)


def overview(settings: Settings, user_email: str) -> list[ProjectOverview]:
    """The registry per project and modality, for the projects the user belongs to."""
    with db.session_scope(settings) as session:
        user = accounts.principal_for(session, user_email)
        return registry.overview(session, user)


# --- exports ----------------------------------------------------------------------------


def check_request(settings: Settings, request: ExportRequest) -> None:
    """Refuse a request over the portal's limits (``MAX_LIST_ITEMS``, ``MAX_NOTES_LENGTH``,
    ``MAX_NAME_LENGTH``) or holding text that cannot be stored, naming the field, before
    any of it reaches the database (pages and the CLI get here; the API checks first)."""
    problems = exports.request_problems(
        request, settings.max_list_items, settings.max_notes_length, settings.max_name_length
    )
    if problems:
        field, why = next(iter(problems.items()))
        raise InvalidInput(f"{field!r} {why}")


def _room(settings: Settings) -> exports.Room:
    """Whether the export root has room for an export of so many bytes, and the reserve."""

    def room(needed: int) -> Refusal | None:
        settings.export_root.mkdir(parents=True, exist_ok=True)
        if shutil.disk_usage(settings.export_root).free >= needed + settings.disk_reserve_bytes:
            return None
        return Refusal(
            RefusalReason.DISK,
            "Not enough free space at the export root for this export: "
            "choose fewer patients or modalities, or ask an administrator",
        )

    return room


def preflight_export(
    settings: Settings,
    user_email: str,
    project_slug: str,
    request: ExportRequest,
    known: Estimate | None = None,
) -> Preflight:
    """Whether ``request`` would be accepted now, with the estimate and quota behind it.

    ``known``: an estimate of the request's selection the caller already made (the New
    export page's, for its modality list), so that one click computes the estimate once.
    """
    check_request(settings, request)
    with db.session_scope(settings) as session:
        user = accounts.principal_for(session, user_email)
        return exports.preflight(
            session,
            user,
            project_slug,
            request,
            settings.max_export_bytes,
            settings.user_quota_bytes,
            _room(settings),
            known,
        )


def create_export(
    settings: Settings,
    user_email: str,
    project_slug: str,
    request: ExportRequest,
    checked: Preflight | None = None,
) -> ExportView:
    """Validate and save an export, enqueue its job, and return at once.

    ``checked``: the preflight the caller just showed for this very request; its estimate is
    used instead of a new one (the quota and the twin are checked again in the transaction).
    The same request again within ``exports.DOUBLE_SUBMIT_SECONDS`` returns the first
    export, pending, processing, completed or failed: however many arrive at once, one is
    saved (the database's unique request key holds it). A refusal raises the error its
    reason names: InvalidSelection, LimitExceeded or NotEnoughSpace.
    """
    check_request(settings, request)
    with db.session_scope(settings) as session:  # a twin is answered without the lock
        user = accounts.principal_for(session, user_email)
        twin = exports.find_twin(session, user, project_slug, request)
        twin_id = twin.id if twin is not None else None
    if twin_id is not None:
        return get_export(settings, user_email, twin_id)
    for attempt in (1, 2):
        try:
            with db.session_scope(settings) as session:
                user = accounts.principal_for(session, user_email)
                row, created = exports.create(
                    session,
                    user,
                    project_slug,
                    request,
                    settings.max_export_bytes,
                    settings.user_quota_bytes,
                    _room(settings),
                    checked,
                )
                export_id = row.id
            break
        except IntegrityError:
            # An identical request was saved between our look and our insert (the unique
            # request key refused the second): run again, and get that one back.
            if attempt == 2:
                raise
    if created:
        try:
            job_id = jobs.enqueue(settings, row)
        except RedisError as exc:  # the reconciler enqueues it when the queue is back
            log.warning("export %s saved but not queued: %s", export_id, exc)
            job_id = None
        with db.session_scope(settings) as session:
            saved = session.get(DatasetExport, export_id)
            if saved is not None:
                saved.job_id = job_id
    return get_export(settings, user_email, export_id)


def get_export(settings: Settings, user_email: str, export_id: str) -> ExportView:
    """One export the user may see."""
    with db.session_scope(settings) as session:
        user = accounts.principal_for(session, user_email)
        return exports.view(session, exports.get_row(session, user, export_id))


def list_exports(
    settings: Settings,
    user_email: str,
    project_slug: str | None = None,
    status: str | None = None,
    limit: int = 100,
    offset: int = 0,
    mine: bool = False,
    text: str = "",
) -> list[ExportView]:
    """Exports the user may see, newest first: researchers their own, data managers all
    (``mine``: their own only); ``text`` filters on the name and notes."""
    with db.session_scope(settings) as session:
        user = accounts.principal_for(session, user_email)
        rows = exports.list_rows(
            session, user, project_slug, status, limit, offset, mine=mine, text=text[:200]
        )
        return [exports.view(session, row) for row in rows]


def cancel_export(settings: Settings, user_email: str, export_id: str) -> ExportView:
    """Cancel a pending or processing export; a processing one stops within 2 seconds."""
    with db.session_scope(settings) as session:
        user = accounts.principal_for(session, user_email)
        row = exports.get_row(session, user, export_id)
        if not exports.mark_cancelled(session, user, row):
            raise InvalidState(f"Export {row.name!r} is {row.status.value}: nothing to cancel")
        job_id, export_id = row.job_id, row.id
    if job_id:
        with contextlib.suppress(RedisError, NoSuchJobError):
            job = Job.fetch(job_id, connection=connect(settings))
            if job.get_status() in (JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED):
                job.cancel()
    upkeep.cancel_running(settings, export_id)
    return get_export(settings, user_email, export_id)


def delete_export(settings: Settings, user_email: str, export_id: str) -> ExportView:
    """Remove an export's files at once (cancelling it first if it runs); keep its record."""
    view = get_export(settings, user_email, export_id)
    if view.status in ("pending", "processing"):
        cancel_export(settings, user_email, export_id)
    with db.session_scope(settings) as session:
        user = accounts.principal_for(session, user_email)
        row = exports.get_row(session, user, export_id)
        exports.mark_deleted(
            session, user, row, lambda: remove_outputs(settings.export_root / row.id)
        )
        exports.forget_old_values(session, [row.id])
    return get_export(settings, user_email, export_id)


def housekeeping(settings: Settings) -> dict[str, int]:
    """Fail exports whose worker died, re-enqueue lost ones, expire old files, finish the
    deletions of moved-out patients' source files that a stopped release left."""
    counts = upkeep.reconcile(settings)
    counts["expired"] = upkeep.expire(settings)
    counts["moved_out_files_deleted"] = upkeep.finish_moves(settings)
    return counts


def again_request(view: ExportView, max_name: int = 100) -> ExportRequest:
    """The request of an earlier export, to make it again: its selection and options as
    stored, its notes, and its name marked "again" (a new name: the request is new)."""
    options = view.options
    return ExportRequest(
        schemas.Selection.from_dict(view.criteria),
        name=schemas.again_name(view.name, max_name),
        notes=view.notes,
        compression=str(options.get("compression", "fast")),
        part_size=options.get("max_part_bytes"),
        privacy=schemas.legacy_level(options),
        fresh_pseudonyms=bool(options.get("fresh_pseudonyms")),
        skip_missing=bool(options.get("skip_missing")),
        shift_dates=bool(options.get("shift_dates", True)),
        clean_descriptors=bool(options.get("clean_descriptors")),
    )


def retry_any_export(settings: Settings, user_email: str, export_id: str) -> ExportView:
    """Retry a failed export from the page: the failed parts of a multi-part export (its
    finished parts kept), else a new export of the same request (``again_request``)."""
    view = get_export(settings, user_email, export_id)
    if view.status != "failed":
        raise InvalidState(
            f"Export {view.name!r} is {view.status}: only a failed export can be retried"
        )
    if len(view.parts) > 1:
        return retry_export(settings, user_email, export_id)
    again = again_request(view, settings.max_name_length)
    with db.session_scope(settings) as session:
        user = accounts.principal_for(session, user_email)
        made = exports.made_again(session, user, view.project, again)
        if made is not None:
            raise InvalidState(
                f"Export {view.name!r} was retried already: {made.name!r} is "
                f"{made.status.value}; follow that one"
            )
    return create_export(settings, user_email, view.project, again)


def retry_export(settings: Settings, user_email: str, export_id: str) -> ExportView:
    """Re-run only the failed parts of a failed multi-part export (finished parts are kept)."""
    with db.session_scope(settings) as session:
        user = accounts.principal_for(session, user_email)
        row = exports.get_row(session, user, export_id)
        if row.status is not ExportStatus.FAILED or row.part_count < 2:
            raise InvalidState(
                f"Export {row.name!r} is {row.status.value}: only a failed export of several "
                "parts can be retried; create a new export instead"
            )
        project = session.get(Project, row.project_id)
        assert project is not None
        access = accounts.require_project(session, user, project.slug)
        exports.require_level(session, access, str(row.options.get("privacy", "")))
        if "privacy" not in row.options:  # its finished parts were built the old way
            raise InvalidState(
                f"Export {row.name!r} was made before privacy levels: its remaining parts "
                "cannot be built the same way; create a new export instead"
            )
        record(session, "retry", user.id, row.project_id, row.id, {})
    if upkeep.retry_parts(settings, export_id) == 0:
        raise InvalidState("Nothing to retry: the finished parts of this export are gone")
    return get_export(settings, user_email, export_id)


@dataclass(frozen=True)
class DownloadTarget:
    path: Path
    filename: str
    size: int
    part: int = 1


def download_target(
    settings: Settings,
    user_email: str,
    project_slug: str,
    export_id: str,
    part: int | None = None,
    range_header: str | None = None,
    audit: bool = True,
) -> DownloadTarget:
    """The file to send for a download, after the permission checks; records the download
    (with ``audit``: a HEAD request only asks about the file and is not recorded).

    ``part`` is 1-based; without it the export must have a single part. The audit keeps
    a short parsed form of ``range_header`` (:func:`range_summary`), never the header.
    """
    with db.session_scope(settings) as session:
        user = accounts.principal_for(session, user_email)
        row = exports.get_row(session, user, export_id)
        project = session.get(Project, row.project_id)
        if project is None or project.slug != project_slug:
            raise NotFound(f"No export {export_id!r} that you can see")
        exports.require_downloadable(row)
        paths = [Path(p) for p in row.output_paths]
        number = 1 if part is None else part  # not ``part or 1``: part 0 is no part
        if part is None and len(paths) > 1:
            raise InvalidState(
                f"Export {row.name!r} has {len(paths)} parts: download them one by one"
            )
        if not 1 <= number <= len(paths):
            raise NotFound(
                f"Export {row.name!r} has no part {number}: parts are numbered "
                f"from 1 to {len(paths)}"
            )
        path = paths[number - 1]
        export_dir = (settings.export_root / row.id).resolve()
        if path.parent.resolve() != export_dir or not path.is_file():
            raise Gone(
                f"The file of export {row.name!r} is no longer on the server: create the "
                "export again"
            )
        if audit:
            record(
                session,
                "download",
                user.id,
                row.project_id,
                row.id,
                {"part": number, **range_summary(range_header)},
            )
        return DownloadTarget(path, path.name, path.stat().st_size, number)


def record_download(
    settings: Settings, user_email: str, export_id: str, part: int, range_header: str | None
) -> None:
    """Record a download that is being served (the caller found the file with
    :func:`download_target` and ``audit=False``, and is answering 200 or 206)."""
    with db.session_scope(settings) as session:
        user = accounts.principal_for(session, user_email)
        row = exports.get_row(session, user, export_id)
        details = {"part": part, **range_summary(range_header)}
        record(session, "download", user.id, row.project_id, row.id, details)


# bytes=START-END, either may be missing ("1000-", "-500"); digits bounded (2**64 has 20).
_RANGE = re.compile(r"\s*bytes\s*=\s*([0-9]{0,20})\s*-\s*([0-9]{0,20})\s*(?:,|$)")


def range_summary(header: str | None) -> dict[str, object]:
    """What the audit keeps of a Range header: the first range as ``"bytes=0-999"``,
    ``"bytes=1000-"`` or ``"bytes=-500"``, and how many ranges there were when more than
    one; ``"unreadable"`` for anything else. Never the header itself: a client may send any
    size of it."""
    if header is None:
        return {}
    found = _RANGE.match(header[:64])
    if found is None or not (found[1] or found[2]):
        return {"range": "unreadable"}
    summary: dict[str, object] = {"range": f"bytes={found[1]}-{found[2]}"}
    count = header.count(",") + 1
    if count > 1:
        summary["ranges"] = count
    return summary


def project_tree(settings: Settings, user_email: str, project_slug: str) -> registry.ProjectTree:
    """Folders, patients and tags for the selection page (bounded by UI_ROW_CAP)."""
    with db.session_scope(settings) as session:
        user = accounts.principal_for(session, user_email)
        return registry.project_tree(session, user, project_slug, settings.ui_row_cap)


def projects_of(settings: Settings, user_email: str) -> list[accounts.ProjectAccess]:
    """The projects the user may work in, with their role."""
    with db.session_scope(settings) as session:
        return accounts.accessible_projects(session, accounts.principal_for(session, user_email))


@dataclass(frozen=True)
class AuditEntry:
    at: datetime
    action: str
    user: str
    detail: dict[str, object]


def export_audit(settings: Settings, user_email: str, export_id: str) -> list[AuditEntry]:
    """Who did what to an export, oldest first (for anyone who may see the export)."""
    with db.session_scope(settings) as session:
        user = accounts.principal_for(session, user_email)
        row = exports.get_row(session, user, export_id)
        events = session.execute(
            select(AuditEvent, User.email)
            .outerjoin(User, User.id == AuditEvent.user_id)
            .where(AuditEvent.export_id == row.id)
            .order_by(AuditEvent.at, AuditEvent.id)
        ).all()
        return [
            AuditEntry(exports.as_utc(e.at), e.action, email or "portal", dict(e.detail))
            for e, email in events
        ]


def create_token(settings: Settings, user_email: str, name: str) -> tuple[str, tokens.TokenView]:
    """A personal API token for the user; the secret is returned once and never stored."""
    with db.session_scope(settings) as session:
        return tokens.create(session, accounts.principal_for(session, user_email), name)


def list_tokens(settings: Settings, user_email: str) -> list[tokens.TokenView]:
    with db.session_scope(settings) as session:
        return tokens.list_for(session, accounts.principal_for(session, user_email))


def revoke_token(settings: Settings, user_email: str, token_id: int) -> tokens.TokenView:
    with db.session_scope(settings) as session:
        return tokens.revoke(session, accounts.principal_for(session, user_email), token_id)


def token_owner(settings: Settings, secret: str) -> str:
    """The e-mail behind a bearer token (raises NotSignedIn)."""
    with db.session_scope(settings) as session:
        return tokens.email_for(session, secret)


def export_manifest(settings: Settings, user_email: str, export_id: str) -> dict[str, object]:
    """The summary of a completed export's manifest.json (parts, files, bytes), or {}."""
    import json

    view = get_export(settings, user_email, export_id)
    path = settings.export_root / view.id / "manifest.json"
    if view.status != "completed" or not path.is_file():
        return {}
    manifest = json.loads(path.read_text())
    return {"totals": manifest.get("totals", {}), "parts": manifest.get("parts", [])}


# --- privacy: the project's policy, the re-identification key, the residual check ----------


def project_privacy(settings: Settings, user_email: str, project_slug: str) -> PolicyView:
    """What the project's data managers allow (any member may read it: it says what a
    pseudonymised export keeps)."""
    with db.session_scope(settings) as session:
        user = accounts.principal_for(session, user_email)
        access = accounts.require_project(session, user, project_slug)
        return PolicyView(
            access.slug,
            exports.policy_of(session, access.project_id),
            access.role is Role.DATA_MANAGER,
            exports.data_managers(session, access.project_id),
        )


def set_project_privacy(
    settings: Settings,
    user_email: str,
    project_slug: str,
    flags: dict[str, bool] | None = None,
    keep_private: list[str] | None = None,
    drop_private: list[str] | None = None,
) -> PolicyView:
    """Change the project's policy (data managers only; audited). Exports already created
    keep the policy they were made with."""
    with db.session_scope(settings) as session:
        user = accounts.principal_for(session, user_email)
        access = accounts.require_project(session, user, project_slug, Role.DATA_MANAGER)
        policy = exports.policy_of(session, access.project_id)
        unknown = set(flags or {}) - set(POLICY_FLAGS)
        if unknown:
            raise InvalidOption(
                f"Policy setting {sorted(unknown)[0]!r} is not known: use {', '.join(POLICY_FLAGS)}"
            )
        try:
            kept = set(policy.kept_private) | {PrivateTag.parse(t) for t in keep_private or []}
            kept -= {PrivateTag.parse(t) for t in drop_private or []}
        except ValueError as exc:
            raise InvalidOption(str(exc)) from None
        new = dataclasses.replace(policy, **(flags or {}), kept_private=tuple(sorted(kept)))
        project = session.get(Project, access.project_id)
        assert project is not None
        project.privacy_policy = new.to_json()
        changed = {k: v for k, v in new.to_json().items() if policy.to_json()[k] != v}
        record(session, "privacy-policy", user.id, access.project_id, None, changed)
        return PolicyView(access.slug, new, True, exports.data_managers(session, access.project_id))


def _managed_export(
    session: Session, user_email: str, export_id: str
) -> tuple[accounts.Principal, DatasetExport]:
    """The user and an export they see as a data manager of its project (what identifies
    patients: old values, the key, the check's report)."""
    user = accounts.principal_for(session, user_email)
    row = exports.get_row(session, user, export_id)
    project = session.get(Project, row.project_id)
    assert project is not None
    accounts.require_project(session, user, project.slug, Role.DATA_MANAGER)
    return user, row


@dataclass(frozen=True)
class KeyRow:
    """One line of an export's re-identification key (data managers only)."""

    pseudonym: str
    label: str
    date_shift_days: int | None
    stable: bool  # the project's stable pseudonym (else fresh for this export)


def export_key(settings: Settings, user_email: str, export_id: str) -> list[KeyRow]:
    """Which patient each folder of an export is: the project's data managers only; every
    reading is an audit event."""
    with db.session_scope(settings) as session:
        user, row = _managed_export(session, user_email, export_id)
        found = session.execute(
            select(ExportPatient.pseudonym, Patient.label, ExportPatient.date_shift_days)
            .join(Patient, Patient.id == ExportPatient.patient_id)
            .where(ExportPatient.export_id == row.id)
        ).all()
        record(session, "read-key", user.id, row.project_id, row.id, {"patients": len(found)})
        fresh = bool(row.options.get("fresh_pseudonyms"))
        rows = [KeyRow(p, label, shift, not fresh) for p, label, shift in found]
        return sorted(rows, key=lambda r: (len(r.pseudonym), r.pseudonym))


def export_privacy_report(
    settings: Settings, user_email: str, export_id: str
) -> dict[str, object] | None:
    """The residual-identifier check's report of an export (files, places and kinds, never
    a value), for the project's data managers; None before the check ran."""
    with db.session_scope(settings) as session:
        _, row = _managed_export(session, user_email, export_id)
        return dict(row.privacy_report) if row.privacy_report else None


# --- curation, preview and the change log ------------------------------------------------


def patient_series(
    settings: Settings, user_email: str, project_slug: str, patient: str
) -> list[schemas.SeriesInfo]:
    """A patient's DICOM series, for data managers of the project."""
    with db.session_scope(settings) as session:
        user = accounts.principal_for(session, user_email)
        return curation.patient_series(session, user, project_slug, patient)


def series_files(
    settings: Settings, user_email: str, project_slug: str, patient: str, series: str
) -> list[tuple[int, str]]:
    """(file id, path) of a series' files, for data managers of the project."""
    with db.session_scope(settings) as session:
        user = accounts.principal_for(session, user_email)
        return curation.series_files(session, user, project_slug, patient, series)


def header_fields(
    settings: Settings,
    user_email: str,
    project_slug: str,
    patient: str,
    series: str,
    file_id: int | None = None,
) -> list[schemas.HeaderField]:
    """One file's header fields with the curated values in force (data managers)."""
    with db.session_scope(settings) as session:
        user = accounts.principal_for(session, user_email)
        return curation.header_fields(
            session, user, project_slug, settings.data_root, patient, series, file_id
        )


def curate(
    settings: Settings,
    user_email: str,
    project_slug: str,
    targets: list[schemas.Target],
    field_name: str,
    value: str | None,
) -> list[schemas.CuratedValue]:
    """Set (or, with ``value`` None, clear) a curated field on files, series or patients."""
    with db.session_scope(settings) as session:
        user = accounts.principal_for(session, user_email)
        done = curation.curate(
            session, user, project_slug, settings.data_root, targets, field_name, value
        )
        project_id = accounts.require_project(session, user, project_slug).project_id
        record(
            session,
            "curate",
            user.id,
            project_id,
            None,
            {"field": field_name, "targets": len(done), "cleared": value is None},
        )
        return done


def import_curation(
    settings: Settings, user_email: str, project_slug: str, rows: list[schemas.CurationRow]
) -> list[schemas.CuratedValue]:
    """Apply curation rows as one edit: every row is validated (patient, series, field and
    value, as ``curate`` does) in one transaction, and if any row is wrong nothing is applied
    and the error names each wrong line."""
    with db.session_scope(settings) as session:
        user = accounts.principal_for(session, user_email)
        access = accounts.require_project(session, user, project_slug, Role.DATA_MANAGER)
        done: list[schemas.CuratedValue] = []
        wrong: list[str] = []
        for row in rows:
            target = schemas.Target(row.patient, row.series or None)
            try:  # a wrong row is refused before it writes; any refusal rolls all back
                done += curation.curate(
                    session, user, project_slug, settings.data_root, [target], row.field, row.value
                )
            except (InvalidInput, NotFound) as exc:  # a patient or series it does not have
                wrong.append(f"line {row.line}: {exc}")
        if wrong:
            raise InvalidInput("Nothing was applied; fix these lines: " + "; ".join(wrong[:20]))
        details = {"imported_rows": len(rows), "targets": len(done)}
        record(session, "curate", user.id, access.project_id, None, details)
        return done


def import_curation_csv(
    settings: Settings, user_email: str, project_slug: str, data: bytes
) -> tuple[int, list[schemas.CuratedValue]]:
    """A curation CSV file (UTF-8, ``patient,series,field,value``) applied with
    :func:`import_curation`, all or nothing, every wrong line named: (rows, edits)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("The file is not UTF-8 text: save it as CSV (UTF-8)") from None
    rows = curation.parse_csv(text)
    return len(rows), import_curation(settings, user_email, project_slug, rows)


def restore_curation(
    settings: Settings, user_email: str, project_slug: str, value_id: int
) -> schemas.CuratedValue:
    """Put an earlier curated value back in force (a new edit, kept in the history)."""
    with db.session_scope(settings) as session:
        user = accounts.principal_for(session, user_email)
        done = curation.restore(session, user, project_slug, settings.data_root, value_id)
        project_id = accounts.require_project(session, user, project_slug).project_id
        record(session, "curate", user.id, project_id, None, {"restored": value_id})
        return done


def curation_history(
    settings: Settings, user_email: str, project_slug: str, patient: str
) -> list[schemas.CuratedValue]:
    """Every curation edit of a patient, newest first (data managers)."""
    with db.session_scope(settings) as session:
        user = accounts.principal_for(session, user_email)
        return curation.history(session, user, project_slug, patient)


def preview_export(
    settings: Settings, user_email: str, project_slug: str, request: ExportRequest
) -> Preview:
    """The DICOM header changes the export would make, for one file per selected series.

    Old values are shown to the project's data managers only (they identify patients), as
    in the export's change log; others see what the export writes.
    """
    check_request(settings, request)
    with db.session_scope(settings) as session:
        user = accounts.principal_for(session, user_email)
        access = accounts.require_project(session, user, project_slug)
        policy = exports.require_level(session, access, request.privacy)
        manager = access.role is Role.DATA_MANAGER
        found = preview.preview(
            session,
            user,
            project_slug,
            request.selection,
            request.options(policy),
            settings.data_root,
            access.project_id,
            linked=manager,
        )
        if access.role is not Role.DATA_MANAGER:
            rows = [dataclasses.replace(r, old_value=None) for r in found.rows]
            found = dataclasses.replace(found, rows=rows)
        return found


@dataclass(frozen=True)
class ChangeLog:
    rows: list[ChangeRow]
    total: int


def export_change_counts(
    settings: Settings, user_email: str, export_ids: list[str]
) -> dict[str, int]:
    """How many DICOM changes each export logged, for the exports of projects the user
    manages (one query for a page of exports; others get nothing)."""
    with db.session_scope(settings) as session:
        user = accounts.principal_for(session, user_email)
        managed = [
            a.project_id
            for a in accounts.accessible_projects(session, user)
            if a.role is Role.DATA_MANAGER
        ]
        if not managed or not export_ids:
            return {}
        rows = session.execute(
            select(ExportDicomChange.export_id, func.count())
            .join(DatasetExport, DatasetExport.id == ExportDicomChange.export_id)
            .where(
                ExportDicomChange.export_id.in_(export_ids[:1000]),
                DatasetExport.project_id.in_(managed),
            )
            .group_by(ExportDicomChange.export_id)
        )
        return {export_id: count for export_id, count in rows}  # noqa: C416 (rows)


def export_changes(
    settings: Settings, user_email: str, export_id: str, limit: int = 1000
) -> ChangeLog:
    """The complete DICOM change log of an export, old values included: data managers of
    the export's project only (old values identify patients)."""
    with db.session_scope(settings) as session:
        _, row = _managed_export(session, user_email, export_id)
        query = select(ExportDicomChange).where(ExportDicomChange.export_id == row.id)
        total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
        found = session.scalars(
            query.order_by(ExportDicomChange.part, ExportDicomChange.id).limit(min(limit, 10_000))
        )
        keys = session.execute(
            select(ExportPatient.pseudonym, Patient.label)
            .join(Patient, Patient.id == ExportPatient.patient_id)
            .where(ExportPatient.export_id == row.id)
        )
        labels = {pseudonym: label for pseudonym, label in keys}  # noqa: C416 (rows, not pairs)
        rows = [
            ChangeRow(
                patient=labels.get(c.path.split("/")[0], ""),
                path=c.path,
                tag=c.tag,
                keyword=c.keyword,
                old_value=c.old_value,
                new_value=c.new_value,
                reason=c.reason,
                action=c.action,
                part=c.part,
                files=c.file_count,
            )
            for c in found
        ]
        return ChangeLog(rows, total)


# --- releases ------------------------------------------------------------------------------


def _data_room(settings: Settings) -> exports.Room:
    """Whether the data root has room for a release of so many bytes, and the reserve."""

    def room(needed: int) -> Refusal | None:
        if shutil.disk_usage(settings.data_root).free >= needed + settings.disk_reserve_bytes:
            return None
        return Refusal(
            RefusalReason.DISK,
            "Not enough free space in the data root for this release: choose fewer patients "
            "or modalities, or ask an administrator",
        )

    return room


def create_release(
    settings: Settings, user_email: str, project_slug: str, request: schemas.ReleaseRequest
) -> schemas.ReleaseView:
    """Check and save a release of ``project_slug`` (the source), enqueue its job, return
    at once. Refused before queueing: a destination or archive the user does not manage
    (NotFound, PermissionDenied), the source itself as destination, an empty selection, a
    destination whose labels a release would take, an identified release (InvalidInput),
    too little space (NotEnoughSpace)."""
    problems = exports.selection_problems(request.selection, settings.max_list_items)
    for key, value, limit in (
        ("name", request.name, settings.max_name_length),
        ("notes", request.notes, settings.max_notes_length),
        ("destination", request.destination, 64),
        ("archive", request.archive or "", 64),
    ):
        why = exports.text_problem(value, multiline=key == "notes")
        if why is None and len(value.strip()) > limit:
            why = f"is longer than {limit} characters: shorten it"
        if why is not None:
            problems[key] = why
    if problems:
        field, why = next(iter(problems.items()))
        raise InvalidInput(f"{field!r} {why}")
    with db.session_scope(settings) as session:
        user = accounts.principal_for(session, user_email)
        row = releases.create(
            session, user, project_slug, request, settings.data_root, _data_room(settings)
        )
        release_id = row.id
        estimated = row.estimated_bytes
        name = row.name
    _queue_release(settings, release_id, estimated, name)
    return get_release(settings, user_email, release_id)


def _queue_release(settings: Settings, release_id: str, estimated: int, name: str) -> None:
    """Enqueue a pending release's job and note its id; with Redis down it stays pending,
    and the reconciler queues it when Redis is back."""
    try:
        job_id = release_jobs.enqueue(settings, release_id, estimated, name)
    except RedisError as exc:
        log.warning("release %s is pending but not queued: %s", release_id, exc)
        job_id = None
    with db.session_scope(settings) as session:
        saved = session.get(DatasetRelease, release_id)
        if saved is not None:
            saved.job_id = job_id


def get_release(settings: Settings, user_email: str, release_id: str) -> schemas.ReleaseView:
    """One release out of a project the user manages."""
    with db.session_scope(settings) as session:
        user = accounts.principal_for(session, user_email)
        return releases.view(session, releases.get_row(session, user, release_id))


def list_releases(
    settings: Settings, user_email: str, project_slug: str | None = None, limit: int = 100
) -> list[schemas.ReleaseView]:
    """Releases out of the projects the user manages, newest first."""
    with db.session_scope(settings) as session:
        user = accounts.principal_for(session, user_email)
        rows = releases.list_rows(session, user, project_slug, limit)
        return [releases.view(session, row) for row in rows]


def cancel_release(settings: Settings, user_email: str, release_id: str) -> schemas.ReleaseView:
    """Cancel a pending or processing release: it stops at the next file; what it wrote
    and registered stays (the same release run again goes on from there)."""
    with db.session_scope(settings) as session:
        user = accounts.principal_for(session, user_email)
        row = releases.get_row(session, user, release_id)
        if not releases.mark_cancelled(session, user, row):
            raise InvalidState(f"Release {row.name!r} is {row.status.value}: nothing to cancel")
        job_id = row.job_id
    if job_id:
        with contextlib.suppress(RedisError, NoSuchJobError):
            job = Job.fetch(job_id, connection=connect(settings))
            if job.get_status() in (JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED):
                job.cancel()
    return get_release(settings, user_email, release_id)


def retry_release(settings: Settings, user_email: str, release_id: str) -> schemas.ReleaseView:
    """Run a failed or cancelled release again: files it registered are not written again."""
    with db.session_scope(settings) as session:
        user = accounts.principal_for(session, user_email)
        row = releases.get_row(session, user, release_id)
        if not releases.retry(session, user, row):
            raise InvalidState(
                f"Release {row.name!r} is {row.status.value}: only a failed or cancelled "
                "release can run again"
            )
        estimated, name = row.estimated_bytes, row.name
    _queue_release(settings, release_id, estimated, name)
    return get_release(settings, user_email, release_id)


def release_log(settings: Settings, user_email: str, release_id: str) -> bytes:
    """``release_log.csv``: per patient, series and file, what the release did."""
    return release_log_table(settings, user_email, release_id)[1]


def release_log_table(
    settings: Settings, user_email: str, release_id: str
) -> tuple[list[dict[str, object]], bytes]:
    """The release log's rows (for a page's tables) and the same as ``release_log.csv``,
    read once."""
    with db.session_scope(settings) as session:
        user = accounts.principal_for(session, user_email)
        row = releases.get_row(session, user, release_id)
        rows = list(releases.log_rows(session, row.id))
    return rows, releases.log_csv(rows)


def release_changes(settings: Settings, user_email: str, release_id: str) -> bytes:
    """The release's per-field DICOM changes, as ``dicom_changes.csv`` (new values only)."""
    with db.session_scope(settings) as session:
        user = accounts.principal_for(session, user_email)
        row = releases.get_row(session, user, release_id)
        return releases.changes_csv(session, row.id)


def file_history(
    settings: Settings, user_email: str, project_slug: str, path: str
) -> list[schemas.FileVersion]:
    """Which release wrote which version of a file of a destination or archive project."""
    with db.session_scope(settings) as session:
        user = accounts.principal_for(session, user_email)
        return releases.file_history(session, user, project_slug, path)


def patient_links(settings: Settings, user_email: str, project_slug: str) -> list[releases.LinkRow]:
    """The source project's patients and the destination patients they became (the
    re-identification key of its releases): its data managers only."""
    with db.session_scope(settings) as session:
        user = accounts.principal_for(session, user_email)
        return releases.links(session, user, project_slug)
