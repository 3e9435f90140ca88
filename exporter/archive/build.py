"""Build an export's ZIP archive(s): one read per source file, verifiable, atomic.

Each source file is read once, in chunks: its SHA-256 is checked against the registry on the
way, the optional per-file transform (the DICOM header rewrite) turns source chunks into
entry chunks, and the entry's SHA-256, CRC and compressed bytes are computed from those.
Files up to ``PREPARE_LIMIT`` are prepared on a small thread pool (zlib and hashlib release
the GIL) within a window bounded in bytes; one writer appends finished entries in a fixed
order. Larger files are streamed by the writer itself. The archive is written under a hidden
``.partial`` name, fsynced and renamed: a reader never sees half an archive under the final
name, and any error or cancellation removes the partial file.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import mmap
import os
import shutil
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from humanize import naturalsize

from exporter.archive.layout import (
    PlannedFile,
    PlannedPart,
    export_folder_name,
    plan_files,
    pseudonyms,
    sanitize_component,
    split_parts,
)
from exporter.archive.residual import (
    Needles,
    PatientFacts,
    ResidualCheck,
    Tap,
    format_of,
    part_needles,
)
from exporter.archive.sourceio import (
    CHUNK,
    ArchiveWriter,
    BufferPool,
    HashingReader,
    load,
    open_source,
)
from exporter.archive.transform import (
    Change,
    ChangeTable,
    HeaderRewriter,
    RewriteContext,
    transfer_syntax,
)
from exporter.archive.zipstream import DEFLATED, STORED, ZipWriter, crc32
from exporter.deid.dataset import Deidentifier, DeidOptions, new_date_shift, new_uid_key
from exporter.dicom.rules import CurationRules
from exporter.errors import (
    ExportCancelled,
    InvalidSelection,
    NotEnoughSpace,
    PrivacyCheckFailed,
    SourceFileError,
)
from exporter.schemas import (
    COMPRESSION_LEVELS,
    SUMMARIES,
    Chunk,
    ExportOptions,
    FileEntry,
    PrivacyLevel,
)

SCHEMA_VERSION = 2  # 2: privacy levels (the "privacy" section, new options)
PREPARE_LIMIT = 16 * 1024 * 1024
WINDOW_BYTES = 32 * 1024 * 1024
THREADS = 4  # at most, preparing files (see prepare_threads)
DISK_CHECK_EVERY = 64 * 1024 * 1024
PROGRESS_EVERY_S = 0.5
# Already-compressed content gains nothing from deflate: store it.
_COMPRESSED_SUFFIXES = (
    ".jpg",
    ".jpeg",
    ".png",
    ".gz",
    ".zip",
    ".mp4",
    ".mov",
    ".webm",
    ".mp3",
    ".m4a",
    ".ogg",
    ".7z",
    ".bz2",
    ".xz",
    ".zst",
    ".heic",
)
_COMPRESSED_MEDIA = ("image/jpeg", "image/png", "application/gzip", "application/zip")

Transform = Callable[[PlannedFile, BinaryIO], Iterator[Chunk]]


@dataclass(frozen=True)
class ExportInfo:
    """The facts about the export that go into ``metadata.json``."""

    export_id: str
    name: str
    project: str
    creator: str
    created_at: datetime
    notes: str = ""
    criteria: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def folder(self) -> str:
        """The top folder inside every archive; from the export's (sanitised) name."""
        return sanitize_component(self.name, export_folder_name(self.created_at))


@dataclass(frozen=True)
class Progress:
    files_done: int
    bytes_done: int
    files_total: int
    bytes_total: int
    current: str


@dataclass(frozen=True)
class FileRecord:
    """One file in the archive, as ``metadata.json`` lists it."""

    path: str
    size: int
    sha256: str
    modality: str
    kind: str
    patient: str
    subtype: str | None = None


@dataclass(frozen=True)
class SkippedFile:
    path: str
    modality: str
    patient: str
    reason: str


@dataclass(frozen=True)
class PartResult:
    number: int
    count: int
    path: Path
    size: int
    sha256: str
    files: list[FileRecord]
    skipped: list[SkippedFile]
    patients: list[str]
    privacy_report: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Prepared:
    planned: PlannedFile
    chunks: list[Chunk]
    method: int
    crc: int
    size: int
    compressed: int
    sha256: str
    mtime: float
    buf: mmap.mmap | None = None  # the pooled buffer ``chunks`` view: back once written


@dataclass
class _Skip:
    planned: PlannedFile
    reason: str


class _Tap(Protocol):
    def feed(self, piece: Chunk, /) -> None: ...
    def close(self) -> None: ...


class _NoTap:
    def feed(self, piece: Chunk, /) -> None:
        pass

    def close(self) -> None:
        pass


_NO_TAP = _NoTap()


class _DicomTap:
    """A DICOM entry for the residual check: the header rewrite yields the whole new header
    first (searched whole), then the pixel data element, of which the metadata of
    compressed (JPEG) frames are searched."""

    def __init__(self, check: ResidualCheck, file: str, scope: str, whole: bool = False) -> None:
        """``whole``: the file is not rewritten (only a benchmark's baseline does that), so
        its first piece is not the header alone: the header ends at the pixel data."""
        self.check, self.file, self.scope, self.whole = check, file, scope, whole
        self.pixels: Tap | None = None

    def feed(self, piece: Chunk, /) -> None:
        if self.pixels is None and self.whole:
            view = memoryview(piece)
            end = bytes(view[: 1 << 20]).find(b"\xe0\x7f\x10\x00", 132)
            end = end if end > 0 else len(view)
            self.whole = False
            self.feed(view[:end])
            if end < len(view):
                self.feed(view[end:])
            return
        if self.pixels is None:
            header = bytes(piece)
            self.check.dicom_header(self.file, header, self.scope)
            self.pixels = self.check.tap(
                self.file, "dicom-pixels", self.scope, transfer_syntax(header)
            )
            return
        self.pixels.feed(piece)

    def close(self) -> None:
        if self.pixels is not None:
            self.pixels.close()


def entry_tap(check: ResidualCheck, planned: PlannedFile, rewritten: bool = True) -> _Tap:
    """What reads one file's written bytes for the residual check as they pass: a DICOM
    file's header whole (``rewritten``: the header rewrite yields it first) and its
    compressed frames' metadata, another file's metadata where the check can read it."""
    file, scope = planned.arcname, planned.patient_dir
    if planned.source.media_type == "application/dicom":
        return _DicomTap(check, file, scope, not rewritten)
    return check.tap(file, format_of(planned.source.path), scope) or _NO_TAP


def default_identifiers(part: PlannedPart) -> Needles:
    """The identifiers a part's own files tell of: labels and stored names (the job adds
    what the registry's headers hold)."""
    facts = {f.patient_dir: PatientFacts(f.patient_dir, f.source.patient_label) for f in part.files}
    return part_needles(facts.values(), part_paths(part), search_study_dates=False)


def part_paths(part: PlannedPart) -> list[tuple[str, str]]:
    """(patient folder, stored path) of every file of a part, for :func:`part_needles`."""
    return [(f.patient_dir, f.source.path) for f in part.files]


def prepare_threads(compression: str) -> int:
    """Threads preparing files. Storing is mostly reading: more reads in flight help when the
    sources come from the disk (a cold 0.87 GB export: 2.2-2.5 s with two, 1.9-2.1 s with
    four). Deflating is CPU work: one thread a core, since each holds a file and its output
    (four on two cores: +29 MiB peak memory, no faster)."""
    if compression == "store":
        return THREADS
    return max(2, min(THREADS, os.cpu_count() or 2))


def compression_level(planned: PlannedFile, compression: str) -> int | None:
    """zlib level for this file under the policy, or None to store it."""
    level = COMPRESSION_LEVELS[compression]
    name = planned.source.path.lower()
    if level is None or name.endswith(_COMPRESSED_SUFFIXES):
        return None
    if planned.source.media_type in _COMPRESSED_MEDIA or planned.source.media_type.startswith(
        ("video/", "audio/")
    ):
        return None
    return level


class PartBuilder:
    """Builds one part (a self-contained ZIP) of an export."""

    def __init__(
        self,
        info: ExportInfo,
        options: ExportOptions,
        data_root: Path,
        *,
        disk_reserve: int = 0,
        transform: Transform | None = None,
        progress: Callable[[Progress], None] | None = None,
        cancel: Callable[[], bool] | None = None,
        changes_sink: Callable[[list[Change]], None] | None = None,
        identifiers: Callable[[PlannedPart], Needles] | None = None,
        check_identifiers: bool = True,
    ) -> None:
        """``changes_sink`` receives every DICOM change, old values included, in batches
        as the part is written (the archive's ``dicom_changes.csv`` has new values only).
        ``identifiers`` gives the known identifiers of a part's patients (the job reads
        them from the registry); by default they are the labels and stored names of the
        part's files. ``check_identifiers`` False skips the residual-identifier check (for
        the benchmark that measures its cost; no export runs without it)."""
        self.info = info
        self.changes_sink = changes_sink
        self.options = options
        self.data_root = data_root.resolve()
        self.disk_reserve = disk_reserve
        if transform is None:
            if options.shift_dates:
                raise ValueError("shifted dates need export_transform(...) as transform")
            transform = export_transform(options, [])
        self.transform = transform
        self.identifiers = identifiers or default_identifiers
        self.check_identifiers = check_identifiers
        self.check = ResidualCheck(Needles())
        # Entry times say nothing of the sources: the export's own time, except in an
        # identified export (which keeps the stored files' times).
        self.entry_time = info.created_at.timestamp() if options.deidentify else None
        self.progress = progress
        self.cancel = cancel
        self._last_progress = 0.0
        self._dirs_checked: dict[str, bool] = {}
        self._partial = Path()
        # Read buffers in flight (the window), being hashed, or kept for the next files.
        self.pool = BufferPool(WINDOW_BYTES)
        self._out: ArchiveWriter | None = None
        self._checked_at = 0
        self._files_done = 0
        self._bytes_done = 0
        self._total_files = 0
        self._total_bytes = 0

    def _check_cancel(self) -> None:
        if self.cancel is not None and self.cancel():
            raise ExportCancelled("The export was cancelled")

    def _transform_for(self, planned: PlannedFile) -> Transform | None:
        """The file's transform, or None when it goes into the archive as it is stored."""
        transform = self.transform
        if isinstance(transform, HeaderRewriter) and not transform.applies_to(planned):
            return None
        return transform

    def _read(self, planned: PlannedFile, digest: list[str]) -> Iterator[Chunk]:
        """A large file's entry bytes, read once in chunks, checked against the registry at
        the end. ``digest`` receives the entry's SHA-256 (the source's when unchanged)."""
        source = planned.source
        with open_source(self.data_root, source.path, self._dirs_checked) as raw:
            reader = HashingReader(raw, self._check_cancel)
            transform = self._transform_for(planned)
            if transform is None:
                while chunk := reader.read(CHUNK):
                    yield chunk
                digest.append(reader.sha.hexdigest())
            else:
                entry_sha = hashlib.sha256()
                for piece in transform(planned, reader):  # type: ignore[arg-type]
                    entry_sha.update(piece)
                    yield piece
                reader.drain()
                digest.append(entry_sha.hexdigest())
        if reader.size != source.size or reader.sha.hexdigest() != source.sha256:
            raise SourceFileError(
                f"{source.path}: changed since it was registered (size {reader.size} against "
                f"{source.size}, or a different SHA-256); register the directory again"
            )

    def _prepare(self, planned: PlannedFile) -> _Prepared | _Skip:
        """A file's whole entry, on a pool thread: read into a pooled buffer and checked
        first, then transformed, hashed and compressed from views of that buffer."""
        source = planned.source
        try:
            self._check_cancel()
            with open_source(self.data_root, source.path, self._dirs_checked) as raw:
                loaded = load(raw, source.path, source.size, source.sha256, self.pool)
            level = compression_level(planned, self.options.compression)
            compressor = zlib.compressobj(level, zlib.DEFLATED, -15) if level is not None else None
            transform = self._transform_for(planned)
            entry_sha = hashlib.sha256() if transform is not None else None
            pieces = (loaded.data,) if transform is None else transform(planned, loaded)  # type: ignore[arg-type]
            tap = self._tap(planned)
            crc, size, chunks = 0, 0, []
            for piece in pieces:
                if entry_sha is not None:
                    entry_sha.update(piece)
                tap.feed(piece)
                crc = crc32(piece, crc)
                size += len(piece)
                out = compressor.compress(piece) if compressor else piece
                if out:
                    chunks.append(out)
            tap.close()
            buf: mmap.mmap | None = loaded.buf
            if compressor:
                chunks.append(compressor.flush())
                self.pool.give(loaded.buf)  # the entry's bytes are zlib's own now
                buf = None
            return _Prepared(
                planned,
                chunks,
                DEFLATED if compressor else STORED,
                crc,
                size,
                sum(len(c) for c in chunks),
                entry_sha.hexdigest() if entry_sha is not None else loaded.sha256,
                self._mtime(planned),
                buf,
            )
        except SourceFileError as exc:
            redacted = self._redact(exc, planned)
            if self.options.skip_missing:
                return _Skip(planned, str(redacted))
            raise redacted from None

    def _stream(self, writer: ZipWriter, name: str, planned: PlannedFile) -> _Prepared | _Skip:
        """Write a large file's entry as it is read. A missing or unreadable file is noticed
        before the entry starts (and can be skipped); one that changed is noticed at its end,
        when the entry is written, and always fails the part."""
        digest: list[str] = []
        chunks = self._read(planned, digest)
        try:
            first = next(chunks, b"")
        except SourceFileError as exc:
            raise self._redact(exc, planned) from None
        chunks = itertools.chain([first], chunks)
        level = compression_level(planned, self.options.compression)
        # Deflate at level 0 (stored blocks) rather than STORED: a streamed entry's sizes
        # follow its data, which readers that walk local headers (Java's ZipInputStream)
        # accept only for deflated entries. It costs 5 bytes per 64 KiB.
        mtime = self._mtime(planned)
        self._check_entry(name, planned, mtime)
        entry = writer.open_entry(name, method=DEFLATED, level=level or 0, mtime=mtime)
        tap = self._tap(planned)
        try:
            for chunk in chunks:
                tap.feed(chunk)
                entry.write(chunk)
                self._tick(writer, planned.patient_dir)
        except SourceFileError as exc:
            raise self._redact(exc, planned) from None
        tap.close()
        entry.close()
        return _Prepared(
            planned,
            [],
            entry.method,
            entry.crc,
            entry.size,
            entry.compressed,
            digest[0],
            mtime,
        )

    def _mtime(self, planned: PlannedFile) -> float:
        return self.entry_time or planned.source.mtime_ns / 1e9

    def _redact(self, exc: SourceFileError, planned: PlannedFile) -> SourceFileError:
        """The error as users see it: the file's entry name, not its stored path (which
        carries the patient's label and the names it was stored under), with nothing
        chained that names it (a traceback reaches the worker's log). The stored path
        rides along as ``stored_path`` for the detail kept for administrators."""
        if not self.options.pseudonyms:
            return exc
        redacted = SourceFileError(str(exc).replace(planned.source.path, planned.arcname))
        redacted.stored_path = planned.source.path  # type: ignore[attr-defined]
        redacted.detail = getattr(exc, "detail", "")  # type: ignore[attr-defined]
        return redacted

    def _tap(self, planned: PlannedFile) -> _Tap:
        """What reads an entry's bytes for the residual check as they are written."""
        if not self.check_identifiers:
            return _NO_TAP
        return entry_tap(self.check, planned, self._transform_for(planned) is not None)

    def _check_entry(self, name: str, planned: PlannedFile, mtime: float) -> None:
        """A file's entry name (below the export's folder, which metadata.json's check
        covers) and time."""
        if self.check_identifiers:
            self.check.entry_name(planned.arcname, planned.patient_dir)
            self.check.entry_time(name, mtime)

    def _tick(self, writer: ZipWriter, current: str, force: bool = False) -> None:
        """Check free space every so many bytes, and report progress at most twice a second."""
        if writer.offset - self._checked_at >= DISK_CHECK_EVERY:
            self._checked_at = writer.offset
            free = shutil.disk_usage(self._partial.parent).free
            if self._out is not None:  # what the writer still holds will take space too
                free -= self._out.size - self._out.written
            if free < self.disk_reserve:
                raise NotEnoughSpace(
                    f"Free space at the export root fell to {_size(max(free, 0))}, below the "
                    f"reserve of {_size(self.disk_reserve)}: the export was stopped; free some "
                    "space"
                )
        now = time.monotonic()
        if self.progress and (force or now - self._last_progress >= PROGRESS_EVERY_S):
            self._last_progress = now
            self.progress(
                Progress(
                    self._files_done,
                    self._bytes_done,
                    self._total_files,
                    self._total_bytes,
                    current,
                )
            )

    def build(self, part: PlannedPart, count: int, dest: Path) -> PartResult:
        """Write ``dest`` for this part (atomically), returning what it holds."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        self._partial = dest.parent / f".{dest.name}.partial"
        self._checked_at = 0
        self._files_done = 0
        self._bytes_done = 0
        self._total_files = len(part.files)
        self._total_bytes = part.bytes
        try:
            result = self._build(part, count, dest)
        except BaseException:
            self._partial.unlink(missing_ok=True)
            raise
        return result

    def _build(self, part: PlannedPart, count: int, dest: Path) -> PartResult:
        rewriter = self.transform if isinstance(self.transform, HeaderRewriter) else None
        sources = {int(f.source.mtime_ns // 1_000_000_000) for f in part.files}
        if self.entry_time is not None:  # never within 2 s (a DOS time) of a source's time
            while any(abs(int(self.entry_time) - t) <= 2 for t in sources):
                self.entry_time += 5
        needles = self.identifiers(part) if self.check_identifiers else Needles()
        self.check = ResidualCheck(needles, sources, strict=self.options.deidentify)
        table = (
            ChangeTable(self.changes_sink, inspect=self._inspect_changes)
            if rewriter is not None
            else None
        )
        try:
            return self._write_part(part, count, dest, rewriter, table)
        finally:
            if table is not None:
                table.close()

    def _inspect_changes(self, rows: list[Change]) -> None:
        """The new values ``dicom_changes.csv`` gets, searched as the rows are written."""
        if not self.check_identifiers:
            return
        for c in rows:
            if c.new_value:
                self.check.search(
                    "dicom_changes.csv",
                    lambda c=c: f"new value of {c.tag} for {c.path}",  # type: ignore[misc]
                    c.new_value,
                    c.path.split("/", 1)[0],
                    "dicom_changes.csv rows",
                )

    def _add_own(self, writer: ZipWriter, name: str, data: bytes) -> None:
        """One of the archive's own files (metadata, sums, report)."""
        mtime = self.entry_time or time.time()
        self._check_own(writer, name, mtime)
        _add_bytes(writer, name, data, mtime)

    def _check_own(self, writer: ZipWriter, name: str, mtime: float) -> None:
        if self.check_identifiers:
            self.check.entry_name(name, None)
            self.check.entry_time(name, mtime)

    def _write_part(
        self,
        part: PlannedPart,
        count: int,
        dest: Path,
        rewriter: HeaderRewriter | None,
        table: ChangeTable | None,
    ) -> PartResult:
        folder = self.info.folder
        records: list[FileRecord] = []
        skipped: list[SkippedFile] = []
        out = self._out = ArchiveWriter(self._partial)
        try:
            writer = ZipWriter(out)
            threads = prepare_threads(self.options.compression)
            with ThreadPoolExecutor(threads, thread_name_prefix="export") as pool:
                try:
                    for item in self._ordered(pool, part.files, writer):
                        self._check_cancel()
                        p = item.planned
                        if isinstance(item, _Skip):
                            skipped.append(
                                SkippedFile(
                                    p.arcname, p.source.modality, p.patient_dir, item.reason
                                )
                            )
                        else:
                            records.append(
                                FileRecord(
                                    p.arcname,
                                    item.size,
                                    item.sha256,
                                    p.source.modality,
                                    p.source.kind,
                                    p.patient_dir,
                                    p.source.subtype,
                                )
                            )
                        if rewriter is not None and table is not None:
                            series = p.arcname.rpartition("/")[0] if p.source.series_label else None
                            table.add(rewriter.take_entry(p.arcname), series)
                        self._files_done += 1
                        self._bytes_done += p.source.size
                        self._tick(writer, p.patient_dir, self._files_done == self._total_files)
                except BaseException:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
            document = build_metadata(self.info, self.options, part.number, count, records, skipped)
            text = json.dumps(document, indent=2, ensure_ascii=False)
            if self.check_identifiers:
                self.check.document("metadata.json", document, text)
            metadata = text.encode()
            self._add_own(writer, f"{folder}/metadata.json", metadata)
            sums = "".join(f"{r.sha256}  {r.path}\n" for r in records)
            sums += f"{hashlib.sha256(metadata).hexdigest()}  metadata.json\n"
            if table is not None:
                name, mtime = f"{folder}/dicom_changes.csv", self.entry_time or time.time()
                self._check_own(writer, name, mtime)
                entry = writer.open_entry(name, method=DEFLATED, level=6, mtime=mtime)
                table_sha = hashlib.sha256()
                for chunk in table.finish():
                    table_sha.update(chunk)
                    entry.write(chunk)
                entry.close()
                sums += f"{table_sha.hexdigest()}  dicom_changes.csv\n"
            report = self._privacy_report()
            body = json.dumps(report, indent=2, ensure_ascii=False).encode()
            self._add_own(writer, f"{folder}/privacy_report.json", body)
            sums += f"{hashlib.sha256(body).hexdigest()}  privacy_report.json\n"
            self._add_own(writer, f"{folder}/SHA256SUMS", sums.encode())
            size = writer.close()
            archive_sha = out.finish()
        except BaseException:
            out.abort()
            raise
        self._partial.replace(dest)
        _fsync_dir(dest.parent)
        return PartResult(
            part.number,
            count,
            dest,
            size,
            archive_sha,
            records,
            skipped,
            part.patient_dirs,
            report,
        )

    def _privacy_report(self) -> dict[str, Any]:
        """The residual check's report; raises :class:`PrivacyCheckFailed` when it found
        identifiers in an archive that must carry none (before the archive is complete)."""
        report = self.check.report(self.options.privacy)
        if not self.check_identifiers:
            report["result"] = "not run (benchmark)"
        if self.check.failed:
            raise PrivacyCheckFailed(failure_message(report), report)
        return report

    def _ordered(
        self, pool: ThreadPoolExecutor, files: list[PlannedFile], writer: ZipWriter
    ) -> Iterator[_Prepared | _Skip]:
        """Each file's entry, in plan order: prepared ahead on the pool, or streamed here."""
        folder = self.info.folder
        queue: deque[tuple[PlannedFile, Future[_Prepared | _Skip] | None]] = deque()
        in_flight = 0
        upcoming = iter(files)
        exhausted = False
        while queue or not exhausted:
            while not exhausted and in_flight < WINDOW_BYTES:
                nxt = next(upcoming, None)
                if nxt is None:
                    exhausted = True
                    break
                small = nxt.source.size <= PREPARE_LIMIT
                queue.append((nxt, pool.submit(self._prepare, nxt) if small else None))
                in_flight += nxt.source.size if small else 0
            planned, future = queue.popleft()
            name = f"{folder}/{planned.arcname}"
            if future is None:
                try:
                    yield self._stream(writer, name, planned)
                except SourceFileError as exc:
                    if not self.options.skip_missing or name in writer.names:
                        raise
                    yield _Skip(planned, str(exc))
                continue
            item = future.result()
            in_flight -= planned.source.size
            if isinstance(item, _Prepared):
                self._check_entry(name, planned, item.mtime)
                writer.add_prepared(
                    name,
                    item.chunks,
                    method=item.method,
                    crc=item.crc,
                    size=item.size,
                    compressed=item.compressed,
                    mtime=item.mtime,
                )
                item.chunks = []
                if item.buf is not None:
                    self.pool.give(item.buf)  # the writer copied what it needed
            yield item


def failure_message(report: dict[str, Any], shown: int = 5) -> str:
    """What a user reads when the residual check fails an export: files and places."""
    findings = report["findings"]
    where = "; ".join(f"{f['file']} {f['place']} ({f['kind']})" for f in findings[:shown])
    more = report["finding_count"] - min(shown, len(findings))
    return (
        f"The privacy check found {report['finding_count']} identifier(s) left in the archive, "
        f"so the export was stopped and its files removed: {where}"
        + (f"; and {more} more" if more > 0 else "")
        + ". A data manager can see the privacy report on the export's page; correct the "
        "source or the project's kept private tags, then export again."
    )


def build_metadata(
    info: ExportInfo,
    options: ExportOptions,
    number: int,
    count: int,
    records: list[FileRecord],
    skipped: list[SkippedFile],
) -> dict[str, Any]:
    """The ``metadata.json`` document of one part (schema in docs/metadata.md).

    With pseudonyms on, the patient labels of the selection are left out (only their count
    is kept): the archive must not carry what links a pseudonym to a person.
    """
    criteria = dict(info.criteria)
    if options.pseudonyms and criteria.get("patients"):
        criteria["patients"] = f"{len(criteria['patients'])} selected by label"
    patients: dict[str, dict[str, Any]] = {}
    modalities: dict[str, dict[str, int]] = {}
    for r in records:
        p = patients.setdefault(
            r.patient, {"patient": r.patient, "modalities": {}, "files": 0, "bytes": 0}
        )
        p["files"] += 1
        p["bytes"] += r.size
        p["modalities"][r.modality] = p["modalities"].get(r.modality, 0) + 1
        m = modalities.setdefault(r.modality, {"files": 0, "bytes": 0, "patients": 0})
        m["files"] += 1
        m["bytes"] += r.size
    for key in modalities:
        modalities[key]["patients"] = sum(1 for p in patients.values() if key in p["modalities"])
    return {
        "schema_version": SCHEMA_VERSION,
        "export": {
            "id": info.export_id,
            "name": info.name,
            "notes": info.notes,
            "project": info.project,
            "creator": info.creator,
            "created_at": info.created_at.isoformat(),
            "completed_at": datetime.now(UTC).isoformat(),
            "folder": info.folder,
        },
        "part": {"number": number, "count": count},
        "criteria": criteria,
        "privacy": privacy_facts(options),
        "options": {**options.to_json(), **info.options},
        "patients": list(patients.values()),
        "modalities": [{"modality": k, **v} for k, v in sorted(modalities.items())],
        "totals": {
            "patients": len(patients),
            "files": len(records),
            "bytes": sum(r.size for r in records),
            "skipped": len(skipped),
        },
        "files": [asdict(r) for r in records],
        "skipped": [asdict(s) for s in skipped],
    }


def privacy_facts(options: ExportOptions) -> dict[str, Any]:
    """What ``metadata.json`` says was done for privacy, in plain terms."""
    level = options.level
    profile = DeidOptions.for_export(options)
    if level is PrivacyLevel.IDENTIFIED:
        pseudonyms = "none: real patient labels"
    elif options.fresh_pseudonyms:
        pseudonyms = "fresh for this export (not linkable to other exports)"
    else:
        pseudonyms = "stable in the project (the same patient has the same pseudonym)"
    return {
        "level": level.value,
        "summary": SUMMARIES[level],
        "pseudonyms": pseudonyms,
        "dicom_profile": profile.method() if profile is not None else [],
        "dates": (
            "as stored"
            if profile is None or profile.retain_full_dates
            else "shifted per patient"
            if profile.retain_dates
            else "removed or blanked"
        ),
        "private_tags_kept": list(options.kept_private) if profile is not None else "all",
        "other_files": "metadata stripped" if profile is not None else "as stored",
        "entry_times": "the export's creation time"
        if profile is not None
        else "the stored files' times",
        "residual_check": "privacy_report.json",
    }


def _add_bytes(writer: ZipWriter, name: str, data: bytes, mtime: float) -> None:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    compressed = compressor.compress(data) + compressor.flush()
    writer.add_prepared(
        name,
        [compressed],
        method=DEFLATED,
        crc=crc32(data),
        size=len(data),
        compressed=len(compressed),
        mtime=mtime,
    )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def part_filename(info: ExportInfo, number: int, count: int) -> str:
    """``<folder>.zip`` for a one-part export, ``<folder>.part-001.zip`` ... otherwise."""
    return f"{info.folder}.zip" if count == 1 else f"{info.folder}.part-{number:03d}.zip"


def _size(n: int) -> str:
    return naturalsize(n, binary=True)


def check_free_space(export_root: Path, needed: int, reserve: int) -> None:
    """Refuse to start when the export would leave less than ``reserve`` free."""
    export_root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(export_root).free
    if free - needed < reserve:
        raise NotEnoughSpace(
            f"Not enough space at the export root: {_size(free)} free, this export needs about "
            f"{_size(needed)} plus a reserve of {_size(reserve)}; choose fewer patients or "
            "modalities, or "
            "ask an administrator to free space"
        )


@dataclass(frozen=True)
class ManifestPart:
    """One part as ``manifest.json`` lists it."""

    number: int
    file: str
    size: int
    sha256: str
    patients: list[str]
    files: int
    bytes: int
    skipped: int = 0

    @classmethod
    def of(cls, part: PartResult) -> ManifestPart:
        return cls(
            part.number,
            part.path.name,
            part.size,
            part.sha256,
            part.patients,
            len(part.files),
            sum(r.size for r in part.files),
            len(part.skipped),
        )


def write_manifest(export_dir: Path, info: ExportInfo, parts: list[ManifestPart]) -> Path:
    """The export-level ``manifest.json``: every part's file, size and SHA-256."""
    ordered = sorted(parts, key=lambda p: p.number)
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "export": {
            "id": info.export_id,
            "name": info.name,
            "project": info.project,
            "creator": info.creator,
            "created_at": info.created_at.isoformat(),
            "completed_at": datetime.now(UTC).isoformat(),
            "folder": info.folder,
        },
        "parts": [
            {
                "number": p.number,
                "file": p.file,
                "size": p.size,
                "sha256": p.sha256,
                "patients": p.patients,
                "files": p.files,
                "skipped": p.skipped,
            }
            for p in ordered
        ],
        "totals": {
            "parts": len(ordered),
            "files": sum(p.files for p in ordered),
            "bytes": sum(p.bytes for p in ordered),
            "archive_bytes": sum(p.size for p in ordered),
        },
    }
    path = export_dir / "manifest.json"
    partial = export_dir / ".manifest.json.partial"
    partial.write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
    partial.replace(path)
    return path


@dataclass(frozen=True)
class ExportResult:
    """What an export produced: its parts, manifest, and the pseudonym of each patient."""

    export_dir: Path
    parts: list[PartResult]
    manifest: Path
    pseudonyms: dict[str, str]

    @property
    def files(self) -> int:
        return sum(len(p.files) for p in self.parts)

    @property
    def skipped(self) -> list[SkippedFile]:
        return [s for p in self.parts for s in p.skipped]


def plan_export(
    files: list[FileEntry], options: ExportOptions, names: Mapping[str, str] | None = None
) -> tuple[list[PlannedPart], dict[str, str]]:
    """Entry names and parts for these files, and the folder each patient label got.

    ``names`` maps labels to pseudonyms (the job passes the project's stable ones); without
    it a pseudonymised export draws fresh ones.
    """
    if not files:
        raise InvalidSelection("The selection has no files: choose other patients or modalities")
    if options.pseudonyms and names is None:
        names = pseudonyms(f.patient_label for f in files)
    planned = plan_files(files, names if options.pseudonyms else None)
    folders = {p.source.patient_label: p.patient_dir for p in planned}
    return split_parts(planned, options.max_part_bytes), folders


def export_transform(
    options: ExportOptions,
    patient_dirs: list[str],
    curated: CurationRules | None = None,
    uid_key: str | None = None,
    date_shifts: Mapping[str, int] | None = None,
    known: Mapping[str, list[str]] | None = None,
) -> HeaderRewriter:
    """The per-file rewrite of one export: curated values, pseudonyms and, but for an
    identified export, the de-identification profile with the export's UID key and
    per-patient date shifts (fresh ones when not given). ``known``: each patient's
    identifiers from the registry, cleaned out of descriptions too."""
    deid = None
    profile = DeidOptions.for_export(options)
    if profile is not None:
        shifts = dict(date_shifts or {})
        if profile.retain_dates:
            shifts = {d: shifts.get(d) or new_date_shift() for d in patient_dirs}
        deid = Deidentifier(profile, bytes.fromhex(uid_key or new_uid_key()), shifts)
    return HeaderRewriter(RewriteContext(curated or CurationRules(), deid, dict(known or {})))


def build_export(
    files: list[FileEntry],
    export_dir: Path,
    info: ExportInfo,
    options: ExportOptions,
    data_root: Path,
    *,
    disk_reserve: int = 0,
    transform: Transform | None = None,
    progress: Callable[[Progress], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    changes_sink: Callable[[list[Change]], None] | None = None,
    names: Mapping[str, str] | None = None,
    identifiers: Callable[[PlannedPart], Needles] | None = None,
    check_identifiers: bool = True,
) -> ExportResult:
    """Build every part of an export in this process, then its manifest.

    The job runner builds parts on several workers with :class:`PartBuilder` and writes the
    manifest itself; this is the same work in one place (CLI, tests, benchmarks).
    """
    parts, folders = plan_export(files, options, names)
    check_free_space(export_dir.parent, sum(p.bytes for p in parts), disk_reserve)
    if transform is None:
        transform = export_transform(options, sorted(set(folders.values())))
    builder = PartBuilder(
        info,
        options,
        data_root,
        disk_reserve=disk_reserve,
        transform=transform,
        progress=progress,
        cancel=cancel,
        changes_sink=changes_sink,
        identifiers=identifiers,
        check_identifiers=check_identifiers,
    )
    results: list[PartResult] = []
    try:
        for part in parts:
            dest = export_dir / part_filename(info, part.number, len(parts))
            results.append(builder.build(part, len(parts), dest))
        manifest = write_manifest(export_dir, info, [ManifestPart.of(r) for r in results])
    except BaseException:
        remove_outputs(export_dir)
        raise
    return ExportResult(export_dir, results, manifest, folders)


def remove_outputs(export_dir: Path) -> None:
    """Remove an export's files (finished parts too: an export is complete or absent)."""
    shutil.rmtree(export_dir, ignore_errors=True)
