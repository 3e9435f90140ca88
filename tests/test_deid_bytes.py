"""The byte-level de-identification path gives what the pydicom path (the reference) gives.

Every demo DICOM file goes through both, under each option set; the datasets must be equal
element for element (sequences included), with the same file meta UID, the same pixel data,
and the same changes recorded."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest

from exporter.archive.build import export_transform
from exporter.archive.layout import PlannedFile
from exporter.archive.transform import HeaderRewriter
from exporter.deid.header_bytes import ByteDeidentifier
from exporter.dev import demo_data
from exporter.dicom.rules import CurationRules
from exporter.schemas import ExportOptions, FileEntry

# ExportOptions for each privacy level and the options the project's policy may add.
OPTIONS = [
    {"privacy": "deidentified"},
    {"privacy": "deidentified", "shift_dates": True},
    {},  # pseudonymised, nothing retained
    {
        "retain_full_dates": True,
        "retain_uids": True,
        "retain_device_identity": True,
        "retain_patient_characteristics": True,
    },
    {"kept_private": ("0009,DEMO VENDOR,10",)},
    {"retain_full_dates": True, "kept_private": ("0009,DEMO VENDOR,10",)},
]
IDS = ["deidentified", "shifted", "pseudonymised", "retained", "kept-private", "dates+private"]


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    root = tmp_path_factory.mktemp("demo")
    demo_data.write_demo_tree(root, patients=2, seed=9)
    files = sorted(root.rglob("*.dcm"))
    assert files
    return [f.read_bytes() for f in files[:6] + files[-6:]]


def planned(index: int, raw: bytes, patient: str) -> PlannedFile:
    entry = FileEntry(
        index,
        1,
        "P",
        "cbct",
        "raw",
        None,
        f"p/{index}.dcm",
        len(raw),
        "",
        "application/dicom",
        "series_001",
        0,
    )
    return PlannedFile(entry, f"{patient}/cbct/series_001/{index:04d}.dcm", patient)


def run(rewriter: HeaderRewriter, item: PlannedFile, raw: bytes) -> tuple[pydicom.Dataset, set]:  # type: ignore[type-arg]
    reader = io.BytesIO(raw)
    header, head, offset, changes = rewriter.rewrite(item, reader.read(1 << 20), reader)
    ds = pydicom.dcmread(io.BytesIO(header + head[offset:] + reader.read()))
    return ds, {(c.tag, c.action, c.new_value, c.reason) for c in changes}


@pytest.mark.parametrize("options", OPTIONS, ids=IDS)
def test_byte_level_equals_pydicom(sources: list[bytes], options: dict[str, object]) -> None:
    opts = ExportOptions(**options)  # type: ignore[arg-type]
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
        took_bytes += (
            fast._bytes.rewrite(
                reader.read(1 << 20),
                "patient_001",
                {
                    0x00100010: ("PatientName", "patient_001", "pseudonym"),
                    0x00100020: ("PatientID", "patient_001", "pseudonym"),
                },
            )
            is not None
        )
    if not opts.kept_private:  # a reviewed private tag: pydicom knows its creator
        assert took_bytes == len(sources), "the demo's headers all take the byte-level path"
    else:
        assert took_bytes == 0


def test_what_the_byte_level_path_leaves_to_pydicom(sources: list[bytes]) -> None:
    fast = export_transform(ExportOptions(clean_descriptors=True), [])
    assert fast._bytes is not None
    edits = {0x00100010: ("PatientName", "patient_001", "pseudonym")}
    # Cleaning free text needs the file's identifiers: pydicom does it.
    assert fast._bytes.rewrite(sources[0], "patient_001", edits) is None
    plain = export_transform(ExportOptions(), [])
    assert plain._bytes is not None
    absent = {0x00102160: ("EthnicGroup", "x", "curated")}  # a field the file lacks
    assert plain._bytes.rewrite(sources[0], "patient_001", absent) is None
    assert plain._bytes.rewrite(sources[0][:600], "patient_001", {}) is None  # truncated
    assert plain._bytes.rewrite(sources[0], "patient_001", edits) is not None


def full_output(rewriter: HeaderRewriter, item: PlannedFile, raw: bytes) -> bytes:
    """What the export writes for ``raw`` (the transform, as the archive calls it)."""
    return b"".join(bytes(c) for c in rewriter(item, io.BytesIO(raw)))  # type: ignore[arg-type]


def with_extras(path: Path, encapsulated: bool = False, syntax: str = "") -> bytes:
    """A CT slice with what the profile must not let through around it: sender and receiver
    in the file meta, and a private group and padding after the pixel data."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    from tests.builders import write_dicom

    write_dicom(path, patient="DOE^JOHN")
    ds = pydicom.dcmread(path)
    ds.file_meta.SourceApplicationEntityTitle = "STMARYS_CT1"
    ds.file_meta.PrivateInformationCreatorUID = "1.2.3.4"
    ds.file_meta.PrivateInformation = b"DOE^JOHN"
    if encapsulated:
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.PixelData = encapsulate([b"\xff\xd8" + b"\x11" * 100 + b"\xff\xd9"] * 2)
    block = ds.private_block(0x7FE1, "GEMS_PIXD", create=True)
    block.add_new(0x10, "LO", "DOE^JOHN MRN123")
    ds.add_new(0xFFFCFFFC, "OB", b"DOE^JOHN")
    if syntax:
        ds.file_meta.TransferSyntaxUID = syntax
        big = syntax == "1.2.840.10008.1.2.2"
        pydicom.dcmwrite(
            path,
            ds,
            implicit_vr=syntax == "1.2.840.10008.1.2",
            little_endian=not big,
            force_encoding=True,
        )
        return path.read_bytes()
    ds.save_as(path, enforce_file_format=True)
    return path.read_bytes()


@pytest.mark.parametrize(
    "syntax", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.2"], ids=["implicit", "big-endian"]
)
def test_other_transfer_syntaxes_lose_what_follows_the_pixel_data_too(
    tmp_path: Path, syntax: str
) -> None:
    raw = with_extras(tmp_path / "x.dcm", syntax=syntax)
    assert raw.count(b"DOE^JOHN") == 4
    rewriter = export_transform(ExportOptions(), ["patient_001"])
    out = full_output(rewriter, planned(1, raw, "patient_001"), raw)
    assert b"DOE^JOHN" not in out and b"STMARYS" not in out
    ds = pydicom.dcmread(io.BytesIO(out))
    assert ds.file_meta.TransferSyntaxUID == syntax
    assert ds.PixelData == pydicom.dcmread(io.BytesIO(raw)).PixelData
    assert "PatientIdentityRemoved" in ds


@pytest.mark.parametrize("encapsulated", [False, True], ids=["native", "encapsulated"])
@pytest.mark.parametrize("byte_level", [True, False], ids=["bytes", "pydicom"])
def test_nothing_after_the_pixel_data_and_no_sender_in_the_file_meta(
    tmp_path: Path, encapsulated: bool, byte_level: bool
) -> None:
    raw = with_extras(tmp_path / "x.dcm", encapsulated)
    assert raw.count(b"DOE^JOHN") == 4
    fast = export_transform(ExportOptions(), ["patient_001"])
    rewriter = HeaderRewriter(fast.context, byte_level=byte_level)
    out = full_output(rewriter, planned(1, raw, "patient_001"), raw)
    assert b"DOE^JOHN" not in out and b"STMARYS" not in out
    ds = pydicom.dcmread(io.BytesIO(out))
    source = pydicom.dcmread(io.BytesIO(raw))
    assert ds.PixelData == source.PixelData, "pixel data (native or fragments) unchanged"
    assert "SourceApplicationEntityTitle" not in ds.file_meta
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID != source.SOPInstanceUID
    changes = {c.keyword: c.action for c in rewriter.take_changes()}
    assert changes["elements after the pixel data"] == "removed"
    assert changes["SourceApplicationEntityTitle"] == "removed"


def test_the_archive_table_keeps_only_the_final_value_of_a_field() -> None:
    from exporter.archive.transform import Change, changes_csv

    curated = Change("p/1.dcm", "(0008,0080)", "InstitutionName", "St Mary's", "curated")
    removed = Change(
        "p/1.dcm", "(0008,0080)", "InstitutionName", None, "deidentified", "removed", "St Mary's"
    )
    table = changes_csv([curated, removed]).decode()
    assert "St Mary" not in table
    assert table.splitlines()[1] == 'p/1.dcm,"(0008,0080)",InstitutionName,,deidentified,removed'


def test_a_header_too_long_to_rewrite_fails_rather_than_leaks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from exporter.archive import transform as dicom_rewrite
    from exporter.errors import SourceFileError
    from tests.builders import write_dicom

    write_dicom(tmp_path / "x.dcm")
    ds = pydicom.dcmread(tmp_path / "x.dcm")
    del ds.PixelData
    ds.add_new(0x00420011, "OB", b"%PDF" + b"x" * 3_000_000)  # an encapsulated document
    ds.add_new(0x00091010, "LO", "DOE^JOHN")
    ds.save_as(tmp_path / "x.dcm", enforce_file_format=True)
    raw = (tmp_path / "x.dcm").read_bytes()
    monkeypatch.setattr(dicom_rewrite, "MAX_HEADER", 2 * 1024 * 1024)
    monkeypatch.setattr(dicom_rewrite, "CHUNK", 1024 * 1024)
    rewriter = export_transform(ExportOptions(), ["patient_001"])
    with pytest.raises(SourceFileError, match="longer than"):
        full_output(rewriter, planned(1, raw, "patient_001"), raw)


def test_clean_removes_what_it_cannot_clean(sources: list[bytes]) -> None:
    from exporter.deid.dataset import Deidentifier, DeidOptions
    from exporter.deid.profile import BASIC_PROFILE

    rows = [r for r in BASIC_PROFILE.values() if r.clean_descriptors]
    binary = next(r for r in rows if pydicom.datadict.dictionary_VR(r.tag) in ("OB", "CS"))
    ds = pydicom.dcmread(io.BytesIO(sources[0]))
    vr = pydicom.datadict.dictionary_VR(binary.tag)
    ds.add_new(binary.tag, vr, b"DOE^JOHN" if vr == "OB" else "DOEJOHN")
    deid = Deidentifier(DeidOptions(clean_descriptors=True), b"k" * 32, {})
    edits = deid.apply(ds, "patient_001", ["DOE^JOHN"])
    assert binary.tag not in ds
    assert any(e.keyword == binary.keyword and e.action == "removed" for e in edits)


def test_a_curated_value_the_character_set_lacks_switches_the_file_to_utf8(
    sources: list[bytes],
) -> None:
    raw = sources[0]
    source = pydicom.dcmread(io.BytesIO(raw))
    assert source.SpecificCharacterSet == "ISO_IR 100"
    text = "Mandíbula 下颌骨"
    curated = CurationRules(by_patient={1: {0x00081030: ("StudyDescription", text)}})
    for deidentify in (False, True):
        rewriter = export_transform(
            ExportOptions(
                privacy="deidentified" if deidentify else "identified", clean_descriptors=deidentify
            ),
            ["patient_001"],
            curated,
        )
        out = pydicom.dcmread(
            io.BytesIO(full_output(rewriter, planned(1, raw, "patient_001"), raw))
        )
        assert out.SpecificCharacterSet == "ISO_IR 192"
        assert out.StudyDescription == text
        assert out.PixelData == source.PixelData
