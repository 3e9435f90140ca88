"""The RQ jobs that build exports (their upkeep is in ``exporter.jobs.upkeep``).

The queue carries only export ids; the database row is the record. ``run_export`` builds a
one-part export itself; a larger one is split into part jobs that any free worker takes, and
a final job writes the manifest and completes the export (a failed part fails the export).
Progress and a heartbeat are written to the row at most once a second; cancellation is the
row's status, read at most twice a second while building. Each status change is a function
of ``exporter.records.exports``; the jobs call them through ``db.retrying`` (outages).
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from redis import Redis
from rq.job import Dependency
from sqlalchemy import insert, select, update

from exporter.access.accounts import Principal, require_project
from exporter.archive.build import (
    ExportInfo,
    ManifestPart,
    PartBuilder,
    PartResult,
    Progress,
    check_free_space,
    export_transform,
    part_filename,
    part_paths,
    plan_export,
    remove_outputs,
    write_manifest,
)
from exporter.archive.layout import PlannedFile, PlannedPart
from exporter.archive.residual import (
    Needles,
    PatientFacts,
    identifying_texts,
    merge_reports,
    part_needles,
)
from exporter.archive.transform import Change, HeaderRewriter
from exporter.config import Settings
from exporter.dicom import rules as curation_rules
from exporter.errors import ExportCancelled, PortalError, PrivacyCheckFailed
from exporter.jobs import mail
from exporter.jobs.queue import export_queue
from exporter.records import curation, exports, pseudonyms
from exporter.registry import query as registry
from exporter.registry.query import files_by_id, select_files
from exporter.schemas import ExportOptions, FileEntry, Selection
from exporter.store import db
from exporter.store.models import (
    DatasetExport,
    ExportDicomChange,
    ExportPart,
    ExportPatient,
    ExportStatus,
    User,
)

log = logging.getLogger(__name__)
UNEXPECTED = "The export failed unexpectedly; the administrators can see the details"
DB_LOST = (
    "The database could not be reached while this export was built (it restarted or the "
    "network failed); create it again"
)


def job_timeout(estimated_bytes: int) -> int:
    """Seconds an export job may run: generous for slow disks (10 MB/s), never RQ's 180 s."""
    return 900 + estimated_bytes // 10_000_000


def enqueue(settings: Settings, row: DatasetExport, connection: Redis | None = None) -> str:
    """Put the export's job on the queue; returns the job id (stored on the row)."""
    queue = export_queue(settings, connection)
    job = queue.enqueue(
        "exporter.jobs.tasks.run_export",
        row.id,
        job_id=f"export-{row.id}-{row.retry_count}",
        job_timeout=job_timeout(row.estimated_bytes),
        result_ttl=3600,
        failure_ttl=7 * 86400,
        description=f"export {row.name}",
    )
    return str(job.id)


class _Watch:
    """Progress writes (at most once a second) and cancel checks (at most twice a second)."""

    def __init__(self, settings: Settings, export_id: str, part_id: int | None = None) -> None:
        self.settings = settings
        self.export_id = export_id
        self.part_id = part_id
        self.lock = threading.Lock()
        self.checked = 0.0
        self.written = 0.0
        self.cancelled_flag = False
        self.reported_bytes = 0
        self.reported_files = 0

    def cancelled(self) -> bool:
        with self.lock:
            now = time.monotonic()
            if not self.cancelled_flag and now - self.checked >= 0.5:
                self.checked = now
                try:
                    with db.session_scope(self.settings) as session:
                        status = session.scalar(
                            select(DatasetExport.status).where(DatasetExport.id == self.export_id)
                        )
                except Exception as exc:  # an outage cancels nothing: ask again later
                    if not db.is_outage(exc):
                        raise
                    return False
                self.cancelled_flag = status is not ExportStatus.PROCESSING
            return self.cancelled_flag

    def progress(self, p: Progress) -> None:
        now = time.monotonic()
        if now - self.written < 1.0 and p.files_done != p.files_total:
            return
        self.written = now
        try:
            self._write(p)
        except Exception as exc:  # progress is best effort: the next write catches up
            if not db.is_outage(exc):
                raise
            log.warning("export %s: progress not saved, database unreachable", self.export_id)

    def _write(self, p: Progress) -> None:
        delta_bytes = p.bytes_done - self.reported_bytes
        delta_files = p.files_done - self.reported_files
        stamp = datetime.now(UTC)
        with db.session_scope(self.settings) as session:
            session.execute(
                update(DatasetExport)
                .where(DatasetExport.id == self.export_id)
                .values(
                    files_done=DatasetExport.files_done + delta_files,
                    bytes_done=DatasetExport.bytes_done + delta_bytes,
                    current_item=p.current,
                    heartbeat_at=stamp,
                )
            )
            if self.part_id is not None:
                session.execute(
                    update(ExportPart)
                    .where(ExportPart.id == self.part_id)
                    .values(files_done=p.files_done, bytes_done=p.bytes_done, heartbeat_at=stamp)
                )
        # Counted once written: a write lost to an outage is carried by the next one.
        self.reported_bytes, self.reported_files = p.bytes_done, p.files_done


def _info(row: DatasetExport, project: str, creator: str) -> ExportInfo:
    return ExportInfo(
        export_id=row.id,
        name=row.name,
        project=project,
        creator=creator,
        created_at=exports.as_utc(row.created_at),
        notes=row.notes,
        criteria=dict(row.criteria),
    )


def _context(
    settings: Settings, export_id: str, with_files: bool = True
) -> tuple[ExportInfo, ExportOptions, list[FileEntry], int]:
    """What a job needs, read fresh from the database with the creator's permissions
    (a creator who lost access to the project makes the job fail)."""
    with db.session_scope(settings) as session:
        row = session.get(DatasetExport, export_id)
        if row is None:
            raise PortalError(f"Export {export_id} no longer exists")
        user = session.get(User, row.created_by_id)
        assert user is not None
        principal = Principal(user.id, user.email, user.name, user.is_admin)
        view = exports.view(session, row)
        require_project(session, principal, view.project)
        files: list[FileEntry] = []
        if with_files:
            selection = Selection.from_dict(row.criteria)
            files = select_files(session, principal, view.project, selection)
        options = ExportOptions.from_json(row.options)
        return _info(row, view.project, user.email), options, files, row.estimated_bytes


def _start(settings: Settings, export_id: str, worker: str) -> bool:
    """pending -> processing; False when the export is no longer pending (e.g. cancelled)."""
    return db.retrying(lambda: _start_once(settings, export_id, worker), f"starting {export_id}")


def _start_once(settings: Settings, export_id: str, worker: str) -> bool:
    """One try of ``_start``."""
    with db.session_scope(settings) as session:
        return exports.start(session, export_id, worker)


def _worker_name() -> str:
    from rq import get_current_job

    job = get_current_job()
    return str(getattr(job, "worker_name", None) or "inline")


def run_export(export_id: str) -> str:
    """The RQ job: build the export (or fan out its parts), then complete or fail it."""
    settings = Settings.load()
    # A worker forks a work-horse per job: connections inherited from the parent are not
    # ours to use (with PostgreSQL they hung). Start with fresh ones.
    db.engine_for(settings.database_url).dispose(close=False)
    if not _start(settings, export_id, _worker_name()):
        return "not pending"
    export_dir = settings.export_root / export_id
    watch = _Watch(settings, export_id)
    try:
        info, options, files, _ = _context(settings, export_id)
        names = _pseudonyms(settings, export_id, files, options)
        parts, folders = plan_export(files, options, names)
        check_free_space(
            settings.export_root, sum(p.bytes for p in parts), settings.disk_reserve_bytes
        )
        _save_keys(settings, export_id, files, folders, options)
        if len(parts) > 1:
            _fan_out(settings, export_id, parts)
            return "parts enqueued"
        result = _build_part(settings, export_id, info, options, parts[0], 1, watch)
        write_manifest(export_dir, info, [ManifestPart.of(result)])
        _complete(settings, export_id, [ManifestPart.of(result)], result.privacy_report)
        return "completed"
    except ExportCancelled:
        remove_outputs(export_dir)
        _forget_changes(settings, export_id, 1)
        return "cancelled"
    except BaseException as exc:
        remove_outputs(export_dir)
        _forget_changes(settings, export_id, 1)
        fail_export(settings, export_id, exc)
        if not isinstance(exc, Exception):
            raise
        return "failed"


def _build_part(
    settings: Settings,
    export_id: str,
    info: ExportInfo,
    options: ExportOptions,
    part: PlannedPart,
    count: int,
    watch: _Watch,
) -> PartResult:
    """Build one part of an export (of a one-part export, or one of several): the one way a
    job builds a part, with the export's transform, progress, cancel, change log and check."""
    facts = _identities(settings, export_id)
    builder = PartBuilder(
        info,
        options,
        settings.data_root,
        disk_reserve=settings.disk_reserve_bytes,
        transform=_transform(settings, export_id, options, facts),
        progress=watch.progress,
        cancel=watch.cancelled,
        changes_sink=_change_sink(settings, export_id, part.number),
        identifiers=_needles(facts, options),
    )
    dest = settings.export_root / export_id / part_filename(info, part.number, count)
    return builder.build(part, count, dest)


def _pseudonyms(
    settings: Settings, export_id: str, files: list[FileEntry], options: ExportOptions
) -> dict[str, str] | None:
    """Each patient label's pseudonym in this export: the project's stable ones (created
    for patients exported for the first time), or fresh ones; None for an identified export."""
    if not options.pseudonyms:
        return None
    labels = {f.patient_id: f.patient_label for f in files}
    with db.session_scope(settings) as session:
        project_id = session.scalar(
            select(DatasetExport.project_id).where(DatasetExport.id == export_id)
        )
        assert project_id is not None
        names = pseudonyms.assign(
            session, project_id, labels, export_id, options.fresh_pseudonyms, options.privacy
        )
    return {labels[pid]: name for pid, name in names.items()}


def _save_keys(
    settings: Settings,
    export_id: str,
    files: list[FileEntry],
    folders: dict[str, str],
    options: ExportOptions,
) -> None:
    """The re-identification key of this export: each patient's folder and, with shifted
    dates, date shift; the UID key (the project's, or a fresh one); and the curated values
    in force now. Parts read them back."""
    ids = {f.patient_label: f.patient_id for f in files}
    with db.session_scope(settings) as session:
        row = session.get(DatasetExport, export_id)
        assert row is not None
        uid_key, shifts = (
            pseudonyms.keys(
                session,
                row.project_id,
                sorted(ids.values()),
                options.fresh_pseudonyms,
                level=options.privacy,
            )
            if options.deidentify
            else (None, {})
        )
        session.query(ExportPatient).filter(ExportPatient.export_id == export_id).delete()
        session.add_all(
            ExportPatient(
                export_id=export_id,
                patient_id=ids[label],
                pseudonym=folder,
                date_shift_days=shifts[ids[label]] if options.shift_dates else None,
            )
            for label, folder in folders.items()
        )
        row.uid_key = uid_key
        row.curated_values = curation.rules_for(session, sorted(ids.values())).to_json()


def _identities(settings: Settings, export_id: str) -> list[PatientFacts]:
    """What the registry knows that identifies each patient of the export, by folder."""
    with db.session_scope(settings) as session:
        rows = session.execute(
            select(
                ExportPatient.patient_id, ExportPatient.pseudonym, ExportPatient.date_shift_days
            ).where(ExportPatient.export_id == export_id)
        ).all()
        folder = {pid: (name, shift) for pid, name, shift in rows}
        found = registry.identities(session, list(folder))
    return [
        PatientFacts(
            folder[p.patient_id][0],
            p.label,
            p.source_dir,
            p.headers,
            date_shift=folder[p.patient_id][1],
        )
        for p in found
    ]


def _needles(facts: list[PatientFacts], options: ExportOptions) -> Callable[[PlannedPart], Needles]:
    """The residual check's needles for a part: every patient's registry identifiers, and
    the stored names of the part's own files."""
    dates = not options.retain_full_dates
    return lambda part: part_needles(facts, part_paths(part), search_study_dates=dates)


def _transform(
    settings: Settings, export_id: str, options: ExportOptions, facts: list[PatientFacts]
) -> HeaderRewriter:
    """The export's rewrite, from what the database holds: the curated values, UID key and
    date shifts saved when the export started, and each patient's known identifiers (to
    clean out of descriptions)."""
    with db.session_scope(settings) as session:
        uid_key, frozen = session.execute(
            select(DatasetExport.uid_key, DatasetExport.curated_values).where(
                DatasetExport.id == export_id
            )
        ).one()
        rules = curation_rules.CurationRules.from_json(frozen or {})
        rows = session.execute(
            select(ExportPatient.pseudonym, ExportPatient.date_shift_days).where(
                ExportPatient.export_id == export_id
            )
        ).all()
    shifts = {folder: days for folder, days in rows if days}
    if options.deidentify and (not uid_key or (options.shift_dates and len(shifts) < len(rows))):
        raise PortalError("The export's de-identification keys are missing; create it again")
    known = {p.patient_dir: identifying_texts(p) for p in facts}
    return export_transform(options, [f for f, _ in rows], rules, uid_key, shifts, known)


def _change_row(export_id: str, part: int, c: Change) -> dict[str, Any]:
    return {
        "export_id": export_id,
        "part": part,
        "path": c.path[:1024],
        "tag": c.tag[:200],
        "keyword": c.keyword[:100],
        "old_value": _text(c.old_value),
        "new_value": _text(c.new_value),
        "reason": c.reason,
        "action": c.action,
        "file_count": c.files,
    }


def _text(value: str | None) -> str | None:
    """A header value as PostgreSQL stores text: without NUL characters."""
    return value.replace("\0", "\\0") if value else value


def _change_sink(settings: Settings, export_id: str, part: int) -> Callable[[list[Change]], None]:
    """Where a part's complete change log (old values too, for data managers) goes, batch by
    batch as the part is written; any earlier attempt's rows are removed first."""
    _clear_changes(settings, export_id, part)

    def write(batch: list[Change]) -> None:
        with db.session_scope(settings) as session:
            session.execute(
                insert(ExportDicomChange), [_change_row(export_id, part, c) for c in batch]
            )

    def sink(batch: list[Change]) -> None:
        db.retrying(lambda: write(batch), f"logging the changes of export {export_id}")

    return sink


def _forget_changes(settings: Settings, export_id: str, part: int) -> None:
    """A part that did not complete logs no changes (its files were not exported)."""
    try:
        _clear_changes(settings, export_id, part)
    except Exception:  # the database is down: the next attempt clears them first
        log.warning("could not remove the change log of %s part %s", export_id, part)


def _clear_changes(settings: Settings, export_id: str, part: int) -> None:
    with db.session_scope(settings) as session:
        session.query(ExportDicomChange).filter(
            ExportDicomChange.export_id == export_id, ExportDicomChange.part == part
        ).delete()


def _fan_out(settings: Settings, export_id: str, parts: list[PlannedPart]) -> None:
    """One job per part on whichever workers are free, then one job to finish. Each part's
    plan (file ids and entry names) is saved first: parts never re-plan."""
    with db.session_scope(settings) as session:
        exports.save_parts(session, export_id, parts)
    enqueue_parts(settings, export_id, [(p.number, p.bytes) for p in parts], attempt=0)


def enqueue_parts(
    settings: Settings, export_id: str, parts: list[tuple[int, int]], attempt: int
) -> None:
    """Queue part jobs and the finishing job; job ids are unique per attempt (a retry never
    reuses an id whose old result is about to expire in Redis)."""
    queue = export_queue(settings)
    jobs_ = [
        queue.enqueue(
            "exporter.jobs.tasks.run_part",
            export_id,
            number,
            job_id=part_job_id(export_id, number, attempt),
            job_timeout=job_timeout(size),
            failure_ttl=7 * 86400,
        )
        for number, size in parts
    ]
    with db.session_scope(settings) as session:
        numbers = [number for number, _ in parts]
        exports.set_part_jobs(
            session, export_id, {n: job.id for n, job in zip(numbers, jobs_, strict=True)}
        )
    queue.enqueue(
        "exporter.jobs.tasks.finish_export",
        export_id,
        job_id=f"export-{export_id}-finish-{attempt}",
        depends_on=Dependency(jobs=jobs_, allow_failure=True),
        job_timeout=600,
    )


def run_part(export_id: str, number: int) -> str:
    """The RQ job for one part of a multi-part export, built from its frozen plan."""
    settings = Settings.load()
    db.engine_for(settings.database_url).dispose(close=False)
    claim = db.retrying(lambda: _claim(settings, export_id, number), f"starting {export_id}")
    if claim is None:
        return "not pending"
    part_id, plan, count = claim.part_id, claim.plan, claim.count
    if claim.export_status is not ExportStatus.PROCESSING:
        _set_part(settings, part_id, ExportStatus.CANCELLED)
        return "not processing"
    watch = _Watch(settings, export_id, part_id)
    try:
        info, options, _, _ = _context(settings, export_id, with_files=False)
        with db.session_scope(settings) as session:
            entries = files_by_id(session, [item[0] for item in plan])
        planned = [PlannedFile(entries[fid], arcname, folder) for fid, arcname, folder in plan]
        if len(planned) != len(plan):
            raise PortalError(f"Part {number}: files of this part are no longer registered")
        part_plan = PlannedPart(number, planned, sum(p.source.size for p in planned))
        result = _build_part(settings, export_id, info, options, part_plan, count or 1, watch)
    except ExportCancelled:
        _set_part(settings, part_id, ExportStatus.CANCELLED)
        _forget_changes(settings, export_id, number)
        return "cancelled"
    except KeyError:
        error = PortalError(f"Part {number}: files of this part are no longer registered")
        _set_part(settings, part_id, ExportStatus.FAILED, error=error)
        return "failed"
    except Exception as exc:  # the finishing job fails the export; not re-raised, since
        # RQ would log the exception's text, which for an unexpected error may name a path
        _set_part(settings, part_id, ExportStatus.FAILED, error=exc)
        _forget_changes(settings, export_id, number)
        log.warning("export %s part %s failed: %s", export_id, number, _message(exc))
        return "failed"
    _set_part(settings, part_id, ExportStatus.COMPLETED, result=result)
    return "completed"


def _claim(settings: Settings, export_id: str, number: int) -> exports.PartClaim | None:
    with db.session_scope(settings) as session:
        return exports.claim_part(session, export_id, number, _worker_name())


def _set_part(
    settings: Settings,
    part_id: int,
    status: ExportStatus,
    result: PartResult | None = None,
    error: BaseException | None = None,
) -> None:
    db.retrying(
        lambda: _set_part_once(settings, part_id, status, result, error),
        f"recording part {part_id}",
    )


def _set_part_once(
    settings: Settings,
    part_id: int,
    status: ExportStatus,
    result: PartResult | None,
    error: BaseException | None,
) -> None:
    report = error.report if isinstance(error, PrivacyCheckFailed) else None
    message = _message(error) if error is not None else None
    detail = _detail(error) if error is not None else None
    with db.session_scope(settings) as session:
        exports.finish_part(session, part_id, status, result, message, detail, report)


def finish_export(export_id: str) -> str:
    """Runs after every part: writes the manifest and completes, or fails the export."""
    settings = Settings.load()
    db.engine_for(settings.database_url).dispose(close=False)
    export_dir = settings.export_root / export_id
    with db.session_scope(settings) as session:
        row = session.get(DatasetExport, export_id)
        if row is None or row.status is not ExportStatus.PROCESSING:
            return "not processing"
        parts = session.scalars(
            select(ExportPart).where(ExportPart.export_id == export_id).order_by(ExportPart.number)
        ).all()
        failed = [p for p in parts if p.status is not ExportStatus.COMPLETED]
        report = merge_reports([p.privacy_report for p in parts if p.privacy_report])
        done = [
            ManifestPart(
                p.number,
                Path(p.path or "").name,
                p.size_bytes or 0,
                p.sha256 or "",
                list(p.patient_ids),
                p.file_count,
                p.estimated_bytes,
            )
            for p in parts
        ]
    if failed:
        remove_partials(export_dir)  # finished parts stay: a retry rebuilds only the others
        reason = failed[0].error_message or "did not complete"
        fail_export(
            settings,
            export_id,
            PortalError(f"Part {failed[0].number} failed: {reason}"),
            report=report,
        )
        return "failed"
    try:
        info, _, _, _ = _context(settings, export_id, with_files=False)
        write_manifest(export_dir, info, done)
    except Exception as exc:
        fail_export(settings, export_id, exc)
        raise
    _complete(settings, export_id, done, report)
    return "completed"


def _complete_once(
    settings: Settings, export_id: str, results: list[ManifestPart], report: dict[str, Any] | None
) -> bool:
    with db.session_scope(settings) as session:
        return exports.complete(
            session,
            export_id,
            results,
            report,
            settings.retention_days,
            settings.export_root / export_id,
        )


def _complete(
    settings: Settings, export_id: str, results: list[ManifestPart], report: dict[str, Any] | None
) -> None:
    won = db.retrying(
        lambda: _complete_once(settings, export_id, results, report), f"completing {export_id}"
    )
    if not won:
        if _status(settings, export_id) is ExportStatus.COMPLETED:
            return  # an earlier try committed, and the outage swallowed its answer
        remove_outputs(settings.export_root / export_id)  # cancelled or failed meanwhile
        return
    _notify(settings, export_id)


def _status(settings: Settings, export_id: str) -> ExportStatus | None:
    with db.session_scope(settings) as session:
        return session.scalar(select(DatasetExport.status).where(DatasetExport.id == export_id))


def fail_export(
    settings: Settings,
    export_id: str,
    exc: BaseException,
    message: str | None = None,
    report: dict[str, Any] | None = None,
) -> None:
    text = message or _message(exc)
    if isinstance(exc, PrivacyCheckFailed):
        report = exc.report
    try:
        won = db.retrying(
            lambda: _fail_once(settings, export_id, exc, text, report), f"failing {export_id}"
        )
    except Exception as lost:
        if not db.is_outage(lost):
            raise
        # Still unreachable: the reconciler fails it once the heartbeat is stale.
        log.error("export %s failed (%s) and the database is unreachable", export_id, text)
        return
    if won:  # the message, not the exception: a stored path stays out of the log
        log.warning("export %s failed: %s", export_id, text)
        _notify(settings, export_id)


def _fail_once(
    settings: Settings,
    export_id: str,
    exc: BaseException,
    text: str,
    report: dict[str, Any] | None,
) -> bool:
    with db.session_scope(settings) as session:
        return exports.fail(session, export_id, text, _detail(exc), report)


def _message(exc: BaseException) -> str:
    """What users (and the log) read of an error: a portal error's own message, which never
    names a stored path in an export that is not identified."""
    if isinstance(exc, PortalError):
        return str(exc)
    return DB_LOST if db.is_outage(exc) else UNEXPECTED


def _detail(exc: BaseException) -> str:
    """The technical detail kept on the row for administrators, the stored path included."""
    named = (("stored_path", "stored path"), ("detail", "detail"))
    extra = [f"{name}: {getattr(exc, key)}" for key, name in named if getattr(exc, key, "")]
    text = "".join(traceback.format_exception(exc)) + "".join(f"{line}\n" for line in extra)
    return text.replace("\0", "\\0")  # PostgreSQL text holds no NUL (a header's bytes may)


def _notify(settings: Settings, export_id: str) -> None:
    try:
        with db.session_scope(settings) as session:
            row = session.get(DatasetExport, export_id)
            user = session.get(User, row.created_by_id) if row else None
            if row is None or user is None:
                return
            view = exports.view(session, row)
        mail.send(settings, mail.export_message(settings, view, user.email))
    except Exception:  # a notification never fails an export
        log.exception("notification for export %s failed", export_id)


def part_job_id(export_id: str, number: int, attempt: int = 0) -> str:
    return f"export-{export_id}-part-{number}-{attempt}"


def remove_partials(export_dir: Path) -> None:
    """Remove unfinished (``.partial``) files; finished parts stay for a retry."""
    if export_dir.is_dir():
        for partial in export_dir.glob(".*.partial"):
            partial.unlink(missing_ok=True)
