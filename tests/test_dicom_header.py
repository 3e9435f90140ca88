"""Header extraction: the fast reader gives exactly what pydicom gives, or declines."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from exporter.dev import demo_data
from exporter.dicom import header as dicom
from tests.builders import write_dicom


def both(path: Path) -> tuple[dict | None, dict]:  # type: ignore[type-arg]
    prefix = path.read_bytes()[: 1024 * 1024]
    return dicom.read_header_fast(prefix), dicom.extract_header(path)


def test_fast_reader_matches_pydicom_on_demo_series(tmp_path: Path) -> None:
    demo_data.write_demo_tree(tmp_path / "demo", patients=2, seed=3)
    files = sorted((tmp_path / "demo").rglob("*.dcm"))
    assert len(files) >= 20
    for path in files:
        fast, slow = both(path)
        assert fast == slow, path
    assert fast is not None
    assert isinstance(fast["InstanceNumber"], int)
    assert isinstance(fast["PixelSpacing"], list) and isinstance(fast["PixelSpacing"][0], float)
    assert fast["TransferSyntaxUID"] == ExplicitVRLittleEndian


def test_undefined_length_sequences_and_multivalues(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "a.dcm", patient="MÜLLER^JÖRG")
    from pydicom import dcmread

    ds = dcmread(path)
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "MÜLLER^JÖRG"
    item = Dataset()
    item.PatientID = "X1"
    inner = Dataset()
    inner.CodeValue = "123"
    item.IssuerOfPatientIDQualifiersSequence = Sequence([inner])
    ds.OtherPatientIDsSequence = Sequence([item])
    ds["OtherPatientIDsSequence"].is_undefined_length = True
    item.is_undefined_length_sequence_item = True
    item["IssuerOfPatientIDQualifiersSequence"].is_undefined_length = True
    ds.PixelSpacing = [0.25, 0.3]
    ds.StationName = ""
    ds.save_as(path, enforce_file_format=True)
    raw = path.read_bytes()
    assert b"\xfe\xff\xdd\xe0" in raw, "the test needs an undefined-length sequence"
    fast, slow = both(path)
    assert fast == slow
    assert fast is not None and fast["PatientName"] == "MÜLLER^JÖRG"
    assert fast["PixelSpacing"] == [0.25, 0.3]
    assert "StationName" not in fast


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_declines_what_it_does_not_handle(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "b.dcm")
    from pydicom import dcmread

    ds = dcmread(path)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.save_as(tmp_path / "implicit.dcm", enforce_file_format=True)
    fast, slow = both(tmp_path / "implicit.dcm")
    assert fast is None and slow["PatientName"] == "DOE^JANE"
    ds = dcmread(path)
    ds.SpecificCharacterSet = "ISO 2022 IR 87"
    ds.save_as(tmp_path / "jis.dcm", enforce_file_format=True)
    assert both(tmp_path / "jis.dcm")[0] is None
    prefix = path.read_bytes()[:300]  # header cut short: pydicom reads the file instead
    assert dicom.read_header_fast(prefix) is None
    assert dicom.extract_header(path, prefix)["PatientName"] == "DOE^JANE"


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_not_dicom_is_reported(tmp_path: Path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 50)
    assert dicom.read_header_fast(junk.read_bytes()) is None
    with pytest.raises(dicom.NotDicom):
        dicom.extract_header(junk, junk.read_bytes())


def test_unknown_vr_is_decoded_as_the_dictionary_says_and_bad_vrs_are_declined(
    tmp_path: Path,
) -> None:
    path = write_dicom(tmp_path / "un.dcm", rows=8)
    raw = path.read_bytes()
    at = raw.index(b"\x28\x00\x10\x00US\x02\x00")  # Rows, US, length 2
    as_un = raw[:at] + b"\x28\x00\x10\x00UN\x00\x00\x02\x00\x00\x00" + raw[at + 8 :]
    fast = dicom.read_header_fast(as_un)
    assert fast is not None and fast["Rows"] == 8
    corrupt = raw[:at] + b"\x28\x00\x10\x00U\x11" + raw[at + 6 :]
    assert dicom.read_header_fast(corrupt) is None


def test_byte_level_patch_equals_a_pydicom_rewrite(tmp_path: Path) -> None:
    from io import BytesIO

    from pydicom import dcmread

    demo_data.write_demo_tree(tmp_path / "demo", patients=1, seed=4)
    path = next((tmp_path / "demo").rglob("0001.dcm"))
    raw = path.read_bytes()
    name, pid, desc = 0x00100010, 0x00100020, 0x00081030
    patched = dicom.patch_elements(raw, {pid: "patient_007", name: "patient_007", desc: "Cohort 1"})
    assert patched is not None, "the demo's files take the fast path"
    header, offset, old = patched
    fast = dcmread(BytesIO(header + raw[offset:]))
    slow = dcmread(BytesIO(raw))
    slow.PatientID = slow.PatientName = "patient_007"
    slow.StudyDescription = "Cohort 1"
    assert fast == slow and fast.PixelData == slow.PixelData
    assert old[name] == str(dcmread(BytesIO(raw)).PatientName)
    assert dicom.patch_elements(raw, {pid: "pätient"}) is None  # not ASCII: pydicom does it
    assert dicom.patch_elements(raw[:300], {pid: "p"}) is None  # no pixel data within the bytes
    assert dicom.patch_elements(raw, {0x00100030: "19700101", 0x00102160: "x"}) is None  # absent
    at = raw.index(b"\x10\x00\x10\x00PN")  # PatientName twice: pydicom's, not one copy
    twice = raw[:at] + raw[at : at + 8 + int.from_bytes(raw[at + 6 : at + 8], "little")] + raw[at:]
    assert dicom.patch_elements(twice, {name: "patient_007"}) is None
