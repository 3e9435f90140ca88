"""PS3.15 Table E.1-1 as data: rows against pydicom's dictionary, known codes, option
resolution, repeating groups, and the table scripts/gen_docs.py generates from it into
docs/deidentification.md."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from exporter.config import PROJECT_ROOT
from exporter.deid.profile import (
    BASIC_CODES,
    BASIC_PROFILE,
    DEID_METHOD,
    OPTION_CODES,
    REPEATING_GROUPS,
    SUPPLEMENT,
    Action,
    ProfileRow,
    effective_action,
    is_private,
    row_for,
)
from tests import builders

gen_docs = builders.gen_docs()
DOC_PATH = PROJECT_ROOT / "docs" / "deidentification.md"

OFF = {"retain_uids": False, "retain_dates": False, "clean_descriptors": False}


def row(keyword: str) -> ProfileRow:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return BASIC_PROFILE[tag]


def test_every_row_is_in_pydicoms_dictionary_under_its_keyword() -> None:
    for tag, r in BASIC_PROFILE.items():
        assert r.tag == tag
        assert keyword_for_tag(tag) == r.keyword, r
        assert tag_for_keyword(r.keyword) == tag, r
        assert r.name, r


def test_the_whole_table_is_there_with_valid_codes() -> None:
    assert len(BASIC_PROFILE) >= 600  # 619 in the 2024 edition; at least 250 asked for
    assert {r.basic for r in BASIC_PROFILE.values()} == BASIC_CODES - {"K", "C"}
    assert {r.retain_dates for r in BASIC_PROFILE.values()} <= {None, "C", "K"}
    assert list(BASIC_PROFILE) == sorted(BASIC_PROFILE)
    assert not any(is_private(tag) for tag in BASIC_PROFILE)


@pytest.mark.parametrize(
    ("keyword", "basic"),
    [
        ("PatientName", "Z"),
        ("PatientID", "Z/D"),  # "Z" up to the 2023 editions
        ("PatientBirthDate", "Z"),
        ("PatientBirthTime", "X"),
        ("PatientSex", "Z"),
        ("PatientAge", "X"),
        ("PatientAddress", "X"),
        ("OtherPatientIDsSequence", "X"),
        ("IssuerOfPatientID", "X"),
        ("InstitutionName", "X/Z/D"),
        ("InstitutionAddress", "X"),
        ("ReferringPhysicianName", "Z"),
        ("OperatorsName", "X/Z/D"),
        ("PerformingPhysicianName", "X"),
        ("StationName", "X/Z/D"),
        ("DeviceSerialNumber", "X/Z/D"),
        ("AccessionNumber", "Z"),
        ("StudyID", "Z"),
        ("StudyInstanceUID", "U"),
        ("SeriesInstanceUID", "U"),
        ("SOPInstanceUID", "U"),
        ("MediaStorageSOPInstanceUID", "U"),
        ("FrameOfReferenceUID", "U"),
        ("ReferencedSOPInstanceUID", "U"),
        ("ReferencedImageSequence", "X/Z/U*"),
        ("StudyDate", "Z"),
        ("StudyTime", "Z"),
        ("SeriesDate", "X/D"),
        ("ContentDate", "Z/D"),
        ("AcquisitionDate", "X/Z"),
        ("AcquisitionDateTime", "X/Z/D"),
        ("StudyDescription", "X"),
        ("SeriesDescription", "X"),
        ("ProtocolName", "X/D"),
        ("ImageComments", "X"),
        ("DigitalSignaturesSequence", "X"),
    ],
)
def test_well_known_rows_have_the_standards_code(keyword: str, basic: str) -> None:
    assert row(keyword).basic == basic


def test_option_columns_of_well_known_rows() -> None:
    assert row("StudyInstanceUID").retain_uids
    assert row("MediaStorageSOPInstanceUID").retain_uids
    assert not row("DigitalSignatureUID").retain_uids  # the table leaves it empty
    assert row("StudyDate").retain_dates == "C"
    assert row("AcquisitionTime").retain_dates == "C"
    assert row("PatientBirthDate").retain_dates is None
    assert row("StudyDescription").clean_descriptors
    assert row("ContrastBolusAgent").clean_descriptors
    assert not row("PatientName").clean_descriptors
    assert not row("PatientName").retain_uids and row("PatientName").retain_dates is None


def expected(r: ProfileRow, uids: bool, dates: bool, desc: bool) -> Action:
    if r.keyword == "StudyInstanceUID":
        return Action.KEEP if uids else Action.UID
    if r.keyword == "ReferencedImageSequence":
        return Action.KEEP if uids else Action.REMOVE
    if r.keyword == "StudyDate":
        return Action.SHIFT if dates else Action.ZERO
    if r.keyword == "AcquisitionDateTime":
        return Action.SHIFT if dates else Action.REMOVE
    if r.keyword == "AcquisitionTime":
        return Action.KEEP if dates else Action.REMOVE
    if r.keyword == "TimezoneOffsetFromUTC":
        return Action.CLEAN if dates else Action.REMOVE
    if r.keyword == "StudyDescription":
        return Action.CLEAN if desc else Action.REMOVE
    if r.keyword == "ContrastBolusAgent":
        return Action.CLEAN if desc else Action.DUMMY  # Z/D: a dummy keeps Type 1 uses valid
    return {"InstitutionName": Action.REMOVE}.get(r.keyword, Action.DUMMY)


@pytest.mark.parametrize(
    "keyword",
    [
        "StudyInstanceUID",
        "ReferencedImageSequence",
        "StudyDate",
        "AcquisitionDateTime",
        "AcquisitionTime",
        "TimezoneOffsetFromUTC",
        "StudyDescription",
        "ContrastBolusAgent",
        "PatientID",
        "InstitutionName",
        "ClinicalTrialSubjectID",
    ],
)
def test_effective_action_under_every_option_combination(keyword: str) -> None:
    r = row(keyword)
    for uids, dates, desc in itertools.product([False, True], repeat=3):
        got = effective_action(r, retain_uids=uids, retain_dates=dates, clean_descriptors=desc)
        assert got == expected(r, uids, dates, desc), (keyword, uids, dates, desc)


def test_effective_action_is_always_one_simple_action() -> None:
    simple = {"D", "Z", "X", "K", "C", "U", "SHIFT"}
    for r in BASIC_PROFILE.values():
        for uids, dates, desc in itertools.product([False, True], repeat=3):
            action = effective_action(
                r, retain_uids=uids, retain_dates=dates, clean_descriptors=desc
            )
            assert action in simple, r
            if action == "SHIFT":
                assert dictionary_VR(r.tag) in ("DA", "DT"), r


def test_x_z_u_star_gives_a_uid_a_new_one() -> None:
    # No row of the 2024 table has X/Z/U* on a UID (both are sequences): a made-up one.
    uid_row = ProfileRow(0x00081155, "ReferencedSOPInstanceUID", "UID", "X/Z/U*")
    assert effective_action(uid_row, **OFF) == Action.UID


def test_row_for_covers_repeating_groups_and_not_private_tags() -> None:
    assert row_for(0x00100010) is BASIC_PROFILE[0x00100010]
    overlay = row_for(0x60023000)
    assert overlay is not None and overlay.basic == "X" and overlay.keyword == "OverlayData"
    comments = row_for(0x601E4000)
    assert comments is not None and comments.name == "Overlay Comments"
    curve = row_for(0x50040005)
    assert curve is not None and curve.basic == "X" and curve.name == "Curve Data"
    assert effective_action(curve, **OFF) == Action.REMOVE
    assert row_for(0x60020010) is None  # Overlay Rows: not in the table
    assert row_for(0x00280010) is None  # Rows
    assert row_for(0x60013000) is None and is_private(0x60013000)
    assert row_for(0x00091001) is None and is_private(0x00091001)
    assert not is_private(0x00100010)
    assert [g.pattern for g in REPEATING_GROUPS] == ["(50xx,xxxx)", "(60xx,3000)", "(60xx,4000)"]


def test_method_constants() -> None:
    assert len(DEID_METHOD) <= 64  # De-identification Method is LO
    assert OPTION_CODES["basic"] == ("113100", "Basic Application Confidentiality Profile")
    assert OPTION_CODES["retain_uids"][0] == "113110"
    assert OPTION_CODES["retain_dates"][0] == "113107"
    assert OPTION_CODES["clean_descriptors"][0] == "113105"
    assert all(len(meaning) <= 64 for _, meaning in OPTION_CODES.values())


def test_markdown_table_rows() -> None:
    lines = gen_docs.markdown_table().splitlines()
    assert lines[0] == "| Attribute | Tag | Action | With options |"
    assert len(lines) == 2 + len(BASIC_PROFILE) + len(SUPPLEMENT) + len(REPEATING_GROUPS) + 1
    assert (
        "| Patient's Birth Date in Alternative Calendar (the portal's addition) | (0010,0033) "
        "| remove (`X`) |  |"
    ) in lines
    assert "| Patient's Name | (0010,0010) | blank (`Z`) |  |" in lines
    assert (
        "| Study Date | (0008,0020) | blank (`Z`) "
        "| kept with *retain full dates*; shifted with *shift dates* |"
    ) in lines
    assert (
        "| Study Instance UID | (0020,000D) | new UID, the same in every export of the project "
        "(`U`) | kept with *retain UIDs* |"
    ) in lines
    assert (
        "| Station Name | (0008,1010) | remove (`X/Z/D`) | kept with *retain device identity* |"
    ) in lines
    assert (
        "| Patient's Sex | (0010,0040) | blank (`Z`) | kept with *retain patient characteristics* |"
    ) in lines
    cleaned = (
        "| Series Description | (0008,103E) | remove (`X`) | cleaned with *clean descriptors* |"
    )
    assert cleaned in lines
    assert "| Overlay Data | (60xx,3000) | remove (`X`) |  |" in lines


def test_the_doc_holds_the_generated_table() -> None:
    begin, end, table = gen_docs.TABLE_BEGIN, gen_docs.TABLE_END, gen_docs.markdown_table()
    doc = DOC_PATH.read_text(encoding="utf-8")
    assert f"{begin}\n\n{table}\n{end}" in doc, (
        f"{DOC_PATH.name} is out of date: run {gen_docs.REGENERATE_COMMAND}"
    )
    assert gen_docs.GENERATED["docs/deidentification.md"] is gen_docs.markdown_table


def test_update_doc_regenerates_only_between_the_markers(tmp_path: Path) -> None:
    begin, end, table = gen_docs.TABLE_BEGIN, gen_docs.TABLE_END, gen_docs.markdown_table()
    page = tmp_path / "page.md"
    page.write_text(f"intro\n{begin}\nold\n{end}\nend\n", encoding="utf-8")
    assert gen_docs.update_doc(page, table)
    text = page.read_text(encoding="utf-8")
    assert text == f"intro\n{begin}\n\n{table}\n{end}\nend\n"
    assert not gen_docs.update_doc(page, table)
    with pytest.raises(ValueError, match="add the lines"):
        gen_docs.with_table("no markers here", table)


def test_the_options_a_project_policy_can_allow() -> None:
    """Full dates keep every temporal row; device identity, patient characteristics and
    the reviewed private tags keep what their columns say, nothing more."""
    from pydicom.dataset import Dataset

    from exporter.deid.dataset import Deidentifier, DeidOptions
    from exporter.schemas import PrivateTag

    dated = [r for r in BASIC_PROFILE.values() if r.retain_dates is not None]
    assert len(dated) > 30
    assert all(effective_action(r, retain_full_dates=True) == Action.KEEP for r in dated)
    assert effective_action(row("PatientBirthDate"), retain_full_dates=True) == Action.ZERO
    assert effective_action(row("StationName"), retain_device_identity=True) == Action.KEEP
    assert effective_action(row("InstitutionName"), retain_device_identity=True) == Action.REMOVE
    chars = {"retain_patient_characteristics": True}
    assert effective_action(row("PatientSex"), **chars) == Action.KEEP
    assert effective_action(row("Allergies"), **chars) == Action.CLEAN
    assert effective_action(row("PatientName"), **chars) == Action.ZERO
    options = DeidOptions(
        retain_full_dates=True,
        retain_device_identity=True,
        kept_private=(PrivateTag.parse("0009,ACME,10"),),
    )
    assert [c for c, _ in options.codes()] == ["113100", "113106", "113109", "113111"]
    assert options.temporal() == "UNMODIFIED"
    ds = Dataset()
    block = ds.private_block(0x0009, "ACME", create=True)
    block.add_new(0x10, "LO", "kept")
    block.add_new(0x11, "LO", "not reviewed")
    ds.private_block(0x0011, "OTHER", create=True).add_new(0x10, "LO", "other vendor")
    Deidentifier(options, b"k" * 32, {}).apply(ds, "patient_001", [])
    assert [e.value for e in ds if e.tag.is_private] == ["ACME", "kept"]
    with pytest.raises(ValueError, match="GROUP,CREATOR,ELEMENT"):
        PrivateTag.parse("0010,ACME,10")
