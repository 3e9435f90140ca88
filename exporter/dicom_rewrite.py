"""The export's per-file DICOM transform: the patient's pseudonym (or label) goes into the
header; the pixel data is copied byte for byte; the originals are never touched.

The header is parsed without its pixel data from the bytes already read (one read per
file), rewritten with pydicom, and followed by the rest of the source unchanged. A DICOM
file whose header cannot be parsed or written fails the export with its name: it is never
exported unmodified, since it may carry identifiers. Every changed field is recorded for
``dicom_changes.csv`` (the new value only: old values are identifying).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from typing import BinaryIO

import pydicom
from pydicom.datadict import tag_for_keyword

from exporter import dicom
from exporter.errors import SourceFileError
from exporter.layout import PlannedFile

CHUNK = 1024 * 1024
MAX_HEADER = 64 * 1024 * 1024
DEFLATED_SYNTAX = "1.2.840.10008.1.2.1.99"
PATIENT_FIELDS = ("PatientID", "PatientName")


@dataclass(frozen=True)
class Change:
    """One changed field of one exported file (what ``dicom_changes.csv`` lists)."""

    path: str
    tag: str
    keyword: str
    new_value: str
    reason: str


def _tag(keyword: str) -> str:
    value = int(tag_for_keyword(keyword) or 0)
    return f"({value >> 16:04X},{value & 0xFFFF:04X})"


class HeaderRewriter:
    """Transform for :class:`exporter.archive.PartBuilder`; thread-safe, collects changes."""

    def __init__(self) -> None:
        self.changes: list[Change] = []
        self._lock = threading.Lock()

    def take_changes(self) -> list[Change]:
        """The changes recorded so far, in entry order, and forget them (one part's worth)."""
        with self._lock:
            taken, self.changes = self.changes, []
        return sorted(taken, key=lambda c: (c.path, c.tag))

    @staticmethod
    def applies_to(planned: PlannedFile) -> bool:
        return planned.source.media_type == "application/dicom"

    def __call__(self, planned: PlannedFile, reader: BinaryIO) -> Iterator[bytes]:
        if not self.applies_to(planned):
            while chunk := reader.read(CHUNK):
                yield chunk
            return
        header, head, offset, changes = self._rewrite(planned, reader.read(CHUNK), reader)
        with self._lock:
            self.changes.extend(changes)
        yield header
        yield head[offset:]  # from the pixel data on, the source bytes unchanged
        while chunk := reader.read(CHUNK):
            yield chunk

    def _rewrite(
        self, planned: PlannedFile, head: bytes, reader: BinaryIO
    ) -> tuple[bytes, bytes, int, list[Change]]:
        """(new header, the source bytes read so far, where its pixel data starts, changes)."""
        name = planned.source.path
        value = planned.patient_dir  # the pseudonym, or the sanitised label
        fast = dicom.patch_patient_fields(head, value, PATIENT_FIELDS)
        if fast is not None:
            header, offset, old = fast
            changes = [
                Change(planned.arcname, _tag(k), k, value, "pseudonym")
                for k in PATIENT_FIELDS
                if old[k] != value
            ]
            return header, head, offset, changes
        while True:
            stream = BytesIO(head)
            try:
                ds = pydicom.dcmread(stream, stop_before_pixels=True)
            except Exception as exc:  # any parse failure: never export it unmodified
                more = reader.read(CHUNK) if len(head) < MAX_HEADER else b""
                if more:
                    head += more
                    continue
                raise SourceFileError(
                    f"{name}: DICOM header cannot be read ({exc}); the file was not exported"
                ) from None
            offset = stream.tell()
            if offset >= len(head) and len(head) < MAX_HEADER:
                more = reader.read(CHUNK)  # the header may go on past what was read
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
        changes = []
        for keyword in PATIENT_FIELDS:
            if str(ds.get(keyword, "")) != value:
                setattr(ds, keyword, value)
                changes.append(Change(planned.arcname, _tag(keyword), keyword, value, "pseudonym"))
        out = BytesIO()
        try:
            ds.save_as(out, enforce_file_format=True)
        except Exception as exc:
            raise SourceFileError(
                f"{name}: DICOM header cannot be written ({exc}); the file was not exported"
            ) from None
        return out.getvalue(), head, offset, changes


def changes_csv(changes: list[Change]) -> bytes:
    """``dicom_changes.csv``: one row per changed field (new values only)."""
    import csv
    import io

    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["path", "tag", "keyword", "new_value", "reason"])
    for c in changes:
        writer.writerow([c.path, c.tag, c.keyword, c.new_value, c.reason])
    return text.getvalue().encode()
