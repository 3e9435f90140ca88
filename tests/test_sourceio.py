"""Reading sources into pooled buffers: checked before use, buffers reused, long headers
still rewritten at byte level, and the archive's hash taken from the very bytes written."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import threading
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import pydicom
import pytest

from exporter.archive import sourceio
from exporter.archive.build import ExportInfo, build_export, export_transform
from exporter.archive.layout import PlannedFile
from exporter.archive.sourceio import STAGE, ArchiveWriter, BufferPool, load, open_source
from exporter.archive.transform import HeaderRewriter
from exporter.dicom.rules import CurationRules
from exporter.errors import NotEnoughSpace, SourceFileError
from exporter.schemas import ExportOptions, FileEntry
from tests.builders import write_dicom


def test_the_pool_hands_back_the_buffers_it_was_given() -> None:
    pool = BufferPool(keep=4 * 1024 * 1024)
    first = pool.take(526_062)
    assert len(first) >= 526_062 and len(first) <= 526_062 * 1.07, "at most ~6% unused"
    pool.give(first)
    again = pool.take(526_100)  # another slice of the same series: same size class
    assert again is first
    small = pool.take(10)
    assert len(small) == 64 * 1024


def test_the_pool_keeps_no_more_than_it_may() -> None:
    pool = BufferPool(keep=3 * 1024 * 1024)
    big = [pool.take(1024 * 1024) for _ in range(4)]
    for buf in big:
        pool.give(buf)
    kept = [pool.take(1024 * 1024) for _ in range(4)]
    assert sum(1 for b in kept if any(b is k for k in big)) == 3, "one was dropped"
    for buf in kept[:3]:
        pool.give(buf)
    other = pool.take(2 * 1024 * 1024)
    pool.give(other)  # room is made by dropping buffers of the size no longer in demand
    assert pool.take(2 * 1024 * 1024) is other


def registered(path: Path, root: Path) -> tuple[str, int, str]:
    raw = path.read_bytes()
    return path.relative_to(root).as_posix(), len(raw), hashlib.sha256(raw).hexdigest()


@pytest.mark.parametrize("change", ["grown", "shrunk", "same size"])
def test_a_source_that_changed_is_refused_before_anything_uses_it(
    tmp_path: Path, change: str
) -> None:
    path = write_dicom(tmp_path / "p" / "1.dcm")
    name, size, sha = registered(path, tmp_path)
    raw = path.read_bytes()
    path.write_bytes(
        {"grown": raw + b"\0\0", "shrunk": raw[:-2], "same size": raw[:-1] + b"\x01"}[change]
    )
    pool = BufferPool(keep=1024 * 1024)
    with open_source(tmp_path, name) as fh, pytest.raises(SourceFileError) as caught:
        load(fh, name, size, sha, pool)
    expected = {"grown": size + 2, "shrunk": size - 2, "same size": size}[change]
    message = str(caught.value)
    assert message.startswith(f"p/1.dcm: changed since it was registered (size {expected} ")
    assert "register the directory again" in message


def test_a_loaded_source_reads_as_bytes_or_views(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "1.dcm")
    name, size, sha = registered(path, tmp_path)
    with open_source(tmp_path, name) as fh:
        loaded = load(fh, name, size, sha, BufferPool(keep=0))
    assert loaded.sha256 == sha
    head = loaded.read(132)
    assert isinstance(head, bytes) and head[128:] == b"DICM"
    rest = loaded.read_view()
    assert isinstance(rest, memoryview)
    assert head + bytes(rest) == path.read_bytes()
    assert loaded.read(10) == b"" and len(loaded.read_view(10)) == 0


@pytest.mark.parametrize("how", ["O_DIRECT", "buffered", "refused"])
def test_the_archive_is_written_whole_and_hashed_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """Several staging buffers and a tail that is not a whole block: the file holds exactly
    what was written (no padding), and the hash is of those bytes. Where the filesystem
    refuses O_DIRECT (open(2) says EINVAL; injected here), the writes are buffered."""
    if how == "refused":
        real_open = os.open

        def refusing_open(path: object, flags: int, *args: object) -> int:
            if flags & os.O_DIRECT:
                raise OSError(errno.EINVAL, "Invalid argument")
            return real_open(path, flags, *args)  # type: ignore[arg-type]

        monkeypatch.setattr(sourceio.os, "open", refusing_open)
    path = tmp_path / "archive.partial"
    pool = BufferPool(keep=1024 * 1024)
    buf = pool.take(100)
    buf[:5] = b"hello"
    pieces = [os.urandom(n) for n in (1, 4095, 4097, 3 * 1024 * 1024, 5 * 1024 * 1024 + 17)]
    out = ArchiveWriter(path, direct=how != "buffered")
    assert out.direct is (how == "O_DIRECT")
    for piece in pieces:
        out.write(piece)
    out.write(memoryview(buf)[:5])
    buf[:5] = b"later"  # the writer copied it: reusing the buffer changes nothing
    digest = out.finish()
    expected = b"".join(pieces) + b"hello"
    assert path.read_bytes() == expected
    assert digest == hashlib.sha256(expected).hexdigest()
    assert out.size == len(expected)
    alive = {t.name for t in threading.enumerate() if t.is_alive()}
    assert not alive & {"archive-write", "archive-sha256"}


def test_a_full_disk_under_the_writer_is_raised_not_lost(small_disk: Path) -> None:
    out = ArchiveWriter(small_disk / "a.partial")
    with pytest.raises(NotEnoughSpace, match="The export root is full: the export was stopped"):
        for _ in range(4):
            out.write(b"x" * STAGE)
        out.finish()
    out.abort()
    alive = {t.name for t in threading.enumerate() if t.is_alive()}
    assert not alive & {"archive-write", "archive-sha256"}


def long_header_dicom(path: Path) -> bytes:
    """A CT slice whose header is ~70 KiB (a long text value), past the first read."""
    write_dicom(path, patient="DOE^JOHN", rows=64)
    ds = pydicom.dcmread(path)
    ds.TextValue = "note " * 14_000  # UT: long values are valid
    ds.StudyDescription = "Old study"
    ds.save_as(path, enforce_file_format=True)
    raw = path.read_bytes()
    assert raw.index(b"\xe0\x7f\x10\x00") > 64 * 1024
    return raw


def planned(path: Path, root: Path) -> PlannedFile:
    name, size, sha = registered(path, root)
    entry = FileEntry(
        1, 1, "P001", "cbct", "raw", None, name, size, sha, "application/dicom", "series_001", 0
    )
    return PlannedFile(entry, "patient_001/cbct/series_001/0001.dcm", "patient_001")


@pytest.mark.parametrize("privacy", ["identified", "pseudonymised"])
def test_a_long_header_is_still_rewritten_at_byte_level(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, privacy: str
) -> None:
    raw = long_header_dicom(tmp_path / "data" / "1.dcm")
    item = planned(tmp_path / "data" / "1.dcm", tmp_path / "data")
    folder = "P001" if privacy == "identified" else "patient_001"
    item = PlannedFile(item.source, item.arcname, folder)
    curated = CurationRules(by_patient={1: {0x00081030: ("StudyDescription", "New study")}})
    options = ExportOptions(privacy=privacy)
    reference = export_transform(options, [folder], curated, "ab" * 32)
    reference_out = b"".join(
        bytes(c)
        for c in HeaderRewriter(reference.context, byte_level=False)(item, io.BytesIO(raw))  # type: ignore[arg-type]
    )

    def no_pydicom(*args: object) -> None:
        raise AssertionError("the byte-level path should have handled this header")

    monkeypatch.setattr(HeaderRewriter, "_parse", staticmethod(no_pydicom))
    transform = export_transform(options, [folder], curated, "ab" * 32)
    result = build_export(
        [item.source],
        tmp_path / "out",
        ExportInfo("e1", "x", "demo", "r@x", datetime.now(UTC)),
        options,
        tmp_path / "data",
        transform=transform,
    )
    with zipfile.ZipFile(result.parts[0].path) as zf:
        exported = zf.read(f"x/{result.parts[0].files[0].path}")
    ours, theirs = pydicom.dcmread(io.BytesIO(exported)), pydicom.dcmread(io.BytesIO(reference_out))
    assert str(ours.PatientName) == folder
    assert ours.get("StudyDescription") == ("New study" if privacy == "identified" else None)
    assert ours == theirs and ours.PixelData == pydicom.dcmread(io.BytesIO(raw)).PixelData
    assert (tmp_path / "data" / "1.dcm").read_bytes() == raw, "the original is untouched"
