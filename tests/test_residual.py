"""The residual-identifier check on its own: how values become needles, how they match, and
what the per-format parsers find in the metadata of real files (written with Pillow, pydicom
and by hand), fed in pieces as an export feeds them."""

from __future__ import annotations

import gzip
import io
import struct

import pydicom
import pytest
from PIL import Image, PngImagePlugin

from exporter.archive.residual import (
    PARSERS,
    Kind,
    Needles,
    PatientFacts,
    ResidualCheck,
    Tap,
    format_of,
    known_identifiers,
    merge_reports,
    tokens,
)
from tests.builders import write_dicom


def needles_for(**header: object) -> Needles:
    fact = PatientFacts("patient_001", "Q7731", "d/site/Q7731", [dict(header)])
    return known_identifiers([fact], search_study_dates=True, pseudonyms=["patient_001"])


def found(needles: Needles, text: str, scope: str | None = "patient_001") -> set[str]:
    return needles.find(tokens(text), scope)


@pytest.mark.parametrize(
    "text",
    ["Dupont^Jan", "dupont jan", "JAN DUPONT", "Jan-Dupont", "seen by Dupont today", "DUPONT"],
)
def test_a_name_matches_in_any_case_order_and_separator(text: str) -> None:
    assert found(needles_for(PatientName="Dupont^Jan"), text) == {Kind.NAME}


@pytest.mark.parametrize("text", ["Dupontel", "jan", "Jan Peeters", "dupon t", "Dupont_jr."])
def test_only_whole_tokens_match_and_a_given_name_alone_does_not(text: str) -> None:
    got = found(needles_for(PatientName="Dupont^Jan"), text)
    assert got == ({Kind.NAME} if text == "Dupont_jr." else set())


def test_accents_and_ids_with_or_without_separators() -> None:
    needles = needles_for(PatientName="Müller^Jörg", OtherPatientIDs="85.03.12-123.45")
    assert found(needles, "MULLER JORG") == {Kind.NAME}
    assert found(needles, "müller") == {Kind.NAME}
    assert found(needles, "id 85-03-12 123 45") == {Kind.ID}
    assert found(needles, "8503121234 5") == set(), "partly squashed: documented as not found"
    assert found(needles, "85031212345") == {Kind.ID}


def test_dates_in_every_form_in_their_own_patients_files_only() -> None:
    needles = needles_for(PatientBirthDate="19850312", StudyDate="20210304")
    for text in ("19850312", "1985-03-12", "1985:03:12 10:00", "12.03.1985", "03/12/1985"):
        assert found(needles, text) == {Kind.BIRTH_DATE}, text
    assert found(needles, "202103041015") == {Kind.DATE}, "a date-time starts with the date"
    assert found(needles, "2021-03-04", scope="patient_002") == set()
    assert found(needles, "2021-03-04", scope=None) == set()


def test_short_common_and_pseudonym_like_values_are_left_out_and_counted() -> None:
    fact = PatientFacts(
        "patient_001",
        "patient_001",
        None,
        [{"PatientID": "12", "PatientName": "TEST^ANONYMIZED", "AccessionNumber": "00042"}],
    )
    needles = known_identifiers([fact], search_study_dates=False, pseudonyms=["patient_001"])
    counts = needles.report_counts()
    assert counts["values"] == {}
    assert counts["left_out"] == {
        "same as a pseudonym": 1,
        "too common": 3,
        "too short": 2,
    }
    assert found(needles, "patient_001 TEST 12 00042") == set()


def test_a_date_the_shift_moves_onto_another_date_is_left_out() -> None:
    fact = PatientFacts(
        "patient_001",
        "Q1",
        None,
        [{"StudyDate": "20210101"}, {"StudyDate": "20210111"}],
        date_shift=-10,
    )
    needles = known_identifiers([fact], search_study_dates=True)
    assert needles.left_out["ambiguous after the date shift"] == 1
    assert found(needles, "20210101") == set(), "20210111 shifted: it is in the archive"
    assert found(needles, "20210111") == {Kind.DATE}


def test_stored_names_below_the_patient_are_searched_but_not_structure() -> None:
    fact = PatientFacts(
        "patient_001",
        "Q7731",
        "demo/site/Q7731",
        [],
        paths=[
            "demo/site/Q7731/cbct/raw/series_001/0001.dcm",
            "demo/site/Q7731/cbct/processed/Q7731_Dupont^Jan_seg.nii.gz",
        ],
    )
    needles = known_identifiers([fact], search_study_dates=False)
    assert found(needles, "q7731 dupont jan seg") == {Kind.LABEL, Kind.STORED_NAME}
    assert found(needles, "patient_001/cbct/series_001/0001.dcm") == set()
    assert needles.left_out == {}, "structure is not counted as left out"


def feed(kind: str, data: bytes, piece: int = 7) -> list[tuple[str, bytes]]:
    """What a format's parser reports of ``data``, fed ``piece`` bytes at a time."""
    seen: list[tuple[str, bytes]] = []
    times: list[int] = []
    tap = Tap(PARSERS[kind](lambda place, b: seen.append((place, b)), times.append))
    for start in range(0, len(data), piece):
        tap.feed(memoryview(data)[start : start + piece])
    tap.close()
    return seen + [("time", str(t).encode()) for t in times if t]


@pytest.mark.parametrize("piece", [1, 2, 5, 4096])
def test_jpeg_segments_between_scans_and_after_the_image(piece: int) -> None:
    out = io.BytesIO()
    exif = Image.Exif()
    exif[0x013B] = "Dupont^Jan"
    Image.new("RGB", (64, 48), (9, 99, 199)).save(
        out, "JPEG", exif=exif, comment=b"Q7731", progressive=True
    )
    data = out.getvalue() + b"trailer Dupont"
    seen = feed("jpeg", data, piece=piece)
    places = [p for p, _ in seen]
    assert "JPEG APP1 segment" in places and "JPEG COM segment" in places
    assert ("JPEG data after the image (EOI)", b"trailer Dupont") in seen
    assert all(b"Dupont" in b or p != "JPEG APP1 segment" for p, b in seen)
    assert len([p for p in places if p == "JPEG COM segment"]) == 1


def test_png_text_chunks_and_nifti_header_inside_gzip() -> None:
    out = io.BytesIO()
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "Dupont^Jan")
    Image.new("RGB", (8, 8)).save(out, "PNG", pnginfo=info)
    assert ("PNG tEXt chunk", b"Author\0Dupont^Jan") in feed("png", out.getvalue())
    header = bytearray(348)
    struct.pack_into("<i", header, 0, 348)
    struct.pack_into("<f", header, 108, 352)
    header[148:160] = b"seg Dupont\0\0"
    raw = io.BytesIO()
    with gzip.GzipFile(filename="Dupont.nii", mode="wb", fileobj=raw, mtime=1614852930) as gz:
        gz.write(bytes(header) + bytes(4) + bytes(1000))
    seen = dict(feed("nifti-gz", raw.getvalue(), piece=11))
    assert seen["gzip file name"] == b"Dupont.nii"
    assert seen["NIfTI descrip"].rstrip(b"\0") == b"seg Dupont"
    assert seen["time"] == b"1614852930"


def test_stl_ply_and_obj_text_is_found_geometry_is_not() -> None:
    binary = b"Scanner Dupont".ljust(80) + struct.pack("<I", 1) + bytes(50)
    assert feed("stl", binary)[0] == ("STL header", b"Scanner Dupont".ljust(80))
    ascii_stl = b"solid Dupont\nfacet normal 0 0 1\nendfacet\nendsolid Dupont\n"
    assert [b for _, b in feed("stl", ascii_stl)] == [b"solid Dupont\nendsolid Dupont"]
    binary_tail = binary + b"Dupont after the triangles"
    assert ("STL data after the triangles", b"Dupont after the triangles") in feed(
        "stl", binary_tail
    )
    ply = b"ply\nformat ascii 1.0\ncomment Dupont\nelement vertex 1\nend_header\n1 2 3\n"
    assert b"comment Dupont" in feed("ply", ply)[0][1]
    obj = b"# Dupont\nv 1 2 3\nvn 0 0 1\nf 1 1 1\no Q7731\nusemtl skin\nv 0 0 0 # Jan\n"
    lines = b"\n".join(b for _, b in feed("obj", obj, piece=3)).split(b"\n")
    assert lines == [b"# Dupont", b"o Q7731", b"usemtl skin", b"v 0 0 0 # Jan"]
    cr_only = b"v 1 2 3\rusemtl Dupont_Jan\rf 1 1 1\r"
    assert [b for _, b in feed("obj", cr_only)] == [b"usemtl Dupont_Jan"]
    tricky = (
        b"ply\nformat ascii 1.0\nproperty float end_header\nproperty float Dupont\nend_header\n"
    )
    assert b"Dupont" in feed("ply", tricky)[0][1]
    assert format_of("x.NII.GZ") == "nifti-gz" and format_of("scan.bin") is None


def test_a_dicom_finding_is_traced_to_its_element_and_the_report_holds_no_value(
    tmp_path: object,
) -> None:
    from pathlib import Path

    path = write_dicom(Path(str(tmp_path)) / "x.dcm", patient="Dupont^Jan")
    ds = pydicom.dcmread(path)
    ds.private_block(0x0009, "ACME", create=True).add_new(0x10, "LO", "Q7731")
    ds.save_as(path, enforce_file_format=True)
    data = path.read_bytes()
    header = data[: data.index(b"\xe0\x7f\x10\x00")]
    check = ResidualCheck(needles_for(PatientName="Dupont^Jan"))
    check.dicom_header("patient_001/cbct/0001.dcm", header, "patient_001")
    report = check.report("pseudonymised")
    places = {(f["place"], f["kind"]) for f in report["findings"]}
    assert places == {("(0010,0010) PatientName", Kind.NAME), ("(0009,1010) private", Kind.LABEL)}
    assert check.failed and report["result"] == "failed"
    assert "Dupont" not in str(report) and "Q7731" not in str(report)
    lenient = ResidualCheck(needles_for(PatientName="Dupont^Jan"), strict=False)
    lenient.dicom_header("f.dcm", header, "patient_001")
    assert not lenient.failed and lenient.report("identified")["result"] == "identifiers present"
    merged = merge_reports([report, lenient.report("identified")])
    assert merged is not None and merged["finding_count"] == 4 and merged["result"] == "failed"


def test_an_entry_time_equal_to_a_source_time_is_a_finding() -> None:
    check = ResidualCheck(Needles(), source_times=[1614852930])
    check.entry_time("a/b.dcm", 1614852930.4)
    check.entry_time("a/c.dcm", 1700000000.0)
    assert [(f.file, f.kind) for f in check.findings] == [("a/b.dcm", Kind.SOURCE_TIME)]


def test_a_document_is_searched_whole_and_a_finding_named_by_its_path() -> None:
    check = ResidualCheck(needles_for(PatientName="Dupont^Jan"))
    check.document("metadata.json", {"export": {"notes": "ok"}, "files": [{"path": "a"}]})
    assert check.count == 0
    check.document("metadata.json", {"export": {"notes": "for Dr Dupont", "name": "x"}})
    assert [(f.place, f.kind) for f in check.findings] == [("export.notes", Kind.NAME)]


def test_jpeg_extension_segments_and_nifti_fields_beyond_the_named_ones_are_searched() -> None:
    out = io.BytesIO()
    Image.new("RGB", (16, 8)).save(out, "JPEG")
    data = out.getvalue()
    dnl = b"\xff\xf7" + struct.pack(">H", 2 + 6) + b"Dupont"  # a JPG7 segment
    seen = feed("jpeg", data[:2] + dnl + data[2:])
    assert ("JPEG 0xFFF7 segment", b"Dupont") in seen
    header = bytearray(540)
    struct.pack_into("<i", header, 0, 540)
    struct.pack_into("<8q", header, 16, 1, 4, 1, 1, 1, 1, 1, 1)
    struct.pack_into("<hh", header, 12, 2, 8)
    struct.pack_into("<q", header, 168, 544)
    header[525:540] = b"Dupont".ljust(15, b"\0")  # unused_str
    seen = dict(feed("nifti", bytes(header) + bytes(4) + bytes(4) + b"tail Dupont"))
    assert b"Dupont" in seen["NIfTI header (other fields)"]
    assert seen["NIfTI data after the voxels"] == b"tail Dupont"
