"""Generated headers through both de-identification paths: the byte-level one must give what
pydicom (the reference) gives, whatever elements, values, private blocks and sequences a
header holds, under every option set; and no generated identifier may survive."""

from __future__ import annotations

import io
import random
from typing import Any

import pydicom
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from exporter.archive.build import export_transform
from exporter.archive.layout import PlannedFile
from exporter.archive.transform import HeaderRewriter
from exporter.deid.profile import BASIC_PROFILE
from exporter.schemas import ExportOptions, FileEntry

SECRET = "ZZSECRETZZ"  # in every generated identifying text; must not survive
VRS = (
    "LO",
    "SH",
    "PN",
    "CS",
    "DA",
    "TM",
    "DT",
    "UI",
    "DS",
    "IS",
    "US",
    "LT",
    "ST",
    "UT",
    "AE",
    "AS",
    "SQ",
    "OB",
)
ROWS = sorted(
    (r.tag, pydicom.datadict.dictionary_VR(r.tag))
    for r in BASIC_PROFILE.values()
    if r.tag >> 16 not in (0x0002, 0x0000, 0x7FE0, 0xFFFA, 0xFFFC)
    and pydicom.datadict.dictionary_VR(r.tag) in VRS
)
KEPT = [  # public elements the profile keeps
    (0x00080008, "CS"),
    (0x00180050, "DS"),
    (0x00280030, "DS"),
    (0x00200013, "IS"),
    (0x00180060, "DS"),
    (0x00082218, "SQ"),
]
# The reviewed private sequence kept (its public elements still get the profile); the
# private text beside it goes.
KEPT_PRIVATE = ("0011,FUZZ VENDOR,02",)
OPTION_SETS = [  # ExportOptions: each privacy level and what a project's policy may add
    {"privacy": "deidentified"},
    {"privacy": "deidentified", "shift_dates": True},
    {},
    {
        "retain_full_dates": True,
        "retain_uids": True,
        "retain_device_identity": True,
        "retain_patient_characteristics": True,
    },
    {"kept_private": KEPT_PRIVATE},
]


def value_for(vr: str, rng: random.Random, secret: bool) -> Any:
    word = SECRET if secret else rng.choice(["ALPHA", "BETA", "X1"])
    if vr in ("LO", "SH", "LT", "ST", "UT"):
        return f"{word} {rng.randint(0, 99)}"[: 16 if vr == "SH" else 64]
    if vr == "PN":
        return f"{word}^{rng.choice(['ANN', 'BOB'])}"
    if vr in ("CS", "AE"):
        return rng.choice(["A", "B_1", "YES"])
    if vr == "AS":
        return f"{rng.randint(0, 99):03d}Y"
    if vr == "DA":
        return f"{rng.randint(1950, 2030)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
    if vr == "TM":
        return f"{rng.randint(0, 23):02d}{rng.randint(0, 59):02d}{rng.randint(0, 59):02d}"
    if vr == "DT":
        return f"{rng.randint(1950, 2030)}0{rng.randint(1, 9)}1{rng.randint(0, 9)}101010"
    if vr == "UI":
        return f"1.2.826.0.1.{rng.randint(1, 10**9)}.{rng.randint(1, 999)}"
    if vr in ("DS", "IS"):
        return str(rng.randint(0, 500))
    if vr == "US":
        return rng.randint(0, 65535)
    if vr == "OB":
        return (word.encode() * 2)[:16]
    raise AssertionError(vr)


def header(seed: int, count: int, with_private: bool, empty_share: float) -> bytes:
    """A CT slice with ``count`` random profile elements (some empty), a few kept ones,
    maybe a private block and sequences holding identifying elements."""
    rng = random.Random(seed)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.7.1"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = "1.2.826.0.1.7.1"
    ds.PatientName = f"{SECRET}^JANE"
    ds.PatientID = f"{SECRET}1"
    for tag, vr in rng.sample(ROWS, count) + rng.sample(KEPT, 3):
        if vr == "SQ":
            item = Dataset()
            item.PatientID = f"{SECRET}2"
            item.CodeMeaning = "x"
            item.ReferencedSOPInstanceUID = value_for("UI", rng, False)
            ds.add_new(tag, "SQ", Sequence([item]))
        elif rng.random() < empty_share:
            ds.add_new(tag, vr, None if vr in ("US", "SQ", "OB") else "")
        else:
            ds.add_new(tag, vr, value_for(vr, rng, secret=True))
    if with_private:
        block = ds.private_block(0x0011, "FUZZ VENDOR", create=True)
        block.add_new(0x01, "LO", f"{SECRET}3")
        inner = Dataset()
        inner.PatientName = f"{SECRET}^IN"
        block.add_new(0x02, "SQ", Sequence([inner]))
    ds.Rows = ds.Columns = 4
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = bytes(range(32))
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def both(raw: bytes, options: dict[str, Any]) -> tuple[Any, Any, bytes]:
    opts = ExportOptions(**options)
    fast = export_transform(opts, ["patient_001"], None, "cd" * 32, {"patient_001": -77})
    slow = HeaderRewriter(fast.context, byte_level=False)
    entry = FileEntry(
        1,
        1,
        "P",
        "cbct",
        "raw",
        None,
        "p/1.dcm",
        len(raw),
        "",
        "application/dicom",
        "series_001",
        0,
    )
    item = PlannedFile(entry, "patient_001/cbct/series_001/0001.dcm", "patient_001")
    outputs = []
    for rewriter in (slow, fast):
        data = b"".join(bytes(c) for c in rewriter(item, io.BytesIO(raw)))  # type: ignore[arg-type]
        changes = {(c.tag, c.action, c.new_value) for c in rewriter.take_changes()}
        outputs.append((pydicom.dcmread(io.BytesIO(data)), changes, data))
    return outputs[0], outputs[1], outputs[1][2]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10**6),
    count=st.integers(1, 40),
    with_private=st.booleans(),
    empty_share=st.sampled_from([0.0, 0.3]),
    options=st.sampled_from(OPTION_SETS),
)
def test_byte_level_and_pydicom_agree_on_generated_headers(
    seed: int, count: int, with_private: bool, empty_share: float, options: dict[str, Any]
) -> None:
    raw = header(seed, count, with_private, empty_share)
    (expected, expected_changes, _), (got, got_changes, data), _ = both(raw, options)
    assert got == expected
    assert got.file_meta.MediaStorageSOPInstanceUID == expected.file_meta.MediaStorageSOPInstanceUID
    assert got_changes == expected_changes
    if not any(k.startswith("retain_") for k in options):  # retained values keep their text
        assert SECRET.encode() not in data, "a generated identifier survived"
    assert got.PixelData == bytes(range(32))
