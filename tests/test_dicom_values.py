"""Curated DICOM header values: which fields, and each VR's checks, messages and normal form."""

from __future__ import annotations

import re
from io import BytesIO

import pytest
from pydicom import config, dcmread
from pydicom.datadict import keyword_dict
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from pydicom.valuerep import validate_value as pydicom_validate

from exporter.dicom.values import (
    CURATABLE_HINT,
    FieldSpec,
    curatable,
    field_spec,
    to_element_value,
    validate_value,
)
from exporter.errors import InvalidValue

NUMBERS = {"US", "SS", "UL", "SL", "FL", "FD"}


def exact(message: str) -> str:
    """A ``match`` pattern for exactly this message."""
    return f"^{re.escape(message)}$"


def check(keyword: str, text: str) -> str:
    return validate_value(field_spec(keyword), text)


# -- which fields ------------------------------------------------------------------------------

STUDY_DESCRIPTION = FieldSpec(0x00081030, "StudyDescription", "Study Description", "LO", "1")


@pytest.mark.parametrize(
    "name",
    ["StudyDescription", "0008,1030", "(0008,1030)", "00081030", " (0008,1030) ", "0x00081030"],
)
def test_field_spec_by_keyword_and_tag(name: str) -> None:
    spec = field_spec(name)
    assert spec == STUDY_DESCRIPTION
    assert spec.tag_text() == "(0008,1030)"


def test_field_spec_reads_the_dictionary() -> None:
    spec = field_spec("(0028,0030)")
    assert (spec.keyword, spec.name, spec.vr, spec.vm) == (
        "PixelSpacing",
        "Pixel Spacing",
        "DS",
        "2",
    )
    assert field_spec("0008,0008").vm == "2-n"
    assert field_spec("0008,103e").keyword == "SeriesDescription"  # lower-case hex


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (
            "SOPInstanceUID",
            r"^SOPInstanceUID \(0008,0018\) is a UID, and UIDs are never changed by curation, "
            r"only by de-identification: it cannot be curated$",
        ),
        ("PixelData", r"^PixelData \(7FE0,0010\) is pixel data, which the export copies byte"),
        ("(7FE0,0008)", r"^FloatPixelData \(7FE0,0008\) is pixel data"),
        (
            "OtherPatientIDsSequence",
            r"^OtherPatientIDsSequence \(0010,1002\) is a sequence of nested items, which cannot "
            r"be typed in a form: it cannot be curated$",
        ),
        ("TransferSyntaxUID", r"^TransferSyntaxUID \(0002,0010\) is file meta information"),
        ("00020001", r"^FileMetaInformationVersion \(0002,0001\) is file meta information"),
        (
            "OtherPatientIDs",
            r"^OtherPatientIDs \(0010,1000\) is retired from the DICOM standard and current files "
            r"should not carry it: it cannot be curated$",
        ),
        ("SpecificCharacterSet", r"^SpecificCharacterSet \(0008,0005\) says how the text"),
        ("Rows", r"^Rows \(0028,0010\) describes how the pixel data is stored"),
        ("BitsAllocated", r"describes how the pixel data is stored; the export copies the pixels"),
        ("(0008,0000)", r"^Tag \(0008,0000\) is a group length, which the writer computes"),
        ("CommandGroupLength", r"^CommandGroupLength \(0000,0000\) is a DIMSE command element"),
        ("(0004,1130)", r"^FileSetID \(0004,1130\) belongs to the directory records of a DICOMDIR"),
        ("LUTDescriptor", r"^LUTDescriptor \(0028,3002\) has VR 'US or SS', which depends on"),
        ("OffendingElement", r"is a DIMSE command element"),
        ("DataElement", r"^DataElement \(0014,0202\) holds binary data \(VR AT\)"),
        ("IconImageSequence", r"is a sequence of nested items"),
        ("(0009,0010)", r"^Tag \(0009,0010\) is a private tag: only public DICOM fields can be"),
        ("(6000,0010)", r"^Tag \(6000,0010\) belongs to a repeating group"),
        ("OverlayRows", r"^OverlayRows belongs to a repeating group .*: it cannot be curated$"),
        ("(0008,9999)", r"^Tag \(0008,9999\) is not in the DICOM data dictionary: check the tag"),
        (
            "StudyDescriptoin",
            r"^'StudyDescriptoin' is not a DICOM keyword or tag: give a keyword such as "
            r"StudyDescription or a tag such as \(0008,1030\); did you mean StudyDescription\?$",
        ),
        ("studydate", r"did you mean StudyDate\?$"),
        ("", r"^'' is not a DICOM keyword or tag"),
    ],
)
def test_not_curatable_says_why(name: str, message: str) -> None:
    with pytest.raises(InvalidValue, match=message):
        field_spec(name)
    assert not curatable(name)


def test_curatable() -> None:
    assert curatable("PatientName") and curatable("StudyDate") and curatable("(0010,0020)")
    assert not curatable("SOPInstanceUID") and not curatable("NoSuchKeyword")
    assert "UIDs (changed only by de-identification)" in CURATABLE_HINT


def test_every_curatable_field_has_a_supported_vr_and_takes_the_empty_value() -> None:
    specs = [field_spec(k) for k in keyword_dict if k and curatable(k)]
    assert len(specs) > 3000
    assert {s.vr for s in specs} == {
        *("AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM"),
        *("UC", "UR", "UT", "US", "SS", "UL", "SL", "FL", "FD"),
    }
    for spec in specs:
        assert validate_value(spec, "") == ""
        assert validate_value(spec, "   ") == ""


def test_a_spec_made_by_hand_for_an_unsupported_vr_is_refused() -> None:
    spec = FieldSpec(0x00080018, "SOPInstanceUID", "SOP Instance UID", "UI", "1")
    with pytest.raises(InvalidValue, match="is a UID, and UIDs are never changed by curation"):
        validate_value(spec, "1.2.3")


# -- valid values and their normal form --------------------------------------------------------

VALID = [
    # AE
    ("StationAETitle", "CT_SCANNER_1", "CT_SCANNER_1"),
    ("StationAETitle", "  STORESCP  ", "STORESCP"),
    ("StationAETitle", "A" * 16, "A" * 16),
    ("RetrieveAETitle", "PACS1\\PACS2", "PACS1\\PACS2"),
    # AS
    ("PatientAge", "045Y", "045Y"),
    ("PatientAge", "006M", "006M"),
    ("PatientAge", "002W", "002W"),
    ("PatientAge", "010D", "010D"),
    # CS
    ("Modality", "CT", "CT"),
    ("Modality", " MR ", "MR"),
    ("PatientSex", "O", "O"),
    ("ImageType", "ORIGINAL\\PRIMARY", "ORIGINAL\\PRIMARY"),
    ("ImageType", "DERIVED\\SECONDARY\\AXIAL\\MPR", "DERIVED\\SECONDARY\\AXIAL\\MPR"),
    ("ImageType", "ORIGINAL \\ PRIMARY", "ORIGINAL\\PRIMARY"),
    ("BodyPartExamined", "HEAD_NECK 2", "HEAD_NECK 2"),
    ("ShutterShape", "RECTANGULAR\\CIRCULAR\\POLYGONAL", "RECTANGULAR\\CIRCULAR\\POLYGONAL"),
    # DA
    ("StudyDate", "20240131", "20240131"),
    ("StudyDate", "2024-01-31", "20240131"),
    ("StudyDate", " 2024-01-31 ", "20240131"),
    ("StudyDate", "20240229", "20240229"),
    ("StudyDate", "2000-02-29", "20000229"),
    ("StudyDate", "19991231", "19991231"),
    # DS
    ("PatientWeight", "72.5", "72.5"),
    ("PatientWeight", " 72.5 ", "72.5"),
    ("PatientWeight", "-0.5", "-0.5"),
    ("PatientWeight", "+.5", "+.5"),
    ("PatientWeight", "5.", "5."),
    ("FrameTime", "1e3", "1e3"),
    ("FrameTime", "1.5E-03", "1.5E-03"),
    ("FrameTime", "1234567890.12345", "1234567890.12345"),
    ("PixelSpacing", "0.5\\0.25", "0.5\\0.25"),
    ("PixelSpacing", " 0.5 \\ 0.25 ", "0.5\\0.25"),
    ("WindowCenter", "40", "40"),
    ("WindowCenter", "40\\400\\-600", "40\\400\\-600"),
    ("ImageOrientationPatient", "1\\0\\0\\0\\1\\0", "1\\0\\0\\0\\1\\0"),
    ("ContourData", "1\\2\\3\\4\\5\\6", "1\\2\\3\\4\\5\\6"),
    ("DVHData", "1\\2\\3\\4", "1\\2\\3\\4"),
    # DT
    ("AcquisitionDateTime", "2024", "2024"),
    ("AcquisitionDateTime", "202401", "202401"),
    ("AcquisitionDateTime", "20240131", "20240131"),
    ("AcquisitionDateTime", "2024013114", "2024013114"),
    ("AcquisitionDateTime", "202401311430", "202401311430"),
    ("AcquisitionDateTime", "20240131143015", "20240131143015"),
    ("AcquisitionDateTime", "20240131143015.1", "20240131143015.1"),
    ("AcquisitionDateTime", "20240131143015.123456", "20240131143015.123456"),
    ("AcquisitionDateTime", "20240131143015.123456+0100", "20240131143015.123456+0100"),
    ("AcquisitionDateTime", "20240229235960-1200", "20240229235960-1200"),
    ("AcquisitionDateTime", "2024+1400", "2024+1400"),
    ("AcquisitionDateTime", "20240131143015 ", "20240131143015"),
    # IS
    ("SeriesNumber", "12", "12"),
    ("SeriesNumber", " -3 ", "-3"),
    ("SeriesNumber", "+05", "+05"),
    ("InstanceNumber", "2147483647", "2147483647"),
    ("InstanceNumber", "-2147483648", "-2147483648"),
    ("InstanceNumber", "000000000001", "000000000001"),
    ("VerticesOfThePolygonalShutter", "1\\2\\3\\4", "1\\2\\3\\4"),
    ("FocalDistance", "100\\200", "100\\200"),
    # LO
    ("StudyDescription", "CBCT maxilla", "CBCT maxilla"),
    ("StudyDescription", "  CBCT maxilla  ", "CBCT maxilla"),
    ("StudyDescription", "Kieferchirurgie – Überweisung", "Kieferchirurgie – Überweisung"),
    ("StudyDescription", "x" * 64, "x" * 64),
    ("StudyDescription", "é" * 64, "é" * 64),
    ("PatientID", "MRN-0001", "MRN-0001"),
    # LT (one value: a backslash is text, leading spaces count, line breaks and tabs allowed)
    ("PatientComments", "a\\b", "a\\b"),
    (
        "PatientComments",
        "  indented\r\nsecond line\tand tab\fpage  ",
        "  indented\r\nsecond line\tand tab\fpage",
    ),
    ("PatientComments", "x" * 10240, "x" * 10240),
    # PN
    ("PatientName", "Doe^John", "Doe^John"),
    ("PatientName", " Doe^John ", "Doe^John"),
    ("PatientName", "Doe^John^Quincy^Dr.^Jr.", "Doe^John^Quincy^Dr.^Jr."),
    ("PatientName", "Yamada^Tarou=山田^太郎=やまだ^たろう", "Yamada^Tarou=山田^太郎=やまだ^たろう"),
    ("PatientName", "=山田^太郎", "=山田^太郎"),
    ("PatientName", "Müller^Jörg", "Müller^Jörg"),
    (
        "PatientName",
        "A" * 64 + "=" + "B" * 64 + "=" + "C" * 64,
        "A" * 64 + "=" + "B" * 64 + "=" + "C" * 64,
    ),
    ("PatientName", "Doe, John", "Doe, John"),
    # SH
    ("AccessionNumber", "ACC-2024-0001", "ACC-2024-0001"),
    ("AccessionNumber", "A" * 16, "A" * 16),
    ("StationName", "Ärztehaus 1", "Ärztehaus 1"),
    # ST (leading spaces count; trailing ones do not)
    ("InstitutionAddress", "  Main St 1\r\nTown  ", "  Main St 1\r\nTown"),
    ("InstitutionAddress", "x" * 1024, "x" * 1024),
    # TM
    ("StudyTime", "14", "14"),
    ("StudyTime", "1430", "1430"),
    ("StudyTime", "143015", "143015"),
    ("StudyTime", "143015.1", "143015.1"),
    ("StudyTime", "143015.123456", "143015.123456"),
    ("StudyTime", "14:30", "1430"),
    ("StudyTime", "14:30:15", "143015"),
    ("StudyTime", " 14:30:15.25 ", "143015.25"),
    ("StudyTime", "000000", "000000"),
    ("StudyTime", "235960", "235960"),
    # UC
    ("LongCodeValue", "x" * 100, "x" * 100),
    ("LongCodeValue", " leading kept  ", " leading kept"),
    ("PotentialReasonsForProcedure", "pain\\swelling", "pain\\swelling"),
    # UR
    (
        "RetrieveURL",
        "https://pacs.example.org/studies/1.2.3",
        "https://pacs.example.org/studies/1.2.3",
    ),
    ("RetrieveURL", " https://x.org/a%20b?q=1&r=[2]#f ", "https://x.org/a%20b?q=1&r=[2]#f"),
    ("RetrieveURL", "urn:oid:1.2.3", "urn:oid:1.2.3"),
    # UT
    ("TextValue", "  free text \\ with backslash\r\n", "  free text \\ with backslash\r\n"),
    # US SS UL SL (normalised to plain integers)
    ("AcquisitionMatrix", "0\\256\\256\\0", "0\\256\\256\\0"),
    ("AcquisitionMatrix", "0\\65535\\+05\\007", "0\\65535\\5\\7"),
    ("ExposedArea", "10", "10"),
    ("TagAngleSecondAxis", "-32768", "-32768"),
    ("TagAngleSecondAxis", "32767", "32767"),
    ("SimpleFrameList", "1\\2\\4294967295", "1\\2\\4294967295"),
    ("CalculatedFrameList", "1\\10\\2", "1\\10\\2"),
    ("ReferencePixelX0", "-2147483648", "-2147483648"),
    ("ReferencePixelX0", "-0", "0"),
    # FL FD (normalised to the shortest text that gives the stored number)
    ("RecommendedDisplayFrameRateInFloat", "0.1", "0.1"),
    ("RecommendedDisplayFrameRateInFloat", "1e3", "1000.0"),
    ("RecommendedDisplayFrameRateInFloat", "0.10000000149011612", "0.1"),
    ("RecommendedDisplayFrameRateInFloat", "3.4e38", "3.4e+38"),
    ("BoundingPolygon", "1\\2\\3\\4\\5\\6\\7", "1.0\\2.0\\3.0\\4.0\\5.0\\6.0\\7.0"),
    ("EventTimeOffset", "0.1", "0.1"),
    ("EventTimeOffset", "-1.5e-3", "-0.0015"),
    ("EventTimeOffset", "1e300", "1e+300"),
    ("TimeRange", "0\\12.5", "0.0\\12.5"),
]


@pytest.mark.parametrize(("keyword", "text", "expected"), VALID)
def test_valid_values_are_normalised(keyword: str, text: str, expected: str) -> None:
    assert check(keyword, text) == expected


@pytest.mark.parametrize(("keyword", "text", "expected"), VALID)
def test_valid_values_pass_pydicoms_own_checks(keyword: str, text: str, expected: str) -> None:
    spec = field_spec(keyword)
    value = to_element_value(spec, text)
    for item in value if isinstance(value, list) else [value]:
        pydicom_validate(spec.vr, item, config.RAISE)


@pytest.mark.parametrize("keyword", ["StudyDescription", "PixelSpacing", "AcquisitionMatrix"])
def test_the_empty_text_is_the_empty_value(keyword: str) -> None:
    assert check(keyword, "") == ""
    expected = None if field_spec(keyword).vr in NUMBERS else ""
    assert to_element_value(field_spec(keyword), " ") == expected


# -- invalid values and their messages ---------------------------------------------------------

INVALID = [
    # multiplicity
    (
        "PixelSpacing",
        "0.5",
        exact(
            "PixelSpacing takes exactly 2 values separated by '\\' (e.g. 0.5\\0.25); got 1 in '0.5'"
        ),
    ),
    ("PixelSpacing", "0.5\\0.5\\1", r"^PixelSpacing takes exactly 2 values .*; got 3 in"),
    (
        "PixelSpacing",
        "0.5\\",
        r"^PixelSpacing value 2 of 2 is empty in '0\.5\\\\': fill it in or remove",
    ),
    (
        "ImageType",
        "ORIGINAL",
        r"^ImageType takes 2 or more values separated by '\\' \(e\.g\. ORIGINAL\\PRIMARY\); got 1",
    ),
    ("ImageType", "ORIGINAL\\\\PRIMARY", r"^ImageType value 2 of 3 is empty"),
    (
        "ContourData",
        "1\\2\\3\\4",
        r"^ContourData takes a multiple of 3 values \(3, 6, 9, \.\.\.\) .*; got 4",
    ),
    ("DVHData", "1\\2\\3", r"^DVHData takes a multiple of 2 values \(2, 4, 6, \.\.\.\)"),
    ("ShutterShape", "A\\B\\C\\D", r"^ShutterShape takes 1 to 3 values"),
    ("FocalDistance", "1\\2\\3", r"^FocalDistance takes 1 or 2 values"),
    ("BoundingPolygon", "1\\2\\3\\4\\5", r"^BoundingPolygon takes 6 or more values"),
    ("ImageOrientationPatient", "1\\0\\0\\0\\1", r"takes exactly 6 values"),
    (
        "StudyDescription",
        "a\\b",
        exact(
            "StudyDescription takes a single value and '\\' separates values, so it cannot "
            "appear in the text: remove it from 'a\\\\b'"
        ),
    ),
    (
        "WindowCenter",
        "\\".join(["1234567890.12345"] * 4000),
        exact(
            "WindowCenter is too long to store: its value takes 68000 bytes and a DS field "
            "holds at most 65534; shorten it or remove values"
        ),
    ),
    # AE
    (
        "StationAETitle",
        "A" * 17,
        r"^StationAETitle must be at most 16 characters; got 17: shorten it$",
    ),
    (
        "StationAETitle",
        "CT_ÄRZTE",
        exact(
            "StationAETitle takes ASCII characters only (AE values use the basic character "
            "set): replace 'Ä' at position 4"
        ),
    ),
    (
        "StationAETitle",
        "CT\tONE",
        exact(
            "StationAETitle must be a single line of text without control characters: "
            "remove a tab at position 3"
        ),
    ),
    # AS
    (
        "PatientAge",
        "45",
        exact(
            "PatientAge must be an age as 3 digits and a unit D, W, M or Y (e.g. 045Y for "
            "45 years, 006M for 6 months); got '45'"
        ),
    ),
    ("PatientAge", "45Y", r"got '45Y'$"),
    ("PatientAge", "045y", r"; use upper case: '045Y'; got '045y'$"),
    ("PatientAge", "045 Y", r"must be an age"),
    # CS
    (
        "Modality",
        "ct",
        exact(
            "Modality must be a code of at most 16 characters A-Z, 0-9, space or underscore "
            "(e.g. ORIGINAL); use upper case: 'CT'; got 'ct'"
        ),
    ),
    (
        "ImageType",
        "original\\PRIMARY",
        r"^ImageType value 1 must be a code .*; use upper case: 'ORIGINAL'",
    ),
    ("Modality", "CT-1", r"^Modality must be a code .*; got 'CT-1'$"),
    ("Modality", "A" * 17, r"^Modality must be at most 16 characters; got 17"),
    ("Modality", "ÇT", r"ASCII characters only \(CS values"),
    # DA
    (
        "StudyDate",
        "31/01/2024",
        exact(
            "StudyDate must be a date as YYYYMMDD or YYYY-MM-DD (e.g. 20240131); got '31/01/2024'"
        ),
    ),
    (
        "StudyDate",
        "20241301",
        r"^StudyDate must be a real date; in '20241301' the month 13 does not exist$",
    ),
    (
        "StudyDate",
        "20230229",
        exact(
            "StudyDate must be a real date; in '20230229' the day 29 does not exist: "
            "February 2023 has 28 days"
        ),
    ),
    ("StudyDate", "1900-02-29", r"day 29 does not exist: February 1900 has 28 days"),
    ("StudyDate", "20240431", r"day 31 does not exist: April 2024 has 30 days"),
    ("StudyDate", "20240100", r"day 00 does not exist"),
    ("StudyDate", "00000101", r"the year 0000 does not exist"),
    ("StudyDate", "2024-0131", r"must be a date as YYYYMMDD"),
    ("StudyDate", "2024131", r"must be a date as YYYYMMDD"),
    ("StudyDate", "２０２４０１３１", r"ASCII characters only \(DA values"),
    # DS
    (
        "PatientWeight",
        "72,5",
        exact(
            "PatientWeight must be a decimal number of at most 16 characters "
            "(e.g. 0.5, -12 or 1.5e-3); got '72,5'"
        ),
    ),
    ("PatientWeight", "1 000", r"must be a decimal number"),
    ("PatientWeight", "1234567890.123456", r"^PatientWeight must be at most 16 characters; got 17"),
    ("PatientWeight", "NaN", r"must be a decimal number"),
    ("PatientWeight", "inf", r"must be a decimal number"),
    ("PatientWeight", "1e999", r"^PatientWeight is too large to be a number: got '1e999'$"),
    ("PatientWeight", "e3", r"must be a decimal number"),
    # DT
    (
        "AcquisitionDateTime",
        "20240131143015.1234567",
        r"^AcquisitionDateTime must be a date-time as YYYYMMDDHHMMSS\.FFFFFF&ZZXX",
    ),
    ("AcquisitionDateTime", "2024-01-31T14:30:15", r"must be a date-time as"),
    ("AcquisitionDateTime", "20240131+01", r"must be a date-time as"),
    ("AcquisitionDateTime", "2024013", r"must be a date-time as"),
    (
        "AcquisitionDateTime",
        "202413",
        r"^AcquisitionDateTime must be a real date-time; in '202413' the month 13 does not exist$",
    ),
    ("AcquisitionDateTime", "20230229", r"day 29 does not exist: February 2023 has 28 days"),
    ("AcquisitionDateTime", "2024013124", r"the hour 24 is not in 00-23"),
    ("AcquisitionDateTime", "202401311460", r"the minute 60 is not in 00-59"),
    ("AcquisitionDateTime", "20240131145961", r"the second 61 is not in 00-60"),
    ("AcquisitionDateTime", "2024+1401", r"the UTC offset \+1401 is not in -1200 to \+1400"),
    ("AcquisitionDateTime", "2024-1201", r"the UTC offset -1201 is not in -1200 to \+1400"),
    ("AcquisitionDateTime", "2024+0160", r"the UTC offset \+0160"),
    # IS
    (
        "InstanceNumber",
        "2147483648",
        r"^InstanceNumber must be a whole number from -2147483648 to 2147483647; got '2147483648'$",
    ),
    ("InstanceNumber", "-2147483649", r"must be a whole number from -2147483648"),
    (
        "InstanceNumber",
        "1.0",
        exact(
            "InstanceNumber must be a whole number of at most 12 characters (e.g. 12 or -3); "
            "got '1.0'"
        ),
    ),
    ("InstanceNumber", "1e3", r"must be a whole number of at most 12 characters"),
    ("InstanceNumber", "0000000000001", r"^InstanceNumber must be at most 12 characters; got 13"),
    ("InstanceNumber", "١٢", r"ASCII characters only \(IS values"),
    # LO / SH
    (
        "StudyDescription",
        "x" * 65,
        r"^StudyDescription must be at most 64 characters; got 65: shorten it$",
    ),
    (
        "StudyDescription",
        "line one\nline two",
        exact(
            "StudyDescription must be a single line of text without control characters: "
            "remove a line break (LF) at position 9"
        ),
    ),
    ("StudyDescription", "a\x1b(Bb", r"remove an escape character \(ESC\) at position 2"),
    ("StudyDescription", "a\x7fb", r"remove the character U\+007F at position 2"),
    ("StudyDescription", "a\u2028b", r"remove a line separator \(U\+2028\)"),
    (
        "AccessionNumber",
        "A" * 17,
        r"^AccessionNumber must be at most 16 characters; got 17: shorten it$",
    ),
    ("StationName", "x\ty", r"remove a tab at position 2"),
    # LT / ST / UT
    (
        "PatientComments",
        "x" * 10241,
        r"^PatientComments must be at most 10240 characters; got 10241",
    ),
    (
        "PatientComments",
        "bell\x07",
        exact(
            "PatientComments must be text without control characters: remove the character "
            "U+0007 at position 5"
        ),
    ),
    (
        "InstitutionAddress",
        "x" * 1025,
        r"^InstitutionAddress must be at most 1024 characters; got 1025",
    ),
    ("TextValue", "\x00", r"remove the character U\+0000 at position 1"),
    # PN
    (
        "PatientName",
        "A=B=C=D",
        exact(
            "PatientName has 4 name groups separated by '='; a person's name takes at most 3 "
            "(alphabetic=ideographic=phonetic) (e.g. Doe^John, or "
            "Yamada^Tarou=山田^太郎=やまだ^たろう)"
        ),
    ),
    (
        "PatientName",
        "a^b^c^d^e^f",
        r"^PatientName has 6 parts separated by '\^' in 'a\^b\^c\^d\^e\^f'; a name takes at most 5 "
        r"\(family\^given\^middle\^prefix\^suffix\)",
    ),
    ("PatientName", "A" * 65, r"^PatientName has a name group of 65 characters; at most 64 fit"),
    ("PatientName", "Doe^John=" + "山" * 65, r"name group of 65 characters"),
    (
        "PatientName",
        "Doe\n^John",
        r"^PatientName must be a single line of text without control characters",
    ),
    ("PatientName", "Doe^John\\Roe^Jane", r"^PatientName takes a single value"),
    # TM
    ("StudyTime", "24", r"^StudyTime must be a real time; in '24' the hour 24 is not in 00-23$"),
    ("StudyTime", "1460", r"the minute 60 is not in 00-59"),
    (
        "StudyTime",
        "14:30:61",
        r"^StudyTime must be a real time; in '14:30:61' the second 61 is not in 00-60$",
    ),
    (
        "StudyTime",
        "143015.1234567",
        r"^StudyTime must be a time as HHMMSS or HH:MM:SS \(e\.g\. 143015 or 14:30:15",
    ),
    ("StudyTime", "2pm", r"must be a time as HHMMSS"),
    ("StudyTime", "14:3", r"must be a time as HHMMSS"),
    ("StudyTime", "1430:15", r"must be a time as HHMMSS"),
    ("StudyTime", "143", r"must be a time as HHMMSS"),
    ("StudyTime", "143015.", r"must be a time as HHMMSS"),
    # UC
    ("LongCodeValue", "a\nb", r"^LongCodeValue must be a single line of text"),
    ("PotentialReasonsForProcedure", "pain\\", r"value 2 of 2 is empty"),
    # UR
    (
        "RetrieveURL",
        "https://x.org/a b",
        exact(
            "RetrieveURL must be a URI as RFC 3986 defines it, with spaces and other characters "
            "percent-encoded (e.g. https://pacs.example.org/studies?id=1%202); "
            "got 'https://x.org/a b'"
        ),
    ),
    ("RetrieveURL", "https://x.org/%zz", r"must be a URI as RFC 3986"),
    ("RetrieveURL", "https://x.org/a\\b", r"must be a URI as RFC 3986"),
    ("RetrieveURL", "https://bücher.example", r"ASCII characters only \(UR values"),
    # US SS UL SL
    (
        "AcquisitionMatrix",
        "0\\256\\65536\\0",
        r"^AcquisitionMatrix value 3 must be a whole number from 0 to 65535; got '65536'$",
    ),
    ("AcquisitionMatrix", "0\\256\\-1\\0", r"value 3 must be a whole number from 0 to 65535"),
    (
        "TagAngleSecondAxis",
        "32768",
        r"^TagAngleSecondAxis must be a whole number from -32768 to 32767; got '32768'$",
    ),
    ("TagAngleSecondAxis", "-32769", r"from -32768 to 32767"),
    ("SimpleFrameList", "4294967296", r"from 0 to 4294967295"),
    ("ReferencePixelX0", "2147483648", r"from -2147483648 to 2147483647"),
    ("ReferencePixelX0", "1.5", r"must be a whole number"),
    ("ReferencePixelX0", "1_000", r"must be a whole number"),
    ("ReferencePixelX0", "٣", r"must be a whole number"),
    # FL FD
    (
        "EventTimeOffset",
        "abc",
        r"^EventTimeOffset must be a finite number such as 0\.5, -12 or 1\.5e-3; got 'abc'$",
    ),
    ("EventTimeOffset", "nan", r"must be a finite number"),
    ("EventTimeOffset", "1e400", r"must be a finite number"),
    ("EventTimeOffset", "0x10", r"must be a finite number"),
    (
        "RecommendedDisplayFrameRateInFloat",
        "3.5e38",
        exact(
            "RecommendedDisplayFrameRateInFloat does not fit a 32-bit float "
            "(0, or from ±1.4e-45 to ±3.4e38); got '3.5e38'"
        ),
    ),
    ("RecommendedDisplayFrameRateInFloat", "1e-50", r"does not fit a 32-bit float"),
]


@pytest.mark.parametrize(("keyword", "text", "message"), INVALID)
def test_invalid_values_say_what_is_wrong(keyword: str, text: str, message: str) -> None:
    with pytest.raises(InvalidValue, match=message):
        check(keyword, text)


# Every multiplicity a curatable field has: counts that fit, counts that do not.
MULTIPLICITIES = {
    "1": ([1], [2]),
    "2": ([2], [1, 3]),
    "3": ([3], [2, 4]),
    "4": ([4], [3, 5]),
    "6": ([6], [5, 7]),
    "9": ([9], [8, 10]),
    "16": ([16], [15, 17]),
    "1-2": ([1, 2], [3]),
    "1-3": ([1, 3], [4]),
    "2-4": ([2, 3, 4], [1, 5]),
    "4-5": ([4, 5], [3, 6]),
    "1-n": ([1, 2, 100], []),
    "2-n": ([2, 3], [1]),
    "3-n": ([3, 4], [2]),
    "6-n": ([6, 7], [5]),
    "2-2n": ([2, 4, 10], [1, 3, 5]),
    "3-3n": ([3, 6, 9], [1, 2, 4, 5, 7]),
}


def test_every_multiplicity_of_a_curatable_field_is_covered() -> None:
    in_use = {field_spec(k).vm for k in keyword_dict if k and curatable(k)}
    assert in_use <= set(MULTIPLICITIES)


@pytest.mark.parametrize("vm", sorted(MULTIPLICITIES))
def test_multiplicity(vm: str) -> None:
    spec = FieldSpec(0x00280051, "Test", "Test", "US", vm)
    fits, does_not = MULTIPLICITIES[vm]
    for count in fits:
        assert validate_value(spec, "\\".join(["7"] * count)) == "\\".join(["7"] * count)
    for count in does_not:
        message = "takes a single value" if vm == "1" else f"; got {count} in '7"
        with pytest.raises(InvalidValue, match=message):
            validate_value(spec, "\\".join(["7"] * count))


# -- what pydicom is given ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keyword", "text", "expected"),
    [
        ("StudyDescription", "CBCT", "CBCT"),
        ("InstanceNumber", "+05", "+05"),
        ("PixelSpacing", "0.5\\0.25", ["0.5", "0.25"]),
        ("WindowCenter", "40", "40"),
        ("ImageType", "ORIGINAL\\PRIMARY", ["ORIGINAL", "PRIMARY"]),
        ("PatientComments", "a\\b", "a\\b"),
        ("AcquisitionMatrix", "0\\256\\256\\0", [0, 256, 256, 0]),
        ("ExposedArea", "10", 10),
        ("TagAngleSecondAxis", "-5", -5),
        ("RecommendedDisplayFrameRateInFloat", "25", 25.0),
        ("TimeRange", "0\\12.5", [0.0, 12.5]),
        ("StudyDate", "2024-01-31", "20240131"),
        ("ExposedArea", "", None),
        ("StudyDate", "", ""),
    ],
)
def test_to_element_value(keyword: str, text: str, expected: object) -> None:
    value = to_element_value(field_spec(keyword), text)
    assert value == expected
    assert type(value) is type(expected)
    if isinstance(value, list):
        assert all(type(v) is type(expected[0]) for v in value)  # type: ignore[index]


def test_to_element_value_refuses_what_validate_value_refuses() -> None:
    with pytest.raises(InvalidValue, match="StudyDate must be a date as YYYYMMDD"):
        to_element_value(field_spec("StudyDate"), "31/01/2024")


ROUND_TRIP = [
    ("PatientName", "Yamada^Tarou=山田^太郎=やまだ^たろう"),
    ("PatientName", "Müller^Jörg"),
    ("StudyDescription", "  Überweisung – CBCT  "),
    ("StudyDate", "2024-02-29"),
    ("StudyTime", "14:30:15.25"),
    ("AcquisitionDateTime", "20240131143015.123456+0100"),
    ("PatientAge", "045Y"),
    ("Modality", "CT"),
    ("ImageType", "DERIVED\\SECONDARY\\MPR"),
    ("StationAETitle", "CT1"),
    ("RetrieveAETitle", "PACS1\\PACS2"),
    ("PixelSpacing", "0.5\\0.25"),
    ("FrameTime", "1e3"),
    ("InstanceNumber", "+05"),
    ("SeriesNumber", "-3"),
    ("AccessionNumber", "ACC-1"),
    ("PatientComments", "  first\\line\r\nsecond\tline "),
    ("InstitutionAddress", "Main St 1\r\nTown"),
    ("TextValue", "x\\y"),
    ("LongCodeValue", " padded"),
    ("PotentialReasonsForProcedure", "pain\\swelling"),
    ("RetrieveURL", "https://pacs.example.org/studies/1.2.3?x=%20"),
    ("AcquisitionMatrix", "0\\256\\256\\0"),
    ("TagAngleSecondAxis", "-32768"),
    ("SimpleFrameList", "1\\4294967295"),
    ("ReferencePixelX0", "-2147483648"),
    ("RecommendedDisplayFrameRateInFloat", "0.1"),
    ("BoundingPolygon", "1\\2\\3\\4\\5\\6.5"),
    ("EventTimeOffset", "-1.5e-3"),
    ("StudyDescription", ""),
    ("AcquisitionMatrix", ""),
    ("EventTimeOffset", ""),
]


def written_text(spec: FieldSpec, data: bytes) -> str:
    """The field as read back from a written file: text VRs byte for byte, numbers as text."""
    read = dcmread(BytesIO(data))
    raw = read.get_item(spec.tag)
    assert raw is not None, f"{spec.keyword} was not written"
    if spec.vr not in NUMBERS:
        value = raw.value
        assert isinstance(value, bytes)
        return value.decode("utf-8").rstrip(" ")  # the writer pads to even length with a space
    element = read[spec.tag].value
    if element is None:
        return ""
    items = list(element) if isinstance(element, (list, MultiValue)) else [element]
    return "\\".join(repr(v) if isinstance(v, float) else str(v) for v in items)


@pytest.mark.filterwarnings("error")  # pydicom warns about values it finds invalid
@pytest.mark.parametrize(("keyword", "text"), ROUND_TRIP)
def test_round_trip_through_a_written_file(keyword: str, text: str) -> None:
    spec = field_spec(keyword)
    validated = validate_value(spec, text)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.SpecificCharacterSet = "ISO_IR 192"
    setattr(ds, keyword, to_element_value(spec, text))
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    written = written_text(spec, out.getvalue())
    if spec.vr in NUMBERS:  # FL values come back as the float32 that was stored
        assert validate_value(spec, written) == validated
    else:
        assert written == validated
