"""The RQ jobs that build exports, and the housekeeping that keeps them honest.

The queue carries only export ids; the database row is the record. ``run_export`` builds a
one-part export itself; a larger one is split into part jobs that any free worker takes, and
a final job writes the manifest and completes the export (a failed part fails the export).
Progress and a heartbeat are written to the row at most once a second; cancellation is the
row's status, read at most twice a second while building. ``reconcile`` (run by every worker
at start and every ``MAINTENANCE_SECONDS``) fails exports whose worker died and re-enqueues
pending exports whose queue entry vanished; ``expire`` removes files past their retention.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from datetime import UTC, datetime, timedelta
from pathlib import Path

from redis import Redis
from rq.exceptions import NoSuchJobError
from rq.job import Dependency, Job, JobStatus
from sqlalchemy import select, update

from exporter import db, exports, mail
from exporter.accounts import Principal
from exporter.archive import (
    ExportInfo,
    ExportOptions,
    ManifestPart,
    PartBuilder,
    PartResult,
    Progress,
    check_free_space,
    part_filename,
    plan_export,
    remove_outputs,
    write_manifest,
)
from exporter.audit import record
from exporter.config import Settings
from exporter.errors import ExportCancelled, PortalError
from exporter.layout import PlannedPart
from exporter.models import DatasetExport, ExportPart, ExportPatient, ExportStatus, User
from exporter.queue import connect, export_queue
from exporter.registry import FileEntry, select_files

log = logging.getLogger(__name__)
UNEXPECTED = "The export failed unexpectedly; the administrators can see the details"
WORKER_DIED = "The worker stopped unexpectedly while building this export; create it again"
PENDING_GRACE_SECONDS = 30
MAX_REQUEUES = 3


def job_timeout(estimated_bytes: int) -> int:
    """Seconds an export job may run: generous for slow disks (10 MB/s), never RQ's 180 s."""
    return 900 + estimated_bytes // 10_000_000


def enqueue(settings: Settings, row: DatasetExport, connection: Redis | None = None) -> str:
    """Put the export's job on the queue; returns the job id (stored on the row)."""
    queue = export_queue(settings, connection)
    job = queue.enqueue(
        "exporter.jobs.run_export",
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
                with db.session_scope(self.settings) as session:
                    status = session.scalar(
                        select(DatasetExport.status).where(DatasetExport.id == self.export_id)
                    )
                self.cancelled_flag = status is not ExportStatus.PROCESSING
            return self.cancelled_flag

    def progress(self, p: Progress) -> None:
        now = time.monotonic()
        if now - self.written < 1.0 and p.files_done != p.files_total:
            return
        self.written = now
        delta_bytes = p.bytes_done - self.reported_bytes
        delta_files = p.files_done - self.reported_files
        self.reported_bytes, self.reported_files = p.bytes_done, p.files_done
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


def _info(row: DatasetExport, project: str, creator: str) -> ExportInfo:
    return ExportInfo(
        export_id=row.id,
        name=row.name,
        project=project,
        creator=creator,
        created_at=exports._aware(row.created_at),
        notes=row.notes,
        criteria=dict(row.criteria),
    )


def _context(
    settings: Settings, export_id: str
) -> tuple[ExportInfo, ExportOptions, list[FileEntry], int]:
    """What a job needs, read fresh from the database with the creator's permissions."""
    from exporter.services import parse_selection

    with db.session_scope(settings) as session:
        row = session.get(DatasetExport, export_id)
        if row is None:
            raise PortalError(f"Export {export_id} no longer exists")
        user = session.get(User, row.created_by_id)
        assert user is not None
        principal = Principal(user.id, user.email, user.name, user.is_admin)
        view = exports.view(session, row)
        c = row.criteria
        selection = parse_selection(
            c.get("folders"), c.get("patients"), c.get("tags"), c.get("tag_mode", "any"),
            c.get("modalities"), c.get("kinds"),
        )  # fmt: skip
        files = select_files(session, principal, view.project, selection)
        options = ExportOptions(**row.options)
        return _info(row, view.project, user.email), options, files, row.estimated_bytes


def _start(settings: Settings, export_id: str, worker: str) -> bool:
    """pending -> processing; False when the export is no longer pending (e.g. cancelled)."""
    with db.session_scope(settings) as session:
        result = session.execute(
            update(DatasetExport)
            .where(DatasetExport.id == export_id, DatasetExport.status == ExportStatus.PENDING)
            .values(
                status=ExportStatus.PROCESSING,
                started_at=datetime.now(UTC),
                heartbeat_at=datetime.now(UTC),
                worker_id=worker,
                files_done=0,
                bytes_done=0,
            )
        )
        return bool(getattr(result, "rowcount", 0))


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
        parts, pseudonyms = plan_export(files, options)
        check_free_space(
            settings.export_root, sum(p.bytes for p in parts), settings.disk_reserve_bytes
        )
        _save_pseudonyms(settings, export_id, files, pseudonyms)
        if len(parts) > 1:
            _fan_out(settings, export_id, parts)
            return "parts enqueued"
        builder = PartBuilder(
            info, options, settings.data_root, disk_reserve=settings.disk_reserve_bytes,
            progress=watch.progress, cancel=watch.cancelled,
        )  # fmt: skip
        dest = export_dir / part_filename(info, 1, 1)
        result = builder.build(parts[0], 1, dest)
        write_manifest(export_dir, info, [ManifestPart.of(result)])
        _complete(settings, export_id, [ManifestPart.of(result)])
        return "completed"
    except ExportCancelled:
        remove_outputs(export_dir)
        return "cancelled"
    except BaseException as exc:
        remove_outputs(export_dir)
        _fail(settings, export_id, exc)
        if not isinstance(exc, Exception):
            raise
        return "failed"


def _save_pseudonyms(
    settings: Settings, export_id: str, files: list[FileEntry], pseudonyms: dict[str, str]
) -> None:
    ids = {f.patient_label: f.patient_id for f in files}
    with db.session_scope(settings) as session:
        session.query(ExportPatient).filter(ExportPatient.export_id == export_id).delete()
        session.add_all(
            ExportPatient(export_id=export_id, patient_id=ids[label], pseudonym=folder)
            for label, folder in pseudonyms.items()
        )


def _fan_out(settings: Settings, export_id: str, parts: list[PlannedPart]) -> None:
    """One job per part on whichever workers are free, then one job to finish."""
    connection = connect(settings)
    queue = export_queue(settings, connection)
    jobs: list[Job] = []
    with db.session_scope(settings) as session:
        row = session.get(DatasetExport, export_id)
        assert row is not None
        row.part_count = len(parts)
        session.query(ExportPart).filter(ExportPart.export_id == export_id).delete()
        for part in parts:
            session.add(
                ExportPart(
                    export_id=export_id, number=part.number, status=ExportStatus.PENDING,
                    patient_ids=part.patient_dirs, file_count=len(part.files),
                    estimated_bytes=part.bytes,
                )
            )  # fmt: skip
    for part in parts:
        jobs.append(
            queue.enqueue(
                "exporter.jobs.run_part", export_id, part.number,
                job_id=f"export-{export_id}-part-{part.number}",
                job_timeout=job_timeout(part.bytes), failure_ttl=7 * 86400,
            )
        )  # fmt: skip
    queue.enqueue(
        "exporter.jobs.finish_export", export_id,
        job_id=f"export-{export_id}-finish",
        depends_on=Dependency(jobs=jobs, allow_failure=True), job_timeout=600,
    )  # fmt: skip


def run_part(export_id: str, number: int) -> str:
    """The RQ job for one part of a multi-part export."""
    settings = Settings.load()
    db.engine_for(settings.database_url).dispose(close=False)
    with db.session_scope(settings) as session:
        part = session.scalar(
            select(ExportPart).where(ExportPart.export_id == export_id, ExportPart.number == number)
        )
        status = session.scalar(select(DatasetExport.status).where(DatasetExport.id == export_id))
        if part is None or status is not ExportStatus.PROCESSING:
            return "not processing"
        part.status = ExportStatus.PROCESSING
        part.started_at = datetime.now(UTC)
        part.worker_id = _worker_name()
        part_id = part.id
    watch = _Watch(settings, export_id, part_id)
    try:
        info, options, files, _ = _context(settings, export_id)
        parts, _ = plan_export(files, options)
        plan = parts[number - 1]
        builder = PartBuilder(
            info, options, settings.data_root, disk_reserve=settings.disk_reserve_bytes,
            progress=watch.progress, cancel=watch.cancelled,
        )  # fmt: skip
        dest = settings.export_root / export_id / part_filename(info, number, len(parts))
        result = builder.build(plan, len(parts), dest)
    except ExportCancelled:
        _set_part(settings, part_id, ExportStatus.CANCELLED)
        return "cancelled"
    except Exception as exc:
        _set_part(settings, part_id, ExportStatus.FAILED, error=exc)
        raise
    _set_part(settings, part_id, ExportStatus.COMPLETED, result=result)
    return "completed"


def _set_part(
    settings: Settings,
    part_id: int,
    status: ExportStatus,
    result: PartResult | None = None,
    error: BaseException | None = None,
) -> None:
    with db.session_scope(settings) as session:
        part = session.get(ExportPart, part_id)
        assert part is not None
        part.status = status
        part.completed_at = datetime.now(UTC)
        if result is not None:
            part.path = str(result.path)
            part.size_bytes = result.size
            part.sha256 = result.sha256
        if error is not None:
            part.error_message = str(error) if isinstance(error, PortalError) else UNEXPECTED
            part.error_detail = "".join(traceback.format_exception(error))


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
        remove_outputs(export_dir)
        reason = failed[0].error_message or "did not complete"
        _fail(settings, export_id, PortalError(f"Part {failed[0].number} failed: {reason}"))
        return "failed"
    info, _, _, _ = _context(settings, export_id)
    write_manifest(export_dir, info, done)
    _complete(settings, export_id, done)
    return "completed"


def _complete(settings: Settings, export_id: str, results: list[ManifestPart]) -> None:
    now = datetime.now(UTC)
    with db.session_scope(settings) as session:
        row = session.get(DatasetExport, export_id)
        if row is None or row.status is not ExportStatus.PROCESSING:
            remove_outputs(settings.export_root / export_id)  # cancelled at the last moment
            return
        row.status = ExportStatus.COMPLETED
        row.completed_at = now
        row.expires_at = now + timedelta(days=settings.retention_days)
        row.output_dir = str(settings.export_root / export_id)
        row.output_paths = [str(settings.export_root / export_id / r.file) for r in results]
        row.part_count = len(results)
        row.archive_size_bytes = sum(r.size for r in results)
        row.archive_sha256 = results[0].sha256 if len(results) == 1 else None
        row.actual_bytes = row.bytes_done
        row.files_done = sum(r.files for r in results)
        row.heartbeat_at = now
        row.current_item = None
        record(session, "complete", None, row.project_id, row.id, {"parts": len(results)})
    _notify(settings, export_id)


def _fail(
    settings: Settings, export_id: str, exc: BaseException, message: str | None = None
) -> None:
    with db.session_scope(settings) as session:
        row = session.get(DatasetExport, export_id)
        if row is None or row.status not in exports.ACTIVE:
            return
        row.status = ExportStatus.FAILED
        row.completed_at = datetime.now(UTC)
        row.error_message = message or (str(exc) if isinstance(exc, PortalError) else UNEXPECTED)
        row.error_detail = "".join(traceback.format_exception(exc))
        record(session, "fail", None, row.project_id, row.id, {"error": row.error_message})
    log.warning("export %s failed: %s", export_id, exc)
    _notify(settings, export_id)


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


def reconcile(settings: Settings, connection: Redis | None = None) -> dict[str, int]:
    """Fail exports whose worker died; re-enqueue pending exports whose job vanished."""
    connection = connection or connect(settings)
    now = datetime.now(UTC)
    stale_before = now - timedelta(seconds=settings.stale_after_seconds)
    counts = {"failed": 0, "requeued": 0}
    with db.session_scope(settings) as session:
        stale = session.scalars(
            select(DatasetExport.id).where(
                DatasetExport.status == ExportStatus.PROCESSING,
                DatasetExport.heartbeat_at < stale_before,
            )
        ).all()
        pending = session.scalars(
            select(DatasetExport).where(
                DatasetExport.status == ExportStatus.PENDING,
                DatasetExport.created_at < now - timedelta(seconds=PENDING_GRACE_SECONDS),
            )
        ).all()
        lost = [row for row in pending if not _job_alive(connection, row.job_id)]
        for row in lost:
            if row.retry_count >= MAX_REQUEUES:
                continue
            row.retry_count += 1
            row.job_id = enqueue(settings, row, connection)
            counts["requeued"] += 1
    for export_id in stale:
        remove_outputs(settings.export_root / export_id)
        _fail(settings, export_id, RuntimeError("stale heartbeat"), WORKER_DIED)
        counts["failed"] += 1
    return counts


def _job_alive(connection: Redis, job_id: str | None) -> bool:
    if not job_id:
        return False
    try:
        job = Job.fetch(job_id, connection=connection)
    except NoSuchJobError:
        return False
    return job.get_status(refresh=True) in (
        JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED, JobStatus.SCHEDULED,
    )  # fmt: skip


def expire(settings: Settings) -> int:
    """Remove the files of completed exports past their retention; mark them expired."""
    now = datetime.now(UTC)
    with db.session_scope(settings) as session:
        rows = session.scalars(
            select(DatasetExport).where(
                DatasetExport.status == ExportStatus.COMPLETED, DatasetExport.expires_at < now
            )
        ).all()
        for row in rows:
            remove_outputs(settings.export_root / row.id)
            row.status = ExportStatus.EXPIRED
            record(session, "expire", None, row.project_id, row.id, {})
        return len(rows)


def cancel_running(settings: Settings, export_id: str, wait: float = 5.0) -> None:
    """After a cancel, wait (briefly) for the job to notice, then remove what it left."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if not any((settings.export_root / export_id).glob(".*.partial")):
            break
        time.sleep(0.1)
    remove_outputs(settings.export_root / export_id)
