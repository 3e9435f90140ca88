"""The synthetic demo tree: layout, files real tools accept, identifying values, determinism."""

from __future__ import annotations

import csv
import gzip
import hashlib
import os
import shutil
import struct
import subprocess
import zlib
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from exporter.dev.demo_data import SCALES, DemoManifest, write_demo_tree, write_tags_csv

SMALL = SCALES["small"]
PATIENTS = 9  # enough to fill all 2 x 2 x 2 folders
# NIfTI-1 header fields in file order, with their struct codes.
NIFTI_FIELDS = (
    ("sizeof_hdr", "i"),
    ("data_type", "10s"),
    ("db_name", "18s"),
    ("extents", "i"),
    ("session_error", "h"),
    ("regular", "c"),
    ("dim_info", "B"),
    ("dim", "8h"),
    ("intent_p", "3f"),
    ("intent_code", "h"),
    ("datatype", "h"),
    ("bitpix", "h"),
    ("slice_start", "h"),
    ("pixdim", "8f"),
    ("vox_offset", "f"),
    ("scl_slope", "f"),
    ("scl_inter", "f"),
    ("slice_end", "h"),
    ("slice_code", "B"),
    ("xyzt_units", "B"),
    ("cal_max", "f"),
    ("cal_min", "f"),
    ("slice_duration", "f"),
    ("toffset", "f"),
    ("glmax", "i"),
    ("glmin", "i"),
    ("descrip", "80s"),
    ("aux_file", "24s"),
    ("qform_code", "h"),
    ("sform_code", "h"),
    ("quatern", "6f"),
    ("srow", "12f"),
    ("intent_name", "16s"),
    ("magic", "4s"),
)
STL_RECORD = np.dtype([("normal", "<f4", (3,)), ("vertices", "<f4", (3, 3)), ("attr", "<u2")])


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> DemoManifest:
    return write_demo_tree(tmp_path_factory.mktemp("demo") / "tree", patients=PATIENTS, seed=7)


def patient_files(manifest: DemoManifest, index: int) -> dict[str, Path]:
    person = manifest.patients[index]
    base = manifest.root / person.folder / person.label
    return {p.relative_to(base).as_posix(): p for p in sorted(base.rglob("*")) if p.is_file()}


def nifti_header(raw: bytes) -> dict[str, object]:
    """The header fields by name; multi-valued ones as tuples."""
    assert struct.calcsize("<" + "".join(code for _, code in NIFTI_FIELDS)) == 348
    header: dict[str, object] = {}
    offset = 0
    for name, code in NIFTI_FIELDS:
        values = struct.unpack_from("<" + code, raw, offset)
        offset += struct.calcsize("<" + code)
        header[name] = values if len(values) > 1 else values[0]
    return header


def digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_tree_has_the_documented_layout(tree: DemoManifest) -> None:
    labels = [p.label for p in tree.patients]
    assert labels == [f"P{i:04d}" for i in range(1, PATIENTS + 1)]
    folders = {p.folder for p in tree.patients}
    assert len(folders) == 8
    assert {f.split("/")[0] for f in folders} == {"site-a", "site-b"}
    expected = {f"cbct/raw/series_001/{k:04d}.dcm" for k in range(1, SMALL.slices + 1)}
    expected |= {"cbct/processed/volume.nii.gz", "ios/upper.stl", "ios/lower.stl"}
    expected |= {f"intraoral-photo/photo_{n}.jpg" for n in range(1, SMALL.photos + 1)}
    for index in range(PATIENTS):
        assert set(patient_files(tree, index)) == expected
    on_disk = [p for p in tree.root.rglob("*") if p.is_file()]
    assert tree.files == len(on_disk) == PATIENTS * len(expected)
    assert tree.bytes == sum(p.stat().st_size for p in on_disk)
    assert {p.name for p in tree.root.glob("*/*/*/*")} == set(labels)


def test_every_dicom_parses_with_pydicom_and_dcmdump(tree: DemoManifest) -> None:
    dcmdump = shutil.which("dcmdump")
    if dcmdump is None:
        pytest.fail(
            "dcmdump (DCMTK) is not installed: run 'apt-get install -y dcmtk'", pytrace=False
        )
    paths = sorted(tree.root.rglob("*.dcm"))
    assert len(paths) == PATIENTS * SMALL.slices
    result = subprocess.run([dcmdump, *map(str, paths)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # not even a warning
    assert result.stdout.count("# Dicom-File-Format") == len(paths)
    for path in paths:
        raw = path.read_bytes()
        assert raw[:128] == bytes(128) and raw[128:132] == b"DICM"
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.SOPClassUID == pydicom.uid.CTImageStorage
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert (ds.Modality, ds.PhotometricInterpretation) == ("CT", "MONOCHROME2")
        assert (ds.BitsAllocated, ds.BitsStored, ds.PixelRepresentation) == (16, 12, 0)
        assert ds.pixel_array.shape == (SMALL.matrix, SMALL.matrix)
        assert ds.pixel_array.max() <= 4095


def test_series_geometry_and_uids(tree: DemoManifest) -> None:
    files = patient_files(tree, 0)
    series = [pydicom.dcmread(p) for name, p in files.items() if name.endswith(".dcm")]
    assert [ds.InstanceNumber for ds in series] == list(range(1, SMALL.slices + 1))
    assert len({ds.SOPInstanceUID for ds in series}) == SMALL.slices
    z = [float(ds.ImagePositionPatient[2]) for ds in series]
    assert np.allclose(np.diff(z), float(series[0].SliceThickness))
    assert [float(ds.SliceLocation) for ds in series] == z
    assert {ds.StudyInstanceUID for ds in series} == {tree.patients[0].identity["StudyInstanceUID"]}
    other = pydicom.dcmread(patient_files(tree, 1)["cbct/raw/series_001/0001.dcm"])
    assert other.StudyInstanceUID != series[0].StudyInstanceUID
    assert other.SOPInstanceUID != series[0].SOPInstanceUID


def test_dicom_header_carries_the_manifest_identity(tree: DemoManifest) -> None:
    for index, person in enumerate(tree.patients):
        ds = pydicom.dcmread(patient_files(tree, index)["cbct/raw/series_001/0001.dcm"])
        for key, value in person.identity.items():
            if key != "CameraSerialNumber":
                assert str(ds[key].value) == value, key
        assert ds.private_block(0x0009, "DEMO VENDOR")[0x10].value == person.identity["PatientName"]
        item = ds.OtherPatientIDsSequence[0]
        assert item.PatientID == person.identity["OtherPatientIDs"]
        assert item.IssuerOfPatientID


def test_every_identity_value_is_findable_in_the_patients_files(tree: DemoManifest) -> None:
    # What a de-identification check will search for: each value must be there before, and long
    # enough that finding it later by accident is not a risk.
    names = {p.identity["PatientName"] for p in tree.patients}
    assert len(names) == PATIENTS
    for index, person in enumerate(tree.patients):
        blob = b"".join(
            gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
            for p in patient_files(tree, index).values()
        )
        for key, value in person.identity.items():
            assert len(value) >= 6, key
            assert value.encode() in blob, key


def test_cbct_deflates_about_2x_like_clinical_data(tree: DemoManifest) -> None:
    for name, path in patient_files(tree, 0).items():
        if name.endswith(".dcm"):
            data = path.read_bytes()
            ratio = len(data) / len(zlib.compress(data, 1))
            assert 1.7 <= ratio <= 2.6, (name, ratio)


def test_stl_is_binary_with_identifying_header(tree: DemoManifest) -> None:
    person = tree.patients[0]
    for jaw in ("upper", "lower"):
        data = patient_files(tree, 0)[f"ios/{jaw}.stl"].read_bytes()
        (count,) = struct.unpack_from("<I", data, 80)
        assert count == SMALL.stl_triangles
        assert len(data) == 84 + 50 * count
        header = data[:80].decode()
        assert not header.startswith("solid")  # ASCII STL readers would take it for theirs
        assert person.identity["PatientName"] in header and person.identity["PatientID"] in header
        assert jaw in header
        records = np.frombuffer(data, dtype=STL_RECORD, offset=84)
        assert np.allclose(np.linalg.norm(records["normal"], axis=1), 1, atol=1e-4)
        span = np.ptp(records["vertices"].reshape(-1, 3), axis=0)
        assert 40 < span[0] < 90 and span[2] > 5  # a jaw-sized arch in millimetres
        facing = records["normal"][:, 2].mean()
        assert facing < 0 if jaw == "upper" else facing > 0  # teeth point at each other


def test_nifti_header_fields(tree: DemoManifest) -> None:
    person = tree.patients[0]
    files = patient_files(tree, 0)
    raw = gzip.decompress(files["cbct/processed/volume.nii.gz"].read_bytes())
    h = nifti_header(raw)
    assert (h["sizeof_hdr"], h["magic"], h["vox_offset"]) == (348, b"n+1\0", 352.0)
    assert h["dim"] == (3, SMALL.matrix, SMALL.matrix, SMALL.slices, 1, 1, 1, 1)
    assert (h["datatype"], h["bitpix"]) == (4, 16)  # int16
    first = pydicom.dcmread(files["cbct/raw/series_001/0001.dcm"])
    spacing = [*map(float, first.PixelSpacing), float(first.SliceThickness)]
    assert np.allclose(h["pixdim"][1:4], spacing)  # type: ignore[index]
    assert len(raw) == 352 + 2 * SMALL.matrix**2 * SMALL.slices
    assert person.identity["PatientName"].encode() in h["descrip"]  # type: ignore[operator]
    assert person.identity["PatientID"].encode() in h["descrip"]  # type: ignore[operator]
    assert person.identity["PatientID"].encode() in h["db_name"]  # type: ignore[operator]
    assert person.identity["AccessionNumber"].encode() in h["aux_file"]  # type: ignore[operator]
    volume = np.frombuffer(raw, dtype="<i2", offset=352)
    assert volume.min() < -900 and volume.max() > 1000  # air and bone, in HU


def test_photo_has_exif_gps_and_comment(tree: DemoManifest) -> None:
    person = tree.patients[0]
    files = patient_files(tree, 0)
    study_date = pydicom.dcmread(files["cbct/raw/series_001/0001.dcm"]).StudyDate
    with Image.open(files["intraoral-photo/photo_1.jpg"]) as image:
        assert image.format == "JPEG" and image.size == SMALL.photo_size
        exif = image.getexif()
        gps = exif.get_ifd(0x8825)
        details = exif.get_ifd(0x8769)
        comment = image.info["comment"]
        channels = np.asarray(image).reshape(-1, 3)
    assert exif[0x010F] and exif[0x0110]  # Make, Model
    assert person.identity["PatientName"] in exif[0x010E]  # ImageDescription
    assert exif[0x013B] == person.identity["OperatorsName"]  # Artist
    taken = datetime.strptime(details[0x9003], "%Y:%m:%d %H:%M:%S")  # DateTimeOriginal
    assert f"{taken:%Y%m%d}" == study_date  # photographed at the CBCT visit
    assert gps[1] == "N" and gps[3] == "E" and len(gps[2]) == len(gps[4]) == 3
    assert person.identity["PatientName"].encode() in comment
    assert channels.std(axis=0).min() > 5  # not one flat colour


def test_tags_csv(tree: DemoManifest, tmp_path: Path) -> None:
    path = tmp_path / "tags.csv"
    write_tags_csv(path, tree)
    assert path.read_text().splitlines()[0] == "patient,tags"
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["patient"], r["tags"]) for r in rows] == [
        (p.label, ";".join(p.tags)) for p in tree.patients
    ]
    assert all(p.tags for p in tree.patients)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    a = write_demo_tree(tmp_path / "a", patients=2, seed=3)
    b = write_demo_tree(tmp_path / "b", patients=2, seed=3)
    c = write_demo_tree(tmp_path / "c", patients=2, seed=4)
    first, again, other = digests(a.root), digests(b.root), digests(c.root)
    assert first == again
    assert a.patients == b.patients
    assert set(other) == set(first)
    assert all(other[name] != digest for name, digest in first.items())
    mtimes = {os.stat(a.root / name).st_mtime for name in first}
    assert mtimes == {os.stat(b.root / name).st_mtime for name in again}
    assert len(mtimes) == 2  # one fixed time per patient: its acquisition


def test_patient_name_and_id_do_not_depend_on_patient_count(
    tree: DemoManifest, tmp_path: Path
) -> None:
    alone = write_demo_tree(tmp_path / "one", patients=1, seed=7).patients[0]
    for key in ("PatientName", "PatientID"):
        assert alone.identity[key] == tree.patients[0].identity[key]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"patients": 0}, "patients must be at least 1"),
        ({"scale": "huge"}, "Unknown scale 'huge': use one of small, medium, large"),
        ({"seed": -1}, "seed must be a non-negative integer"),
    ],
)
def test_bad_arguments_are_refused(tmp_path: Path, kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        write_demo_tree(tmp_path / "tree", **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "tree").exists()


def test_refuses_a_non_empty_root(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("not demo data")
    with pytest.raises(ValueError, match="is not empty: pick an empty directory"):
        write_demo_tree(tmp_path)
    with pytest.raises(ValueError, match="is a file: pick an empty directory"):
        write_demo_tree(tmp_path / "keep.txt")
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
