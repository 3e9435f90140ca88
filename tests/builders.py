"""Small hand-made imaging trees for registry tests (the demo generator has its own tests)."""

from __future__ import annotations

from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def write_dicom(path: Path, patient: str = "DOE^JANE", number: int = 1, rows: int = 8) -> Path:
    """A tiny but valid CT slice."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = patient
    ds.PatientID = "MRN-1"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyDate = "20240315"
    ds.Modality = "CT"
    ds.InstanceNumber = number
    ds.Rows = ds.Columns = rows
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = bytes(range(256)) * (rows * rows * 2 // 256 + 1)
    ds.PixelData = ds.PixelData[: rows * rows * 2]
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_file(path: Path, content: bytes = b"x" * 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def small_tree(root: Path) -> Path:
    """site-a/study-1/{P001,P002}, site-b/P003, each with a few modalities."""
    for label, folder in (
        ("P001", "site-a/study-1"),
        ("P002", "site-a/study-1"),
        ("P003", "site-b"),
    ):
        base = root / folder / label
        for i in (1, 2, 3):
            write_dicom(base / "cbct" / "raw" / "series_001" / f"{i:04d}.dcm", number=i)
        write_file(base / "cbct" / "processed" / "volume.nii.gz", b"\x1f\x8b" + b"v" * 500)
        write_file(base / "ios" / "upper.stl", b"s" * 884)
        write_file(base / "ios" / "lower.stl", b"s" * 884)
        if label != "P003":
            write_file(base / "intraoral-photo" / "photo_1.jpg", b"\xff\xd8" + b"j" * 300)
    return root
