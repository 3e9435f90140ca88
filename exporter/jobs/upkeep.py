"""Upkeep of exports. Run by every worker at start and every ``MAINTENANCE_SECONDS``, and by
``python -m exporter cleanup``: ``reconcile`` fails exports whose worker died and re-enqueues
pending exports whose queue entry vanished; ``expire`` removes files past their retention.
On demand: ``retry_parts`` (a user's retry) re-runs the unfinished parts of a failed export,
``cancel_running`` removes what a cancelled job left, and ``horse_died`` (the worker, when a
work-horse ends without finishing) fails its export or part at once.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from redis import Redis
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from sqlalchemy import exists, select

from exporter.archive import publish
from exporter.archive.build import remove_outputs
from exporter.config import Settings
from exporter.jobs import releases as release_jobs
from exporter.jobs.queue import connect
from exporter.jobs.tasks import enqueue, enqueue_parts, fail_export, remove_partials
from exporter.records import exports, releases
from exporter.records.exports import forget_old_values
from exporter.store import db
from exporter.store.models import (
    DatasetExport,
    DatasetRelease,
    ExportPart,
    ExportStatus,
    FileRegistry,
    Patient,
)

WORKER_DIED = "The worker stopped unexpectedly while building this export; create it again"
RELEASE_DIED = (
    "The worker stopped unexpectedly during this release; run it again (what it registered "
    "is kept and skipped)"
)


LOST_IN_QUEUE = "The export could not be queued after several tries; create it again later"


PENDING_GRACE_SECONDS = 30


MAX_REQUEUES = 3


def reconcile(settings: Settings, connection: Redis | None = None) -> dict[str, int]:
    """Fail exports whose worker died; re-enqueue pending exports whose job vanished."""
    connection = connection or connect(settings)
    now = datetime.now(UTC)
    stale_before = now - timedelta(seconds=settings.stale_after_seconds)
    counts = {"failed": 0, "requeued": 0}
    with db.session_scope(settings) as session:
        candidates = session.execute(
            select(DatasetExport.id, DatasetExport.part_count).where(
                DatasetExport.status == ExportStatus.PROCESSING,
                DatasetExport.heartbeat_at < stale_before,
            )
        ).all()
        stale = [
            (export_id, parts > 1)
            for export_id, parts in candidates
            if not _parts_alive(session, connection, export_id, stale_before)
        ]
        pending = session.scalars(
            select(DatasetExport).where(
                DatasetExport.status == ExportStatus.PENDING,
                DatasetExport.created_at < now - timedelta(seconds=PENDING_GRACE_SECONDS),
            )
        ).all()
        unqueueable = []
        for row in pending:
            if _job_alive(connection, row.job_id):
                continue
            if row.retry_count >= MAX_REQUEUES:
                unqueueable.append(row.id)
                continue
            row.retry_count += 1
            row.job_id = enqueue(settings, row, connection)
            counts["requeued"] += 1
    for export_id, multi in stale:
        if multi:
            remove_partials(settings.export_root / export_id)  # finished parts stay for a retry
        else:
            remove_outputs(settings.export_root / export_id)
        fail_export(settings, export_id, RuntimeError("stale heartbeat"), WORKER_DIED)
        counts["failed"] += 1
    for export_id in unqueueable:
        fail_export(settings, export_id, RuntimeError("queue entry lost"), LOST_IN_QUEUE)
        counts["failed"] += 1
    counts["releases_failed"], counts["releases_requeued"] = _reconcile_releases(
        settings, connection, now, stale_before
    )
    return counts


def _reconcile_releases(
    settings: Settings, connection: Redis, now: datetime, stale_before: datetime
) -> tuple[int, int]:
    """Fail releases whose worker died; re-enqueue pending ones whose job vanished."""
    with db.session_scope(settings) as session:
        stale = list(
            session.scalars(
                select(DatasetRelease.id).where(
                    DatasetRelease.status == ExportStatus.PROCESSING,
                    DatasetRelease.heartbeat_at < stale_before,
                )
            )
        )
        pending = session.scalars(
            select(DatasetRelease).where(
                DatasetRelease.status == ExportStatus.PENDING,
                DatasetRelease.created_at < now - timedelta(seconds=PENDING_GRACE_SECONDS),
            )
        ).all()
        requeued = 0
        for row in pending:
            if not _job_alive(connection, row.job_id):
                row.job_id = release_jobs.enqueue(
                    settings, row.id, row.estimated_bytes, row.name, connection
                )
                requeued += 1
    for release_id in stale:
        release_jobs.fail_release(settings, release_id, RELEASE_DIED)
    return len(stale), requeued


def _parts_alive(session: Any, connection: Redis, export_id: str, stale_before: datetime) -> bool:
    """Whether a multi-part export still has work under way: a queued part, a part whose
    heartbeat is fresh, or the finishing job waiting for its turn."""
    parts = session.scalars(select(ExportPart).where(ExportPart.export_id == export_id)).all()
    for part in parts:
        if part.status is ExportStatus.PENDING and _job_alive(connection, part.job_id):
            return True
        beat = exports.as_utc(part.heartbeat_at or part.started_at)
        if part.status is ExportStatus.PROCESSING and beat is not None and beat >= stale_before:
            return True
    attempt = session.scalar(select(DatasetExport.retry_count).where(DatasetExport.id == export_id))
    return bool(parts) and _job_alive(connection, f"export-{export_id}-finish-{attempt or 0}")


def _job_alive(connection: Redis, job_id: str | None) -> bool:
    if not job_id:
        return False
    try:
        job = Job.fetch(job_id, connection=connection)
    except NoSuchJobError:
        return False
    return job.get_status(refresh=True) in (
        JobStatus.QUEUED,
        JobStatus.STARTED,
        JobStatus.DEFERRED,
        JobStatus.SCHEDULED,
    )


def finish_moves(settings: Settings) -> int:
    """Delete the source files of patients a release moved out that are still registered as
    present: the worker stopped between the release's commit and its deletion. Each patient
    is checked as the release checks it (every file and its archive copy hashed again); one
    that does not check out keeps its files. Returns how many files were deleted."""
    with db.session_scope(settings) as session:
        pending = session.execute(
            select(Patient.left_release_id, Patient.id).where(
                Patient.left_at.is_not(None),
                Patient.left_release_id.is_not(None),
                exists().where(
                    FileRegistry.patient_id == Patient.id, FileRegistry.missing_since.is_(None)
                ),
            )
        ).all()
        by_release: dict[str, list[int]] = {}
        for release_id, patient_id in pending:
            if release_id is not None:
                by_release.setdefault(release_id, []).append(patient_id)
        todo = [
            patient
            for release_id, ids in by_release.items()
            if session.get(DatasetRelease, release_id) is not None
            for patient in releases.leaving(session, release_id, ids, left=True).values()
        ]
    root = settings.data_root.resolve()
    checked = [p for p in todo if publish.verified_originals(root, p.files)]
    deleted = publish.remove_originals(root, [(p.source_dir, p.files) for p in checked])
    if deleted:
        with db.session_scope(settings) as session:
            releases.mark_deleted(session, deleted)
    return len(deleted)


def expire(settings: Settings) -> int:
    """Remove the files of completed exports past their retention; mark them expired.

    Files left by failed or cancelled exports (finished parts kept for a retry) are removed
    after the same retention. Old values leave the change log with the files, and from every
    export older than ``CHANGE_LOG_RETENTION_DAYS``.
    """
    now = datetime.now(UTC)
    with db.session_scope(settings) as session:
        rows = session.scalars(
            select(DatasetExport).where(
                DatasetExport.status == ExportStatus.COMPLETED, DatasetExport.expires_at < now
            )
        ).all()
        for row in rows:
            remove_outputs(settings.export_root / row.id)
            exports.mark_expired(session, row)
        forget_old_values(session, [row.id for row in rows])
        cutoff = now - timedelta(days=settings.change_log_retention_days)
        forget_old_values(
            session,
            select(DatasetExport.id).where(DatasetExport.created_at < cutoff),
        )
        leftovers = session.scalars(
            select(DatasetExport.id).where(
                DatasetExport.status.in_((ExportStatus.FAILED, ExportStatus.CANCELLED)),
                DatasetExport.completed_at < now - timedelta(days=settings.retention_days),
            )
        ).all()
        forget_old_values(session, list(leftovers))  # their old values go with their files
    for export_id in leftovers:
        remove_outputs(settings.export_root / export_id)
    return len(rows)


def retry_parts(settings: Settings, export_id: str) -> int:
    """Re-run the parts of a failed multi-part export that did not complete; returns how many.

    The caller has checked the user's right to do this. Two retries at once start it once.
    """
    with db.session_scope(settings) as session:
        retried = exports.retry(session, export_id)
    if retried is None:
        return 0
    attempt, numbers = retried
    enqueue_parts(settings, export_id, numbers, attempt)
    return len(numbers)


def cancel_running(settings: Settings, export_id: str, wait: float = 5.0) -> None:
    """After a cancel, wait (briefly) for the job to notice, then remove what it left."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if not any((settings.export_root / export_id).glob(".*.partial")):
            break
        time.sleep(0.1)
    remove_outputs(settings.export_root / export_id)


def horse_died(settings: Settings, func_name: str, args: tuple[Any, ...]) -> None:
    """A work-horse ended without finishing its job: fail a one-part export at once (its
    files removed), or fail the part of a multi-part export (the finishing job, which runs
    after every part, then fails the export and keeps the finished parts for a retry)."""
    name = func_name.rpartition(".")[2]
    if name == "run_release" and args:
        release_jobs.fail_release(settings, str(args[0]), RELEASE_DIED)
    elif name in ("run_export", "finish_export") and args:
        export_id = str(args[0])
        if name == "run_export":
            with db.session_scope(settings) as session:
                row = session.get(DatasetExport, export_id)
                parts = row.part_count if row is not None else None
            if (parts or 1) > 1:  # it had fanned out: the parts carry on
                return
            remove_outputs(settings.export_root / export_id)
        fail_export(settings, export_id, RuntimeError("work-horse died"), WORKER_DIED)
    elif name == "run_part" and len(args) >= 2:
        export_id, number = str(args[0]), int(args[1])
        with db.session_scope(settings) as session:
            part = session.scalar(
                select(ExportPart).where(
                    ExportPart.export_id == export_id,
                    ExportPart.number == number,
                    ExportPart.status == ExportStatus.PROCESSING,
                )
            )
            if part is not None:
                exports.finish_part(
                    session, part.id, ExportStatus.FAILED, message=WORKER_DIED, detail=func_name
                )
