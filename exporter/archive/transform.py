"""The export's per-file transform: curated values and the pseudonym go into DICOM headers,
the de-identification profile when the export asks for it, and identifying metadata out of
photos, scans and volumes. The originals are never touched.

For a DICOM file the header is parsed without its pixel data from the bytes already read
(one read per file), and changed in a fixed order: (a) the curated values in force, (b) the
patient's pseudonym (or label) in PatientID and PatientName, (c) the de-identification
profile. The new header is followed by the source's pixel data element unchanged; anything
after it is dropped (and logged), since it escapes the rewrite. Where only
text values of existing elements change, a byte-level patch does it; otherwise pydicom. A
DICOM file whose header cannot be parsed or written fails the export with its name: it is
never exported unmodified, since it may carry identifiers.

Every changed field is recorded: ``dicom_changes.csv`` in the archive gets the new values
(old ones are identifying), the database gets both.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import struct
import tempfile
import threading
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from io import BytesIO
from typing import BinaryIO, Literal, Protocol

import pydicom
from pydicom.dataset import Dataset

from exporter.archive.layout import PlannedFile
from exporter.deid.dataset import (
    PSEUDONYM_FIELDS,
    TEXT_VRS,
    Deidentifier,
    Edit,
    element_text,
    identifiers_of,
)
from exporter.deid.header_bytes import ByteDeidentifier
from exporter.deid.scrub import Scrubbed, scrubber_for
from exporter.dicom import header as dicom
from exporter.dicom.header import tag_text
from exporter.dicom.rules import CurationRules, series_key
from exporter.dicom.values import field_spec, to_element_value
from exporter.errors import SourceFileError

CHUNK = 1024 * 1024
HEAD = 16 * 1024  # read for the header first (then twice as much, and so on)
MAX_HEADER = 64 * 1024 * 1024
DEFLATED_SYNTAX = "1.2.840.10008.1.2.1.99"
CHANGE_BATCH = 5000  # changes handed to the database at a time
CSV_COLUMNS = ["path", "tag", "keyword", "new_value", "reason", "action"]


class Reader(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


def _views(reader: Reader) -> Callable[[int], bytes | memoryview]:
    """How to read data that only passes through: as views where the reader offers them
    (the export's pooled buffers), else as bytes."""
    return getattr(reader, "read_view", reader.read)


def _head(reader: Reader) -> bytes:
    """The first bytes of a DICOM file, as far as its pixel data where that starts within
    the first MiB: the byte-level paths need the whole header, the rest passes as views."""
    head = reader.read(HEAD)
    while len(head) < CHUNK and _PIXEL_DATA_LE not in head and (more := reader.read(len(head))):
        head += more
    return head


@dataclass(frozen=True)
class Change:
    """One changed field of one exported file."""

    path: str
    tag: str
    keyword: str
    new_value: str | None  # None: removed
    reason: str  # curated | pseudonym | deidentified
    action: str = "set"  # set | blanked | removed | replaced | shifted | cleaned
    old_value: str | None = None  # for the database only, never for the archive
    files: int = 1  # more than one: the same change to every file of the series ``path``


@dataclass(frozen=True)
class RewriteContext:
    """What an export's rewrite needs besides the file: curated values, the profile."""

    curated: CurationRules = field(default_factory=CurationRules)
    deid: Deidentifier | None = None
    # Each patient's identifiers the registry knows (by patient folder): cleaned out of
    # descriptions with the rest of the file's own.
    known: dict[str, list[str]] = field(default_factory=dict)


class HeaderRewriter:
    """Transform for :class:`exporter.archive.build.PartBuilder`; thread-safe, collects changes."""

    def __init__(self, context: RewriteContext | None = None, byte_level: bool = True) -> None:
        """``byte_level`` False makes every header go through pydicom (the reference path
        the byte-level one is tested against)."""
        self.context = context or RewriteContext()
        deid = self.context.deid
        self._bytes = ByteDeidentifier(deid) if deid is not None and byte_level else None
        self._byte_patch = byte_level
        self._changes: dict[str, list[Change]] = {}  # by entry, until the writer takes them
        self._lock = threading.Lock()

    def take_changes(self) -> list[Change]:
        """The changes recorded so far, in entry order, and forget them (one part's worth)."""
        with self._lock:
            taken, self._changes = self._changes, {}
        return [c for path in sorted(taken) for c in taken[path]]

    def take_entry(self, arcname: str) -> list[Change]:
        """The changes made to one entry, and forget them (the writer takes them in entry
        order, so a part's log never has to be held whole)."""
        with self._lock:
            return self._changes.pop(arcname, [])

    def _record(self, arcname: str, changes: list[Change]) -> None:
        if changes:
            with self._lock:
                self._changes.setdefault(arcname, []).extend(changes)

    def applies_to(self, planned: PlannedFile) -> bool:
        """Whether this file is changed on its way into the archive (else copied as is):
        every DICOM file, and in an export that is not identified every other file."""
        return planned.source.media_type == "application/dicom" or self.context.deid is not None

    def __call__(self, planned: PlannedFile, reader: BinaryIO) -> Iterator[bytes | memoryview]:
        if planned.source.media_type != "application/dicom":
            scrubber = scrubber_for(planned.source.path) if self.context.deid else None
            if scrubber is not None:
                yield from self._scrub(planned, scrubber, reader)
                return
            if self.context.deid is not None:
                raise SourceFileError(
                    f"{planned.source.path}: the portal cannot strip identifying metadata from "
                    "this kind of file, so a pseudonymised or de-identified export cannot "
                    "carry it; leave its modality out, or ask a data manager for an "
                    "identified export"
                )
            read = _views(reader)
            while chunk := read(CHUNK):
                yield chunk
            return
        header, head, offset, changes = self.rewrite(planned, _head(reader), reader)
        yield header
        # The pixel data element unchanged, and nothing after it (padding, signatures that
        # no longer match, private data): elements there escape the header rewrite, and a
        # PatientName among them would reach the archive.
        try:
            trailing = yield from pixel_element(head, offset, reader, transfer_syntax(header))
        except SourceFileError as exc:
            raise SourceFileError(f"{planned.source.path}: {exc}") from None
        if trailing:
            reason = "deidentified" if self.context.deid is not None else "pseudonym"
            changes.append(
                Change(
                    planned.arcname,
                    "(7FE0,0010)+",
                    "elements after the pixel data",
                    None,
                    reason,
                    "removed",
                    f"<{trailing} bytes>",
                )
            )
        self._record(planned.arcname, changes)

    def _scrub(self, planned: PlannedFile, scrubber: object, reader: BinaryIO) -> Iterator[bytes]:
        found: list[Scrubbed] = []
        try:
            yield from scrubber(reader, found)  # type: ignore[operator]
        except SourceFileError as exc:
            raise SourceFileError(f"{planned.source.path}: {exc}") from None
        changes = [
            Change(
                planned.arcname,
                "-",
                s.field,
                None if s.action == "removed" else "",
                "deidentified",
                s.action,
            )
            for s in found
        ]
        self._record(planned.arcname, changes)

    def rewrite(
        self, planned: PlannedFile, head: bytes, reader: Reader
    ) -> tuple[bytes, bytes, int, list[Change]]:
        """(new header, the source bytes read so far, where its pixel data starts, changes)."""
        source = planned.source
        edits: dict[int, tuple[str, str, str]] = {
            tag: (keyword, value, "curated")
            for tag, (keyword, value) in self.context.curated.for_file(
                source.id,
                source.patient_id,
                series_key(source.modality, source.kind, source.series_label),
            ).items()
        }
        for tag, keyword in PSEUDONYM_FIELDS.items():
            edits[tag] = (keyword, planned.patient_dir, "pseudonym")
        if self._bytes is not None:
            done = self._bytes.rewrite(head, planned.patient_dir, edits)
            if done is not None:
                header, offset, log = done
                changes = [
                    Change(planned.arcname, e.tag, e.keyword, e.new, reason, e.action, e.old)
                    for e, reason in log
                ]
                return header, head, offset, changes
        elif self._byte_patch and self.context.deid is None:
            fast = dicom.patch_elements(head, {tag: e[1] for tag, e in edits.items()})
            if fast is not None:
                header, offset, old = fast
                changes = [
                    Change(planned.arcname, tag_text(tag), keyword, value, reason, "set", old[tag])
                    for tag, (keyword, value, reason) in sorted(edits.items())
                    if old[tag] != value
                ]
                return header, head, offset, changes
        ds, head, offset = self._parse(source.path, head, reader)
        changes = self._apply(planned, ds, edits)
        if self.context.deid is not None:
            ds.preamble = bytes(128)  # a preamble can hold a TIFF header, with identifiers
        if self._bytes is not None:
            deid_edits = [
                Edit(c.tag, c.keyword, c.old_value, c.new_value, c.action)
                for c in changes
                if c.reason == "deidentified"
            ]
            self._bytes.remember(planned.patient_dir, head, ds, deid_edits)
        out = BytesIO()
        try:
            ds.save_as(out, enforce_file_format=True)
        except Exception as exc:
            raise _failed(f"{source.path}: DICOM header cannot be written", exc) from None
        return out.getvalue(), head, offset, changes

    @staticmethod
    def _parse(name: str, head: bytes, reader: Reader) -> tuple[Dataset, bytes, int]:
        while True:
            stream = BytesIO(head)
            try:
                ds = pydicom.dcmread(stream, stop_before_pixels=True)
            except Exception as exc:  # any parse failure: never export it unmodified
                more = reader.read(CHUNK) if len(head) < MAX_HEADER else b""
                if more:
                    head += more
                    continue
                raise _failed(f"{name}: DICOM header cannot be read", exc) from None
            offset = stream.tell()
            if offset >= len(head):
                more = reader.read(CHUNK)  # the header may go on past what was read
                if more and len(head) >= MAX_HEADER:
                    raise SourceFileError(
                        f"{name}: the DICOM header is longer than {MAX_HEADER} bytes and "
                        "cannot be rewritten; the file was not exported"
                    )
                if more:
                    head += more
                    continue
            break
        syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
        if syntax == DEFLATED_SYNTAX:
            raise SourceFileError(
                f"{name}: deflated DICOM cannot have its header rewritten in one pass; "
                "the file was not exported"
            )
        return ds, head, offset

    def _apply(
        self, planned: PlannedFile, ds: Dataset, edits: dict[int, tuple[str, str, str]]
    ) -> list[Change]:
        """Curated values, then the pseudonym, then the profile, on a parsed header."""
        name, arcname = planned.source.path, planned.arcname
        deid = self.context.deid
        identifiers = identifiers_of(ds) if deid is not None else []
        identifiers += self.context.known.get(planned.patient_dir, [])
        for _ in ds.iterall():  # decode every value with the source's character set now
            pass
        changes: list[Change] = []
        for tag, (keyword, value, reason) in sorted(edits.items()):
            old = element_text(ds[tag]) if tag in ds else None
            if old == value:
                continue
            if reason == "curated" and old is not None:
                identifiers.append(old)  # a corrected identifier is still an identifier
            try:
                element_value = (
                    to_element_value(field_spec(keyword), value) if reason == "curated" else value
                )
                setattr(ds, keyword, element_value)
            except Exception as exc:
                raise _failed(
                    f"{name}: {keyword} cannot be set to its curated value; correct the curated "
                    "value",
                    exc,
                ) from None
            changes.append(Change(arcname, tag_text(tag), keyword, value, reason, "set", old))
        if deid is not None:
            for edit in deid.apply(ds, planned.patient_dir, identifiers):
                changes.append(
                    Change(
                        arcname,
                        edit.tag,
                        edit.keyword,
                        edit.new,
                        "deidentified",
                        edit.action,
                        edit.old,
                    )
                )
        written = [v for _, v, _ in edits.values()]
        if not all(v.isascii() for v in written) and not _encodable(ds):
            ds.SpecificCharacterSet = "ISO_IR 192"  # a new value the old character set lacks
        return changes


def _failed(message: str, exc: Exception) -> SourceFileError:
    """A file that cannot be rewritten. pydicom's own words go to ``detail`` (kept for
    administrators), not to the message users read: they may quote the header's values."""
    error = SourceFileError(f"{message}; the file was not exported")
    error.detail = f"{type(exc).__name__}: {exc}"  # type: ignore[attr-defined]
    return error


_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)
_PIXEL_DATA_LE = b"\xe0\x7f\x10\x00"  # (7FE0,0010) as little endian files write it
_ITEM, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE0DD


def transfer_syntax(header: bytes) -> str:
    """The transfer syntax of a Part-10 header (its file meta is explicit VR little endian)."""
    try:
        return dicom.file_meta(header)[1]
    except (dicom.Unsupported, struct.error, UnicodeDecodeError):
        return ""


class _Source:
    """The source from a position on: what was read already, then the reader (as views
    where it offers them: the pixel data only passes through)."""

    def __init__(self, head: bytes, offset: int, reader: Reader) -> None:
        self.buf = memoryview(head)[offset:]
        self.read = _views(reader)

    def peek(self, n: int) -> bytes:
        while len(self.buf) < n:
            more = self.read(CHUNK)
            if not more:
                break
            self.buf = memoryview(bytes(self.buf) + more)
        return bytes(self.buf[:n])

    def take(self, n: int) -> Iterator[memoryview]:
        while n > 0:
            if not self.buf:
                more = self.read(CHUNK)
                if not more:
                    raise SourceFileError("the pixel data is truncated; the file was not exported")
                self.buf = memoryview(more)
            piece = self.buf[:n]
            self.buf = self.buf[len(piece) :]
            n -= len(piece)
            yield piece

    def drain(self) -> int:
        size = len(self.buf)
        self.buf = memoryview(b"")
        while more := self.read(CHUNK):
            size += len(more)
        return size


def pixel_element(
    head: bytes, offset: int, reader: Reader, syntax: str
) -> Generator[bytes | memoryview, None, int]:
    """Yield the pixel data element that starts at ``offset`` (native or encapsulated),
    unchanged; then read the rest of the source and return how many bytes followed it
    (dropped: trailing padding, signatures, private groups)."""
    source = _Source(head, offset, reader)
    little = syntax != "1.2.840.10008.1.2.2"
    implicit = syntax == "1.2.840.10008.1.2"
    order: Literal["little", "big"] = "little" if little else "big"
    start = source.peek(12)
    if len(start) < 8:
        return source.drain()
    group, elem = int.from_bytes(start[:2], order), int.from_bytes(start[2:4], order)
    if group << 16 | elem not in _PIXEL_TAGS:
        return source.drain()  # no pixel data: whatever is here is not image data
    if implicit or start[4:6] not in dicom.LONG_VRS:
        header_len = 8
        length = int.from_bytes(start[4:8] if implicit else start[6:8], order)
    else:
        header_len = 12
        length = int.from_bytes(start[8:12], order)
    yield from source.take(header_len)
    if length != 0xFFFFFFFF:
        yield from source.take(length)
        return source.drain()
    while True:  # encapsulated: items up to the sequence delimiter
        item = source.peek(8)
        if len(item) < 8:
            raise SourceFileError("the pixel data is truncated; the file was not exported")
        tag = int.from_bytes(item[:2], order) << 16 | int.from_bytes(item[2:4], order)
        size = int.from_bytes(item[4:8], order)
        yield from source.take(8)
        if tag == _SEQUENCE_END:
            return source.drain()
        if tag != _ITEM:
            raise SourceFileError("the pixel data is malformed; the file was not exported")
        yield from source.take(size)


def _encodable(ds: Dataset) -> bool:
    """Whether every text value fits the dataset's declared character set."""
    charset = ds.get("SpecificCharacterSet", "") or ""
    if isinstance(charset, list | tuple) or not isinstance(charset, str):
        return False
    encoding = dicom.CHARSETS.get(charset.strip())
    if encoding is None:
        return True  # leave other character sets to pydicom
    for elem in ds.iterall():
        if elem.VR in TEXT_VRS and elem.value is not None:
            try:
                element_text(elem).encode(encoding)
            except UnicodeEncodeError:
                return False
    return True


def _final(changes: list[Change]) -> list[Change]:
    """One change per field of an entry, its last: a field changed twice (curated, then
    removed or shifted by the profile) keeps only its final state, since the curated value
    it no longer carries may identify the patient. Fields in tag order."""
    final: dict[tuple[str, str], Change] = {}
    for c in sorted(changes, key=lambda c: (c.path, c.tag)):  # stable: later steps stay later
        final[(c.path, c.tag if c.tag != "-" else f"-{c.keyword}")] = c  # "-": not DICOM
    return list(final.values())


def _rows(changes: list[Change]) -> bytes:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    for c in _final(changes):
        writer.writerow([c.path, c.tag, c.keyword, c.new_value or "", c.reason, c.action])
    return text.getvalue().encode()


def changes_csv(changes: list[Change]) -> bytes:
    """``dicom_changes.csv`` for these changes: one row per changed field, final values
    only (see :class:`ChangeTable` for the streaming form the export uses)."""
    return (",".join(CSV_COLUMNS) + "\n").encode() + _rows(changes)


class ChangeTable:
    """A part's change log as its entries are written: ``dicom_changes.csv`` in a spooled
    file (memory up to a few MiB, then disk), one row per file and changed field; and the
    log with old values handed to ``sink`` in batches (the job writes them to the database),
    where a change made alike to every file of a series is one series row with its file
    count, and file rows remain only where files differ. Memory stays bounded whatever the
    number of files; ``inspect`` sees each row the CSV gets (the residual check)."""

    def __init__(
        self,
        sink: Callable[[list[Change]], None] | None = None,
        batch: int | None = None,
        inspect: Callable[[list[Change]], None] | None = None,
    ) -> None:
        self.file = tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024)  # noqa: SIM115
        self.file.write((",".join(CSV_COLUMNS) + "\n").encode())
        self.sink = sink
        self.inspect = inspect
        self.batch = batch or CHANGE_BATCH
        self.pending: list[Change] = []
        self._series: _Series | None = None

    def add(self, changes: list[Change], series: str | None = None) -> None:
        """One entry's changes (call it for every entry, changed or not, in entry order);
        ``series`` is the entry's series folder, None for a file outside a series."""
        if changes:
            final = _final(changes)
            if self.inspect is not None:
                self.inspect(final)
            self.file.write(_rows(final))
        if self.sink is None:
            return
        if self._series is not None and self._series.folder != series:
            self._emit(self._series.close())
            self._series = None
        if series is None:
            self._emit(changes)
            return
        if self._series is None:
            self._series = _Series(series)
        self._emit(self._series.add(changes))

    def _emit(self, rows: list[Change]) -> None:
        if not rows or self.sink is None:
            return
        self.pending.extend(rows)
        if len(self.pending) >= self.batch:
            self.sink(self.pending)
            self.pending = []

    def finish(self) -> Iterator[bytes]:
        """Hand the last rows to the sink; then the CSV's bytes, in chunks."""
        if self._series is not None:
            self._emit(self._series.close())
            self._series = None
        if self.sink is not None and self.pending:
            self.sink(self.pending)
            self.pending = []
        self.file.seek(0)
        while chunk := self.file.read(CHUNK):
            yield chunk

    def close(self) -> None:
        self.file.close()


_Key = tuple[str, str, str | None, str | None, str, str]


class _Series:
    """The changes of one series' files as they come: those the first file got are held,
    with the files that got them too, until the series ends; the others go at once."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.files = 0
        self.held: dict[_Key, tuple[Change, list[str]]] = {}

    @staticmethod
    def _key(c: Change) -> _Key:
        return (c.tag, c.keyword, c.old_value, c.new_value, c.reason, c.action)

    def add(self, changes: list[Change]) -> list[Change]:
        """One file's changes; returns those that go as file rows now."""
        self.files += 1
        now: list[Change] = []
        for c in changes:
            key = self._key(c)
            held = self.held.get(key)
            if self.files == 1 and held is None:
                self.held[key] = (c, [c.path])
            elif held is not None and held[1][-1] != c.path:
                held[1].append(c.path)
            else:
                now.append(c)
        return now

    def close(self) -> list[Change]:
        """The held changes: a series row where every file got one, else file rows."""
        rows: list[Change] = []
        for change, paths in self.held.values():
            if len(paths) == self.files and self.files > 1:
                rows.append(dataclasses.replace(change, path=self.folder, files=self.files))
            else:
                rows.extend(dataclasses.replace(change, path=p) for p in paths)
        return rows
