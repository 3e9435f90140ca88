"""The release job: a source project's selected files written into a destination project
with curated values, the destination's pseudonyms and the release's privacy level, each
registered there as it is written; optionally the untouched originals into an archive.

Per file, in order: skip it if the destination's newest version was written from the same
source bytes, curated values and options (its fingerprint); else write it (temporary name,
fsync, read back and hash, rename: ``archive.publish``), keeping the version it replaces
under ``.versions/``; then register it. Registration goes in batches, each one transaction
with its files' history rows and DICOM changes; a batch is saved before the job stops for
any reason, so what is registered is whole and what is not registered is re-done by the
next run of the same release (which finds nothing new to write for what was saved).

Every written destination file goes through the residual-identifier check, with what the
source's registry knows of each patient: a finding fails the release at that file, before
it has its name.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from redis import Redis
from sqlalchemy import delete, func, insert, select, update

from exporter.access.accounts import Principal
from exporter.archive import publish
from exporter.archive.build import entry_tap, export_transform
from exporter.archive.layout import RAW_STEMS, PlannedFile, safe_extension, sanitize_component
from exporter.archive.residual import (
    PatientFacts,
    ResidualCheck,
    identifying_texts,
    part_needles,
)
from exporter.archive.sourceio import CHUNK, HashingReader, open_source
from exporter.archive.transform import Change, ChangeTable, HeaderRewriter
from exporter.config import Settings
from exporter.dicom import header as dicom
from exporter.dicom.rules import series_key
from exporter.errors import ExportCancelled, PortalError, PrivacyCheckFailed, SourceFileError
from exporter.jobs import mail
from exporter.jobs.queue import export_queue
from exporter.jobs.tasks import job_timeout
from exporter.records import curation, pseudonyms, releases
from exporter.registry import query as registry
from exporter.registry.ingest import ensure_folder
from exporter.schemas import ExportOptions, FileEntry, ReleaseRequest, Selection
from exporter.store import db
from exporter.store.models import (
    DatasetRelease,
    ExportStatus,
    FileRegistry,
    Modality,
    Patient,
    PatientFolder,
    PatientLink,
    Project,
    ReleaseChange,
    ReleasedFile,
    User,
)

log = logging.getLogger(__name__)
BATCH_FILES = 200  # files registered per transaction
BATCH_SECONDS = 2.0
BATCH_ROWS = 5000  # history rows (of unchanged files, mostly) per transaction at most
WINDOW = 64  # files in flight: the pool writes on while a batch is registered
THREADS = max(2, min(4, os.cpu_count() or 2))  # files written at a time
FORMAT = 1  # part of every fingerprint: a new rewrite format writes new versions
UNEXPECTED = "The release failed unexpectedly; the administrators can see the details"


def enqueue(
    settings: Settings,
    release_id: str,
    estimated_bytes: int,
    name: str,
    connection: Redis | None = None,
) -> str:
    """Put the release's job on the queue (the exports' queue: the same workers run it)."""
    job = export_queue(settings, connection).enqueue(
        "exporter.jobs.releases.run_release",
        release_id,
        job_id=f"release-{release_id}-{int(time.time() * 1000)}",
        job_timeout=job_timeout(estimated_bytes * 2),
        result_ttl=3600,
        failure_ttl=7 * 86400,
        description=f"release {name}",
    )
    return str(job.id)


@dataclass(frozen=True)
class _Previous:
    """The newest version a release wrote of a source file in one project."""

    row_id: int
    release_id: str
    status: str
    file_id: int | None
    version: int
    fingerprint: str | None
    path: str
    sha256: str | None
    series: str | None


@dataclass
class _Item:
    source: FileEntry
    patient_id: int  # in the target project
    patient_dir: str  # the destination's label (pseudonym); the archive's: the source's
    path: str  # relative to the data root
    arcname: str  # relative to the target project's root
    series: str | None
    fingerprint: str
    previous: _Previous | None
    # How messages, the log and progress name the file: its destination name (an archive's
    # copy: "the original of" it). Never the stored path, which names the patient.
    shown: str = ""


@dataclass
class _Result:
    target: str  # destination | archive
    item: _Item
    status: str  # created | new_version | skipped | failed
    version: int | None = None
    written: publish.Written | None = None
    kept: str | None = None  # where the replaced version now is
    message: str | None = None
    changes: list[Change] = field(default_factory=list)
    recorded: bool = False  # written by an earlier run of this same release: no new row
    fatal: bool = False  # a failure that stops the release (listed in the log all the same)


@dataclass
class _Context:
    release_id: str
    user: Principal
    source: str
    source_root: str
    dest_id: int
    dest_slug: str
    dest_root: str
    archive_id: int | None
    archive_root: str | None
    options: ExportOptions
    skip_changed: bool
    move_out: bool
    files: list[FileEntry]
    facts: dict[int, dict[str, Any]]  # source file id -> registry facts (of files written)
    links: dict[int, tuple[int, str]]  # source patient -> (destination patient, label)
    source_patients: dict[int, tuple[str, str | None, str]]  # id -> label, dir, folder path
    transform: HeaderRewriter
    check: ResidualCheck
    previous: dict[tuple[str, int], _Previous]  # (target, source file id)
    dest_series: dict[tuple[int, str, str, str], str]  # (patient, modality, kind, label)
    taken: set[str]  # destination paths in use (lower case)


def run_release(release_id: str) -> str:
    """The RQ job: run the release, then complete or fail it."""
    settings = Settings.load()
    db.engine_for(settings.database_url).dispose(close=False)
    worker = f"{_worker_name()}/{uuid.uuid4().hex[:12]}"  # this run's token
    if not db.retrying(lambda: _start_once(settings, release_id, worker), "starting a release"):
        with db.session_scope(settings) as session:
            row = session.get(DatasetRelease, release_id)
            other = releases.busy(session, row, (ExportStatus.PROCESSING,)) if row else None
            pending = row is not None and row.status is ExportStatus.PENDING
        if pending and other is not None:  # two were queued at once: this one waits its turn
            _fail(
                settings,
                release_id,
                PortalError(
                    f"Release {other!r} into the same destination or archive was running: "
                    "releases into one project take turns; run this one again"
                ),
                {},
            )
            return "failed"
        return "not pending"
    job = _Job(settings, release_id, worker)
    try:
        job.run()
        return "completed"
    except ExportCancelled:
        with contextlib.suppress(ExportCancelled):
            job.save(stopped=True)
        return "cancelled"
    except BaseException as exc:
        try:
            job.save(stopped=True)
        except Exception:  # the batch is re-done by the next run
            log.warning("release %s: could not save the last batch", release_id)
        _fail(settings, release_id, exc, job.counts, worker)
        if not isinstance(exc, Exception):
            raise
        return "failed"


def _worker_name() -> str:
    from rq import get_current_job

    job = get_current_job()
    return str(getattr(job, "worker_name", None) or "inline")


def _start_once(settings: Settings, release_id: str, worker: str) -> bool:
    with db.session_scope(settings) as session:
        return releases.start(session, release_id, worker)


def _message(exc: BaseException) -> str:
    if isinstance(exc, PortalError):
        return str(exc)
    return UNEXPECTED


def _fail(
    settings: Settings,
    release_id: str,
    exc: BaseException,
    counts: dict[str, int],
    worker: str | None = None,
) -> None:
    text = _message(exc)
    report = exc.report if isinstance(exc, PrivacyCheckFailed) else None
    detail = "".join(traceback.format_exception(exc)).replace("\0", "\\0")
    try:
        with db.session_scope(settings) as session:
            won = releases.fail(session, release_id, text, detail, dict(counts), report, worker)
    except Exception as lost:
        if not db.is_outage(lost):
            raise
        log.error("release %s failed (%s) and the database is unreachable", release_id, text)
        return
    if won:
        log.warning("release %s failed: %s", release_id, text)
        notify(settings, release_id)


def fail_release(settings: Settings, release_id: str, message: str) -> None:
    """Fail a release whose job cannot finish (its work-horse died, its heartbeat is stale)."""
    _fail(settings, release_id, PortalError(message), {})


def notify(settings: Settings, release_id: str) -> None:
    try:
        with db.session_scope(settings) as session:
            row = session.get(DatasetRelease, release_id)
            user = session.get(User, row.created_by_id) if row else None
            if row is None or user is None:
                return
            view = releases.view(session, row)
        mail.send(settings, mail.release_message(settings, view, user.email))
    except Exception:  # a notification never fails a release
        log.exception("notification for release %s failed", release_id)


def fingerprint(
    source_sha256: str, values: dict[int, tuple[str, str]], options: ExportOptions
) -> str:
    """What a destination version is written from: the source's bytes, the curated values in
    force for the file, the options; equal fingerprints mean an equal file."""
    data = [FORMAT, source_sha256, sorted((t, kw, v) for t, (kw, v) in values.items())]
    text = json.dumps(data, sort_keys=True) + _options_text(options)
    return hashlib.sha256(text.encode()).hexdigest()


@functools.cache
def _options_text(options: ExportOptions) -> str:
    return json.dumps(options.to_json(), sort_keys=True)


class _Job:
    def __init__(self, settings: Settings, release_id: str, worker: str) -> None:
        self.settings = settings
        self.release_id = release_id
        self.worker = worker  # the run's token: every write is conditional on owning it
        self.data_root = settings.data_root.resolve()
        self.pending: list[_Result] = []
        self.pending_written = 0
        self.saved_at = time.monotonic()
        self.checked_at = 0.0
        self.counts: dict[str, int] = {}
        self.files_done = 0
        self.bytes_done = 0
        self.ok_patients: dict[int, bool] = {}  # source patient -> nothing failed
        self.lock = threading.Lock()
        self.dirs_checked: set[str] = set()
        self.sources_checked: dict[str, bool] = {}
        self.cancelled = False
        self.stopping = False  # the run is ending: files not yet started are not written
        self._numbered: dict[str, int] = {}  # a series folder -> its next file number

    # --- set-up ---------------------------------------------------------------------------

    def _context(self) -> _Context:
        """Everything the job needs, read fresh (the creator must still manage the three
        projects), with the destination's patients linked and the curated values frozen."""
        with db.session_scope(self.settings) as session:
            row = session.get(DatasetRelease, self.release_id)
            if row is None:
                raise PortalError(f"Release {self.release_id} no longer exists")
            user = session.get(User, row.created_by_id)
            assert user is not None
            principal = Principal(user.id, user.email, user.name, user.is_admin)
            slugs = dict(session.execute(select(Project.id, Project.slug)).all())
            options, skip_changed, move_out = releases.options_of(row)
            request = ReleaseRequest(
                Selection.from_dict(row.criteria),
                destination=slugs[row.destination_project_id],
                archive=slugs.get(row.archive_project_id) if row.archive_project_id else None,
                name=row.name,
                notes=row.notes,
                privacy=options.privacy,
                shift_dates=options.shift_dates,
                clean_descriptors=options.clean_descriptors,
                skip_changed=skip_changed,
                move_out=move_out,
            )
            planned = releases.plan(session, principal, slugs[row.source_project_id], request)
            files = planned.files
            # The source's tree as it is (a release never sets a source's root).
            source_root = (
                session.scalar(select(Project.root_path).where(Project.id == row.source_project_id))
                or ""
            )
            dest_root = releases.project_root(session, row.destination_project_id, self.data_root)
            archive_root = (
                releases.project_root(session, row.archive_project_id, self.data_root)
                if row.archive_project_id
                else None
            )
            patient_ids = sorted({f.patient_id for f in files})
            links = releases.link_patients(
                session, row, {f.patient_id: f.patient_label for f in files}, dest_root
            )
            rules = curation.rules_for(session, patient_ids)
            row.curated_values = rules.to_json()
            row.file_count = len(files)
            row.patient_count = len(patient_ids)
            uid_key: str | None = None
            shifts: dict[int, int] = {}
            if options.deidentify:
                # The destination's own keys: its UIDs and shifts link to no export's.
                uid_key, shifts = pseudonyms.keys(
                    session, row.destination_project_id, patient_ids, False, level=options.privacy
                )
            facts: dict[int, dict[str, Any]] = {}  # read as files are written (_register)
            source_patients = {
                pid: (label, source_dir, folder or "")
                for pid, label, source_dir, folder in session.execute(
                    select(Patient.id, Patient.label, Patient.source_dir, _folder_path()).where(
                        Patient.id.in_(patient_ids)
                    )
                )
            }
            identities = registry.identities(session, patient_ids)
            # A run after a stop decides these again; the versions it wrote stay.
            session.execute(
                delete(ReleasedFile).where(
                    ReleasedFile.release_id == row.id, ReleasedFile.status.not_in(releases.WRITTEN)
                )
            )
            previous = _previous(session, files, row)
            dest_series, taken = _destination_names(session, row.destination_project_id)
        dirs = {src: label for src, (_, label) in links.items()}
        _remove_leftovers(self.data_root, dest_root, sorted(dirs.values()))
        known = [
            PatientFacts(
                dirs[p.patient_id],
                p.label,
                p.source_dir,
                p.headers,
                date_shift=shifts.get(p.patient_id) if options.shift_dates else None,
            )
            for p in identities
        ]
        transform = export_transform(
            options,
            sorted(dirs.values()),
            rules,
            uid_key,
            {dirs[pid]: days for pid, days in shifts.items()} if options.shift_dates else {},
            {p.patient_dir: identifying_texts(p) for p in known},
        )
        needles = part_needles(
            known,
            [(dirs[f.patient_id], f.path) for f in files],
            search_study_dates=not options.retain_full_dates,
        )
        return _Context(
            self.release_id,
            principal,
            planned.source.slug,
            source_root,
            row.destination_project_id,
            request.destination,
            dest_root,
            row.archive_project_id,
            archive_root,
            options,
            skip_changed,
            move_out,
            files,
            facts,
            links,
            source_patients,
            transform,
            ResidualCheck(needles, strict=True),
            previous,
            dest_series,
            taken,
        )

    # --- the run --------------------------------------------------------------------------

    def run(self) -> None:
        ctx = self.ctx = self._context()
        rules = ctx.transform.context.curated
        window: deque[Future[list[_Result]]] = deque()
        with ThreadPoolExecutor(THREADS, thread_name_prefix="release") as pool:
            try:
                for f in ctx.files:
                    self._check_cancel()
                    values = rules.for_file(f.id, f.patient_id, _series_key(f))
                    # Names are chosen here, in order; the files are written on the pool.
                    item = self._destination_item(
                        ctx, f, fingerprint(f.sha256, values, ctx.options)
                    )
                    copy = (
                        self._archive_item(ctx, f, item.arcname)
                        if ctx.archive_root is not None
                        else None
                    )
                    if self._same(item) and (copy is None or self._same(copy)):
                        done: Future[list[_Result]] = Future()  # nothing to write: no thread
                        targets = [("destination", item), ("archive", copy)]
                        done.set_result(
                            [
                                self._unchanged(t, i, i.previous)
                                for t, i in targets
                                if i and i.previous
                            ]
                        )
                        window.append(done)
                    else:
                        window.append(pool.submit(self._one, ctx, item, copy))
                    if len(window) >= WINDOW:
                        self._collect(window.popleft())
                while window:
                    self._collect(window.popleft())
            finally:
                self.stopping = True
                for pending in window:
                    pending.cancel()
                for pending in window:  # what the pool finished is registered, never lost
                    if not pending.cancelled():
                        with contextlib.suppress(BaseException):
                            self._collect(pending)
        self.save()
        self._finish(ctx)

    def _one(self, ctx: _Context, item: _Item, copy: _Item | None) -> list[_Result]:
        """One source file: its destination version and, with an archive, its copy."""
        if self.stopping:
            raise ExportCancelled("The release stopped")
        done = [self._release(ctx, item)]
        if copy is not None:
            done.append(self._archive(ctx, copy))
        return done

    def _collect(self, future: Future[list[_Result]]) -> None:
        for result in future.result():
            self._add(result)
            if result.fatal:
                raise SourceFileError(result.message or "A source file could not be read")

    def _check_cancel(self) -> None:
        """Raise ExportCancelled once this run no longer owns the release (cancelled, failed
        by the reconciler, or run again meanwhile); asked of the database, with a heartbeat,
        at most once a second, by whichever thread comes first."""
        with self.lock:
            if self.cancelled:
                raise ExportCancelled("The release was cancelled")
            now = time.monotonic()
            if now - self.checked_at < 1.0:
                return
            self.checked_at = now
        try:
            with db.session_scope(self.settings) as session:
                mine = releases.owns(
                    session, self.release_id, self.worker, heartbeat_at=datetime.now(UTC)
                )
        except Exception as exc:
            if not db.is_outage(exc):
                raise
            return
        if not mine:
            self.cancelled = True
            raise ExportCancelled("The release was cancelled")

    def _add(self, result: _Result) -> None:
        key = result.status if result.target == "destination" else f"archive_{result.status}"
        self.counts[key] = self.counts.get(key, 0) + 1
        if result.target == "destination":
            src = result.item.source.patient_id
            self.ok_patients[src] = self.ok_patients.get(src, True) and result.status != "failed"
            self.files_done += 1
        self.bytes_done += result.item.source.size
        self.pending.append(result)
        if result.written is not None:
            self.pending_written += 1
        # A batch is BATCH_FILES written files (rows for unchanged ones are cheap: up to
        # BATCH_ROWS of them go in one statement), or what BATCH_SECONDS brought.
        if (
            self.pending_written >= BATCH_FILES
            or len(self.pending) >= BATCH_ROWS
            or time.monotonic() - self.saved_at >= BATCH_SECONDS
        ):
            self.save()

    # --- the destination ------------------------------------------------------------------

    def _destination_item(self, ctx: _Context, f: FileEntry, print_: str) -> _Item:
        dest_pid, label = ctx.links[f.patient_id]
        prev = ctx.previous.get(("destination", f.id))
        if prev is not None and prev.file_id is not None:
            path, series = prev.path, prev.series
        else:
            path, series = self._new_path(ctx, f, dest_pid, label)
        arcname = path[len(ctx.dest_root) + 1 :] if ctx.dest_root else path
        return _Item(f, dest_pid, label, path, arcname, series, print_, prev, arcname)

    def _new_path(
        self, ctx: _Context, f: FileEntry, dest_pid: int, label: str
    ) -> tuple[str, str | None]:
        """A path no destination file has: ``<label>/<modality>/[processed/]<series>/NNNN.ext``
        (series numbered per patient and modality), or a name from the file's subtype."""
        modality = sanitize_component(f.modality, "modality")
        folder = f"{label}/{modality}" + ("/processed" if f.kind == "processed" else "")
        ext = safe_extension(f.path)
        series = None
        if f.series_label:
            key = (dest_pid, f.modality, f.kind, f.series_label)
            series = ctx.dest_series.get(key)
            if series is None:
                n = 1
                used = {
                    v
                    for k, v in ctx.dest_series.items()
                    if k[0] == dest_pid and k[1] == f.modality and k[2] == f.kind
                }
                while f"series_{n:03d}" in used:
                    n += 1
                series = ctx.dest_series[key] = f"series_{n:03d}"
            folder = f"{folder}/{series}"
            # Numbered on from the last name this run gave in the folder (not from 1 again:
            # a series of N slices would probe N*N/2 names).
            start = self._numbered.get(folder, 1)
            names = (f"{n:04d}{ext}" for n in range(start, 1_000_000))
        elif f.subtype:
            stem = sanitize_component(f.subtype)
            names = (stem + ext if n == 1 else f"{stem}_{n}{ext}" for n in range(1, 1_000_000))
        else:
            stem = "processed" if f.kind == "processed" else RAW_STEMS.get(f.modality, "file")
            names = (f"{stem}_{n}{ext}" for n in range(1, 1_000_000))
        prefix = f"{ctx.dest_root}/{folder}" if ctx.dest_root else folder
        for name in names:
            path = f"{prefix}/{name}"
            if path.lower() not in ctx.taken:
                ctx.taken.add(path.lower())
                if series is not None:  # NNNN.ext: on from NNNN + 1 next time
                    self._numbered[folder] = int(name.partition(".")[0]) + 1
                return path, series
        raise PortalError(f"No free name in {folder}")  # pragma: no cover - a million files

    def _release(self, ctx: _Context, item: _Item) -> _Result:
        """A destination file: the source rewritten (curated values, pseudonym, profile)."""
        planned = PlannedFile(item.source, item.arcname, item.patient_dir)
        return self._write("destination", ctx, item, lambda r: self._rewritten(ctx, planned, r))

    def _write(
        self,
        target: str,
        ctx: _Context,
        item: _Item,
        pieces: Callable[[HashingReader], Iterator[bytes | memoryview]],
    ) -> _Result:
        """Skip the file if its newest version has the same fingerprint; else keep that
        version aside and write the new one (``pieces`` from the source's reader). A source
        that changed fails the file (with ``skip_changed``) or the release."""
        prev = item.previous
        if prev is not None and prev.file_id is not None and prev.fingerprint == item.fingerprint:
            return self._unchanged(target, item, prev)
        replacing = prev is not None and prev.file_id is not None
        version = prev.version + 1 if prev is not None else 1
        source = item.source
        archive = target == "archive"
        try:
            kept = None
            if replacing and prev is not None and prev.file_id is not None:
                # Out of estimates and exports until the new version is registered: a run
                # killed between the rename and the registration leaves no row whose hash
                # is not its file's.
                file_id = prev.file_id
                db.retrying(lambda: self._hide(file_id), "hiding a file being replaced")
                kept = publish.keep_version(self.data_root, item.path, prev.version)
            with open_source(self.data_root, source.path, self.sources_checked) as raw:
                reader = HashingReader(raw, self._check_cancel)
                written = publish.write_file(
                    self.data_root,
                    item.path,
                    pieces(reader),
                    expect_sha256=source.sha256 if archive else None,
                    replace=True,
                    checked=self.dirs_checked,
                    sync_dir=False,  # once per folder and batch, before it is registered
                )
        except PortalError as exc:
            if not archive:
                ctx.transform.take_entry(item.arcname)
            message = _redact(str(exc), item)
            if isinstance(exc, SourceFileError):
                return _Result(target, item, "failed", message=message, fatal=not ctx.skip_changed)
            exc.args = (message, *exc.args[1:])  # a full disk, a link in the way, ...
            raise
        status = "new_version" if replacing else "created"
        changes = [] if archive else ctx.transform.take_entry(item.arcname)
        return _Result(target, item, status, version, written, kept, changes=changes)

    @staticmethod
    def _same(item: _Item) -> bool:
        """Whether the newest version of this file was written from the same inputs."""
        prev = item.previous
        return (
            prev is not None and prev.file_id is not None and prev.fingerprint == item.fingerprint
        )

    def _hide(self, file_id: int) -> None:
        with db.session_scope(self.settings) as session:
            session.execute(
                update(FileRegistry)
                .where(FileRegistry.id == file_id)
                .values(missing_since=datetime.now(UTC))
            )

    def _unchanged(self, target: str, item: _Item, prev: _Previous) -> _Result:
        """A file whose newest version was written from the same inputs: skipped, or, when
        this very release wrote it before it was stopped, counted as it was then."""
        if prev.release_id == self.release_id:
            return _Result(target, item, prev.status, prev.version, recorded=True)
        return _Result(target, item, "skipped", prev.version)

    def _rewritten(
        self, ctx: _Context, planned: PlannedFile, reader: HashingReader
    ) -> Iterator[bytes | memoryview]:
        """The file's new bytes, checked for residual identifiers as they pass; a changed
        source or a finding raises before the file has its name."""
        source = planned.source
        tap = entry_tap(ctx.check, planned, ctx.transform.applies_to(planned))
        rewrite = ctx.transform.applies_to(planned)
        pieces: Iterator[bytes | memoryview] = (
            ctx.transform(planned, reader)  # type: ignore[arg-type]
            if rewrite
            else iter(lambda: reader.read(CHUNK), b"")
        )
        for piece in pieces:
            tap.feed(piece)
            yield piece
        tap.close()
        reader.drain()
        if reader.size != source.size or reader.sha.hexdigest() != source.sha256:
            raise SourceFileError(
                f"{source.path}: changed since it was registered (size {reader.size} against "
                f"{source.size}, or a different SHA-256); register the directory again"
            )
        if ctx.check.count:  # here or in a file written beside it: the release stops
            found = sorted({f.file for f in ctx.check.findings}) or [planned.arcname]
            raise PrivacyCheckFailed(
                f"The residual-identifier check found identifiers in {', '.join(found[:3])}; "
                "nothing of it was registered. Curate or clear the field and release again",
                ctx.check.report(ctx.options.privacy),
            )

    # --- the archive ----------------------------------------------------------------------

    def _archive_item(self, ctx: _Context, f: FileEntry, destination_name: str) -> _Item:
        assert ctx.archive_root is not None
        below = f.path[len(ctx.source_root) + 1 :] if ctx.source_root else f.path
        # Below the source project's slug: two sources' trees never meet in one archive.
        below = f"{ctx.source}/{below}"
        path = f"{ctx.archive_root}/{below}" if ctx.archive_root else below
        prev = ctx.previous.get(("archive", f.id))
        shown = f"the original of {destination_name}"
        return _Item(f, 0, f.patient_label, path, below, f.series_label, f.sha256, prev, shown)

    def _archive(self, ctx: _Context, item: _Item) -> _Result:
        """An archive file: the source byte for byte (its SHA-256 checked)."""
        return self._write("archive", ctx, item, lambda r: iter(lambda: r.read(CHUNK), b""))

    # --- registration ---------------------------------------------------------------------

    def save(self, stopped: bool = False) -> None:
        """Register the batch: files, history rows, changes and progress, one transaction.
        ``stopped``: the run is ending early; what it wrote is registered all the same
        unless a later run owns the release."""
        batch, self.pending = self.pending, []
        self.pending_written = 0
        self.saved_at = time.monotonic()
        if not batch and not hasattr(self, "ctx"):
            return
        db.retrying(
            lambda: self._save_once(batch, stopped), f"registering release {self.release_id}"
        )

    def _save_once(self, batch: list[_Result], stopped: bool = False) -> None:
        ctx = self.ctx
        now = datetime.now(UTC)
        todo = [r for r in batch if not r.recorded]
        publish.sync_dirs(self.data_root, [r.written.path for r in todo if r.written])
        current = batch[-1].item.shown[:255] if batch else None
        with db.session_scope(self.settings) as session:
            progress = {
                "files_done": self.files_done,
                "bytes_done": self.bytes_done,
                "counts": dict(self.counts),
                "current_item": current,
                "heartbeat_at": now,
            }
            if not releases.owns(session, self.release_id, self.worker, stopped, **progress):
                # Cancelled, or run again: this run registers nothing more (the files it
                # wrote and did not register are re-done, or skipped, by the run that owns it).
                raise ExportCancelled("The release was cancelled")
            archive_patients = self._archive_patients(session, ctx, todo)
            for r in todo:
                if r.target == "archive" and r.written is not None:
                    r.item.patient_id = archive_patients[r.item.source.patient_id]
            file_ids = self._register(session, [r for r in todo if r.written is not None], now)
            history = [self._history_row(r, file_ids) for r in todo]
            if history:
                session.execute(insert(ReleasedFile), history)
            kept = [
                {"id": r.item.previous.row_id, "stored_path": r.kept}
                for r in todo
                if r.kept and r.item.previous is not None
            ]
            if kept:
                session.execute(update(ReleasedFile), kept)
            changes = self._change_rows(ctx, todo)
            if changes:
                session.execute(insert(ReleaseChange), changes)
            registry.refresh_summaries(session, {r.item.patient_id for r in todo if r.written})

    def _register(self, session: Any, written: list[_Result], now: datetime) -> dict[str, int]:
        """Registry rows for the written files (new versions update theirs), in a few
        statements; their ids by path."""
        ids: dict[str, int] = {}
        updates: list[dict[str, Any]] = []
        inserts: list[dict[str, Any]] = []
        paths = [r.written.path for r in written if r.written is not None]
        # The sources' registry facts, for the files written only (an unchanged release
        # reads none of them).
        unread = sorted({r.item.source.id for r in written} - self.ctx.facts.keys())
        self.ctx.facts.update(_facts(session, unread))
        known = dict(
            session.execute(
                select(FileRegistry.path, FileRegistry.id).where(FileRegistry.path.in_(paths))
            ).all()
        )
        for r in written:
            values = self._file_values(self.ctx, r)
            prev = r.item.previous
            file_id = prev.file_id if prev is not None and r.status == "new_version" else None
            file_id = file_id or known.get(values["path"])  # or registered by an earlier try
            if file_id is not None:
                updates.append({"id": file_id, **values, "updated_at": now})
                ids[values["path"]] = file_id
            else:
                inserts.append(values)
        if updates:
            session.execute(update(FileRegistry), updates)
        if inserts:
            statement = insert(FileRegistry).returning(
                FileRegistry.id, FileRegistry.path, sort_by_parameter_order=True
            )
            for file_id, path in session.execute(statement, inserts):
                ids[path] = file_id
        return ids

    def _history_row(self, r: _Result, file_ids: dict[str, int]) -> dict[str, Any]:
        prev = r.item.previous
        if r.written is not None:
            file_id: int | None = file_ids[r.written.path]
        else:
            file_id = prev.file_id if prev is not None and r.status != "failed" else None
        return {
            "release_id": self.release_id,
            "target": r.target,
            "project_id": self.ctx.dest_id if r.target == "destination" else self.ctx.archive_id,
            "source_file_id": r.item.source.id,
            "source_patient_id": r.item.source.patient_id,
            "file_id": file_id,
            "status": r.status,
            "version": r.version,
            "origin_path": r.item.source.path,
            "destination_path": r.item.path,
            "stored_path": r.written.path if r.written else None,
            "series": r.item.series,
            "source_sha256": r.item.source.sha256,
            "sha256": r.written.sha256 if r.written else (prev.sha256 if prev else None),
            "size_bytes": r.written.size if r.written else None,
            "fingerprint": r.item.fingerprint if r.status != "failed" else None,
            "message": r.message,
            "created_at": datetime.now(UTC),
        }

    def _change_rows(self, ctx: _Context, todo: list[_Result]) -> list[dict[str, Any]]:
        """The batch's DICOM changes: a change made alike to every file of a series written
        in the batch is one row (its folder, ``file_count``), the rest one row per file."""
        rows: list[Change] = []
        table = ChangeTable(sink=rows.extend, batch=1 << 30)
        prefix = f"{ctx.dest_root}/" if ctx.dest_root else ""
        try:
            for r in todo:
                if r.target == "destination" and r.written is not None:
                    folder = r.item.arcname.rpartition("/")[0] if r.item.series else None
                    table.add(r.changes, folder)
            for _ in table.finish():
                pass
        finally:
            table.close()
        return [
            {
                "release_id": self.release_id,
                "path": (prefix + c.path)[:2048],
                "tag": c.tag[:200],
                "keyword": c.keyword[:100],
                "new_value": c.new_value.replace("\0", "\\0") if c.new_value else c.new_value,
                "reason": c.reason,
                "action": c.action,
                "file_count": c.files,
            }
            for c in rows
        ]

    def _archive_patients(
        self, session: Any, ctx: _Context, batch: list[_Result]
    ) -> dict[int, int]:
        """The archive's patient for each source patient in the batch: the same label and
        folder (the archive keeps the originals as they were)."""
        wanted = {r.item.source.patient_id for r in batch if r.target == "archive" and r.written}
        if not wanted or ctx.archive_id is None:
            return {}
        found: dict[int, int] = {}
        folders = {
            f.path: f
            for f in session.scalars(
                select(PatientFolder).where(PatientFolder.project_id == ctx.archive_id)
            )
        }
        for src in sorted(wanted):
            label, source_dir, folder = ctx.source_patients[src]
            below = (
                (source_dir or "")[len(ctx.source_root) + 1 :] if ctx.source_root else source_dir
            )
            place = "/".join(p for p in (ctx.archive_root, ctx.source, below) if p)
            pid, kept_at = session.execute(
                select(Patient.id, Patient.source_dir).where(
                    Patient.project_id == ctx.archive_id, Patient.label == label
                )
            ).one_or_none() or (None, None)
            if pid is not None and kept_at != place:
                raise PortalError(  # the label stays out: this message is logged and mailed
                    "The archive already keeps another patient with the label of one of this "
                    "release's patients (from another project): release the originals of each "
                    "source project into an archive of its own"
                )
            if pid is None:
                parent = ensure_folder(
                    session, ctx.archive_id, "/".join(p for p in (ctx.source, folder) if p), folders
                )
                patient = Patient(
                    project_id=ctx.archive_id,
                    label=label,
                    folder_id=parent.id if parent else None,
                    source_dir=place,
                )
                session.add(patient)
                session.flush()
                pid = patient.id
            found[src] = pid
        return found

    def _file_values(self, ctx: _Context, r: _Result) -> dict[str, Any]:
        w = r.written
        assert w is not None
        facts = ctx.facts[r.item.source.id]
        if r.target == "archive":
            header, acquired, series = (
                facts["dicom_header"],
                facts["acquisition_date"],
                facts["series_label"],
            )
        else:
            header = w.header
            acquired = dicom.acquisition_date(header) if header else None
            series = r.item.series
        return {
            "patient_id": r.item.patient_id,
            "modality_id": facts["modality_id"],
            "kind": facts["kind"],
            "subtype": facts["subtype"],
            "file_type": facts["file_type"],
            "path": w.path,
            "size_bytes": w.size,
            "sha256": w.sha256,
            "mtime_ns": w.mtime_ns,
            "media_type": facts["media_type"],
            "series_label": series,
            "acquisition_date": acquired,
            "dicom_header": header,
            "extra_metadata": {},
            "missing_since": None,
        }

    # --- the end --------------------------------------------------------------------------

    def _finish(self, ctx: _Context) -> None:
        released = [pid for pid, ok in self.ok_patients.items() if ok]
        report = ctx.check.report(ctx.options.privacy)
        moving = ctx.move_out and ctx.archive_id is not None
        counts = dict(self.counts)
        leaving: dict[int, releases.Leaving] = {}
        if moving:
            with db.session_scope(self.settings) as session:
                candidates = releases.leaving(session, self.release_id, released)
            # The bytes on disk, before anyone leaves: each source and its archive copy read
            # and hashed now (a source changed since it was registered, or a damaged copy,
            # keeps the patient in the source).
            leaving = {
                pid: patient
                for pid, patient in candidates.items()
                if publish.verified_originals(self.data_root, patient.files)
            }
            counts["moved_out"] = len(leaving)
            if len(leaving) < len(candidates):
                counts["kept_unverified"] = len(candidates) - len(leaving)
        with db.session_scope(self.settings) as session:
            row = session.get(DatasetRelease, self.release_id)
            assert row is not None
            won = releases.complete(session, self.release_id, counts, report, self.worker)
            if not won:  # cancelled at the very end: the tags are not set either
                raise ExportCancelled("The release was cancelled")
            registry.tag_exported(
                session, row.source_project_id, None, released, registry.released_tag(ctx.dest_slug)
            )
            if leaving:
                releases.mark_left(session, ctx.user.id, self.release_id, leaving)
        if leaving:
            # The patients are out of the project (committed) before their source files go.
            self._delete_originals(list(leaving.values()))
        notify(self.settings, self.release_id)

    def _delete_originals(self, patients: list[releases.Leaving]) -> None:
        """The moved-out patients' source files deleted (each checked once more); their rows
        marked missing; what stayed on disk counted on the release."""
        deleted = publish.remove_originals(
            self.data_root, [(p.source_dir, p.files) for p in patients]
        )
        left = sum(len(p.files) for p in patients) - len(deleted)
        with db.session_scope(self.settings) as session:
            releases.mark_deleted(session, deleted)
            if left:
                row = session.get(DatasetRelease, self.release_id)
                assert row is not None
                row.counts = {**row.counts, "originals_left_in_place": left}
        if left:
            log.warning(
                "release %s: %d source files of patients moved out stay in place (changed "
                "meanwhile, or could not be deleted)",
                self.release_id,
                left,
            )


def _redact(text: str, item: _Item) -> str:
    """A message about ``item`` as users, the log and e-mail may read it: its stored and
    archive paths (which carry the patient's label and folders) replaced by its
    destination name."""
    for place in sorted({item.path, item.arcname, item.source.path}, key=len, reverse=True):
        if place and place != item.shown:
            text = text.replace(place, item.shown)
    return text


def _remove_leftovers(data_root: Path, root: str, patient_dirs: list[str]) -> None:
    """Temporary files a killed run left in these patients' folders (never registered);
    never through a link (a folder that is one is left alone: the write refuses it)."""
    for folder in patient_dirs:
        base = str(data_root / root / folder if root else data_root / folder)
        if not Path(base).is_dir() or os.path.realpath(base) != base:
            continue
        for directory, _, names in os.walk(base, followlinks=False):
            for name in names:
                if name.startswith(".") and name.endswith(".part"):
                    Path(directory, name).unlink(missing_ok=True)


def _series_key(f: FileEntry) -> str | None:
    return (
        series_key(f.modality, f.kind, f.series_label)
        if f.media_type == "application/dicom"
        else None
    )


def _folder_path() -> Any:
    return (
        select(PatientFolder.path)
        .where(PatientFolder.id == Patient.folder_id)
        .correlate(Patient)
        .scalar_subquery()
    )


def _facts(session: Any, ids: list[int]) -> dict[int, dict[str, Any]]:
    """The registry facts of the source files that a registration copies."""
    found: dict[int, dict[str, Any]] = {}
    columns = (
        FileRegistry.id,
        FileRegistry.modality_id,
        FileRegistry.kind,
        FileRegistry.subtype,
        FileRegistry.file_type,
        FileRegistry.media_type,
        FileRegistry.series_label,
        FileRegistry.dicom_header,
        FileRegistry.acquisition_date,
    )
    for start in range(0, len(ids), 500):
        for row in session.execute(
            select(*columns).where(FileRegistry.id.in_(ids[start : start + 500]))
        ):
            found[row.id] = row._asdict()
    return found


def _previous(
    session: Any, files: list[FileEntry], release: DatasetRelease
) -> dict[tuple[str, int], _Previous]:
    """The newest version earlier releases wrote of each source file, per target: by the
    file's registry id, or, for a file registered anew (its patient moved and was
    registered again), by its patient and SHA-256."""
    targets = {"destination": release.destination_project_id}
    if release.archive_project_id:
        targets["archive"] = release.archive_project_id
    ids = [f.id for f in files]
    found: dict[tuple[str, int], _Previous] = {}
    for target, project_id in targets.items():
        for start in range(0, len(ids), 500):
            newest = (
                select(func.max(ReleasedFile.id))
                .where(
                    ReleasedFile.project_id == project_id,
                    ReleasedFile.target == target,
                    ReleasedFile.source_file_id.in_(ids[start : start + 500]),
                    ReleasedFile.status.in_(releases.WRITTEN),
                )
                .group_by(ReleasedFile.source_file_id)
            )
            for r, live in _rows_of(session, newest):
                found[(target, r[8])] = _as_previous(r, live)
        unmatched = [f for f in files if (target, f.id) not in found]
        patients = sorted({f.patient_id for f in unmatched})
        by_bytes: dict[tuple[int, str], _Previous] = {}
        for start in range(0, len(patients), 500):
            newest = (
                select(func.max(ReleasedFile.id))
                .where(
                    ReleasedFile.project_id == project_id,
                    ReleasedFile.target == target,
                    ReleasedFile.source_patient_id.in_(patients[start : start + 500]),
                    ReleasedFile.status.in_(releases.WRITTEN),
                )
                .group_by(ReleasedFile.source_patient_id, ReleasedFile.source_sha256)
            )
            for r, live in _rows_of(session, newest):
                by_bytes[(r[9], r[10])] = _as_previous(r, live)
        for f in unmatched:
            match = by_bytes.pop((f.patient_id, f.sha256), None)  # one file per version
            if match is not None:
                found[(target, f.id)] = match
    return found


_PREVIOUS_COLUMNS = (
    ReleasedFile.id,
    ReleasedFile.release_id,
    ReleasedFile.status,
    ReleasedFile.version,
    ReleasedFile.fingerprint,
    ReleasedFile.destination_path,
    ReleasedFile.sha256,
    ReleasedFile.series,
    ReleasedFile.source_file_id,
    ReleasedFile.source_patient_id,
    ReleasedFile.source_sha256,
)


def _rows_of(session: Any, ids: Any) -> Any:
    """Columns, not ORM objects: a release of 100,000 files reads as many rows."""
    return [
        (r, live)
        for *r, live in session.execute(
            select(*_PREVIOUS_COLUMNS, FileRegistry.id)
            .outerjoin(FileRegistry, FileRegistry.id == ReleasedFile.file_id)
            .where(ReleasedFile.id.in_(ids))
        )
    ]


def _as_previous(r: Any, live: int | None) -> _Previous:
    row_id, release_id, status, version, fingerprint_, path, sha, series = r[:8]
    return _Previous(
        row_id, release_id, status, live, version or 1, fingerprint_, path or "", sha, series
    )


def _destination_names(
    session: Any, project_id: int
) -> tuple[dict[tuple[int, str, str, str], str], set[str]]:
    """The destination's series names by (destination patient, modality, kind, source
    series label), and every path it uses (lower case), so that a release adds to a patient
    without taking a name."""
    links = dict(
        session.execute(
            select(PatientLink.source_patient_id, PatientLink.destination_patient_id).where(
                PatientLink.destination_project_id == project_id
            )
        ).all()
    )
    rows = session.execute(
        select(
            FileRegistry.patient_id,
            Modality.key,
            FileRegistry.kind,
            FileRegistry.series_label,
            ReleasedFile.series,
        )
        .select_from(ReleasedFile)
        .join(FileRegistry, FileRegistry.id == ReleasedFile.source_file_id)
        .join(Modality, Modality.id == FileRegistry.modality_id)
        .where(
            ReleasedFile.project_id == project_id,
            ReleasedFile.target == "destination",
            ReleasedFile.series.is_not(None),
        )
        .distinct()
    )
    series: dict[tuple[int, str, str, str], str] = {}
    for src_pid, modality, kind, label, dest_series in rows:
        dest = links.get(src_pid)
        if dest is not None and label is not None:
            series[(dest, modality, kind.value, label)] = dest_series
    # Paths in use: every path a release wrote, and the files of patients no release
    # created. A registered file of a released patient that no release wrote is a killed
    # run's file that a later registration adopted: its path is the release's to take.
    written = select(ReleasedFile.destination_path).where(
        ReleasedFile.project_id == project_id, ReleasedFile.target == "destination"
    )
    others = (
        select(FileRegistry.path)
        .join(Patient, Patient.id == FileRegistry.patient_id)
        .where(Patient.project_id == project_id, Patient.id.not_in(list(links.values()) or [-1]))
    )
    taken = {p.lower() for p in session.scalars(written) if p}
    taken |= {p.lower() for p in session.scalars(others)}
    return series, taken
