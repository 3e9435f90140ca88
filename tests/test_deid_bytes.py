"""The byte-level de-identification path gives what the pydicom path (the reference) gives.

Every demo DICOM file goes through both, under each option set; the datasets must be equal
element for element (sequences included), with the same file meta UID, the same pixel data,
and the same changes recorded."""

from __future__ import annotations

import io

import pydicom
import pytest

from exporter import demo_data
from exporter.archive import ExportOptions, export_transform
from exporter.curation import CurationRules
from exporter.deid_bytes import ByteDeidentifier
from exporter.dicom_rewrite import HeaderRewriter
from exporter.layout import PlannedFile
from exporter.registry import FileEntry

OPTIONS = [
    {},
    {"retain_dates": True},
    {"retain_uids": True},
    {"remove_private": False},
    {"retain_dates": True, "retain_uids": True, "remove_private": False},
]


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    root = tmp_path_factory.mktemp("demo")
    demo_data.write_demo_tree(root, patients=2, seed=9)
    files = sorted(root.rglob("*.dcm"))
    assert files
    return [f.read_bytes() for f in files[:6] + files[-6:]]


def planned(index: int, raw: bytes, patient: str) -> PlannedFile:
    entry = FileEntry(
        index, 1, "P", "cbct", "raw", None, f"p/{index}.dcm", len(raw), "", "application/dicom",
        "series_001", 0,
    )  # fmt: skip
    return PlannedFile(entry, f"{patient}/cbct/series_001/{index:04d}.dcm", patient)


def run(rewriter: HeaderRewriter, item: PlannedFile, raw: bytes) -> tuple[pydicom.Dataset, set]:  # type: ignore[type-arg]
    reader = io.BytesIO(raw)
    header, head, offset, changes = rewriter.rewrite(item, reader.read(1 << 20), reader)
    ds = pydicom.dcmread(io.BytesIO(header + head[offset:] + reader.read()))
    return ds, {(c.tag, c.action, c.new_value, c.reason) for c in changes}


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(o) or "basic")
def test_byte_level_equals_pydicom(sources: list[bytes], options: dict[str, bool]) -> None:
    opts = ExportOptions(deidentify=True, **options)  # type: ignore[arg-type]
    curated = CurationRules(by_patient={1: {0x00081030: ("StudyDescription", "Curated")}})
    fast = export_transform(opts, ["patient_001"], curated, "ab" * 32, {"patient_001": -40})
    slow = HeaderRewriter(fast.context, byte_level=False)
    assert isinstance(fast._bytes, ByteDeidentifier)
    took_bytes = 0
    for i, raw in enumerate(sources):
        item = planned(i, raw, "patient_001")
        expected, expected_changes = run(slow, item, raw)
        got, got_changes = run(fast, item, raw)
        assert got == expected, f"file {i}: datasets differ"
        assert got.file_meta.MediaStorageSOPInstanceUID == expected.SOPInstanceUID
        assert got.PixelData == expected.PixelData
        assert got.preamble == bytes(128)
        assert got_changes == expected_changes
        reader = io.BytesIO(raw)
        took_bytes += fast._bytes.rewrite(reader.read(1 << 20), "patient_001", {
            0x00100010: ("PatientName", "patient_001", "pseudonym"),
            0x00100020: ("PatientID", "patient_001", "pseudonym"),
        }) is not None  # fmt: skip
    assert took_bytes == len(sources), "the demo's headers all take the byte-level path"


def test_what_the_byte_level_path_leaves_to_pydicom(sources: list[bytes]) -> None:
    fast = export_transform(ExportOptions(deidentify=True, clean_descriptors=True), [])
    assert fast._bytes is not None
    edits = {0x00100010: ("PatientName", "patient_001", "pseudonym")}
    # Cleaning free text needs the file's identifiers: pydicom does it.
    assert fast._bytes.rewrite(sources[0], "patient_001", edits) is None
    plain = export_transform(ExportOptions(deidentify=True), [])
    assert plain._bytes is not None
    absent = {0x00102160: ("EthnicGroup", "x", "curated")}  # a field the file lacks
    assert plain._bytes.rewrite(sources[0], "patient_001", absent) is None
    assert plain._bytes.rewrite(sources[0][:600], "patient_001", {}) is None  # truncated
    assert plain._bytes.rewrite(sources[0], "patient_001", edits) is not None
