"""Small hand-made imaging trees for registry tests (the demo generator has its own tests)."""

from __future__ import annotations

import gzip
import importlib.util
import os
import struct
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

import pydicom
from PIL import Image, PngImagePlugin
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from exporter.config import PROJECT_ROOT


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


# --- A tree with identifiers planted everywhere a scanner, a camera or a tool writes them ------

ACQUIRED = datetime(2021, 3, 4, 10, 15, 30, tzinfo=UTC)  # also every file's mtime


@dataclass(frozen=True)
class Planted:
    """One patient of :func:`planted_tree`: label, folder, and every identifying value."""

    label: str
    folder: str
    names: tuple[str, ...]  # as files write them (DICOM PN, free text)
    ids: tuple[str, ...]
    others: tuple[str, ...]  # address, phone, accession, staff, institution, device
    dates: tuple[str, ...]  # YYYYMMDD: birth, study
    mtime: float

    @property
    def values(self) -> tuple[str, ...]:
        return (self.label, *self.names, *self.ids, *self.others)


PLANTED = (
    Planted(
        "Q7731",
        "site-z/cohort-9",
        (
            "Vandenbroucke^Marieke^Johanna",
            "Peeters^Marieke",
            "Claeys^Hilde",
            "Marieke Vandenbroucke",
            "VANDENBROUCKE MARIEKE",
        ),
        ("MRN-55821934", "RRN-850312-44791", "850312-447-91", "ACC7731992"),
        (
            "Kortrijksesteenweg 1187",
            "+32 9 387 44 21",
            "Dewitte^Pieter^^DR",
            "Ziekenhuis Oostkust",
            "OOSTKUST-CBCT1",
            "SN-44X-9921",
        ),
        ("19850312", "20210304"),
        ACQUIRED.timestamp(),
    ),
    Planted(
        "Q8842",
        "site-z/cohort-9",
        ("Oyelaran^Babatunde", "Oyelaran Babatunde"),
        ("MRN-66930045", "RRN-770921-55802"),
        ("Groenplaatsstraat 41", "+32 3 555 61 72", "Ziekenhuis Oostkust"),
        ("19770921", "20210304"),
        ACQUIRED.timestamp() + 3600,
    ),
)


def _planted_dicom(path: Path, p: Planted, number: int, private_sequence: bool) -> None:
    """A CT slice whose header holds the patient's identifiers in the places PS3.15 Table
    E.1-1 lists that a real CBCT scanner writes: patient module, study, staff, institution,
    device, free text, a request sequence, a vendor's private block and the file meta."""
    write_dicom(path, patient=p.names[0], number=number)
    ds = pydicom.dcmread(path)
    name, other, mother = p.names[0], p.names[1], p.names[2] if len(p.names) > 2 else p.names[1]
    ds.PatientID = p.ids[0]
    ds.OtherPatientIDs = p.ids[1]
    item = Dataset()
    item.PatientID = p.ids[2] if len(p.ids) > 3 else p.ids[1]
    item.IssuerOfPatientID = "RRN"
    ds.OtherPatientIDsSequence = [item]
    ds.OtherPatientNames = other
    ds.PatientBirthName = other
    ds.PatientMotherBirthName = mother
    ds.PatientAddress = f"{p.others[0]}, 9051 Sint-Denijs-Westrem"
    ds.PatientTelephoneNumbers = p.others[1]
    ds.PatientBirthDate = p.dates[0]
    ds.PatientSex = "F"
    ds.PatientComments = f"call {p.names[-1]} before the visit"
    ds.AccessionNumber = p.ids[-1] if len(p.ids) > 3 else "ACC8842001"
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = p.dates[1]
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = "101530"
    ds.AcquisitionDateTime = p.dates[1] + "101530"
    ds.ReferringPhysicianName = "Dewitte^Pieter^^DR"
    ds.PerformingPhysicianName = "Dewitte^Pieter^^DR"
    ds.OperatorsName = "Dewitte^Pieter"
    ds.InstitutionName = "Ziekenhuis Oostkust"
    ds.InstitutionAddress = "Kaaistraat 2, 8400 Oostende"
    ds.StationName = "OOSTKUST-CBCT1"
    ds.DeviceSerialNumber = "SN-44X-9921"
    ds.StudyDescription = f"CBCT {p.names[-1]} pre-op"
    ds.SeriesDescription = f"{p.label} implant planning"
    ds.ImageComments = f"{p.names[-1]} {p.ids[0]}"
    ds.StudyID = p.label
    request = Dataset()
    request.RequestedProcedureID = p.label
    request.ScheduledProcedureStepID = p.ids[0]
    ds.RequestAttributesSequence = [request]
    block = ds.private_block(0x0009, "ACME CBCT", create=True)
    block.add_new(0x10, "LO", name)  # vendors copy the name into private tags
    if private_sequence:  # a planning tool's private sequence with a name in a text field
        inner = Dataset()
        inner.private_block(0x0019, "ACME PLAN", create=True).add_new(
            0x20, "LO", f"planned for {p.names[-1]}"
        )
        ds.private_block(0x0019, "ACME PLAN", create=True).add_new(0x10, "SQ", [inner])
    ds.file_meta.SourceApplicationEntityTitle = "OOSTKUST_CBCT"
    ds.save_as(path, enforce_file_format=True)


def _planted_nifti(path: Path, p: Planted) -> None:
    """A gzipped NIfTI-1 volume named after the patient, with identifiers in every text
    field, an extension, and the gzip member's own name and time."""
    header = bytearray(348)
    struct.pack_into("<i", header, 0, 348)
    header[4:14] = p.ids[0].encode()[:10].ljust(10, b"\0")  # db_name
    struct.pack_into("<8h", header, 40, 3, 4, 4, 4, 1, 1, 1, 1)  # dim
    struct.pack_into("<hh", header, 70, 2, 8)  # datatype uint8, bitpix
    struct.pack_into("<8f", header, 76, 1, 1, 1, 1, 1, 1, 1, 1)  # pixdim
    struct.pack_into("<f", header, 108, 352 + 32)  # vox_offset: after one extension
    header[148:228] = f"seg {p.names[-1]}".encode()[:80].ljust(80, b"\0")  # descrip
    header[228:252] = p.ids[1].encode()[:24].ljust(24, b"\0")  # aux_file
    header[328:344] = p.label.encode()[:16].ljust(16, b"\0")  # intent_name
    header[344:348] = b"n+1\0"
    extension = struct.pack("<ii", 32, 6) + f"{p.names[0]}".encode()[:24].ljust(24, b"\0")
    body = bytes(header) + b"\1\0\0\0" + extension + bytes(64)
    path.parent.mkdir(parents=True, exist_ok=True)
    with (
        open(path, "wb") as raw,
        gzip.GzipFile(
            filename=f"{p.names[1]}.nii", mode="wb", fileobj=raw, mtime=int(p.mtime)
        ) as gz,
    ):
        gz.write(body)


def _planted_photos(folder: Path, p: Planted) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (64, 48), (200, 100, 110))
    exif = Image.Exif()
    exif[0x010E] = f"Intraoral photo {p.names[-1]} {p.ids[0]}"  # ImageDescription
    exif[0x013B] = p.names[0]  # Artist
    exif[0x0132] = f"{p.dates[1][:4]}:{p.dates[1][4:6]}:{p.dates[1][6:]} 10:15:30"
    xmp = (
        f'<x:xmpmeta xmlns:x="adobe:ns:meta/"><dc:creator>{p.names[-1]}</dc:creator></x:xmpmeta>'
    ).encode()
    image.save(folder / "photo_1.jpg", "JPEG", exif=exif, comment=p.names[-1].encode(), xmp=xmp)
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", p.names[0])
    info.add_itxt("Description", f"{p.label} {p.ids[0]}")
    image.save(folder / "photo_2.png", "PNG", pnginfo=info)


def planted_tree(root: Path, private_sequence: bool = False) -> Path:
    """Two patients whose every file carries their identifiers: DICOM series, a processed
    volume named after the patient, intraoral scans (STL, PLY, OBJ), photos (JPEG, PNG);
    every file's mtime is the acquisition time."""
    for p in PLANTED:
        base = root / p.folder / p.label
        for i in (1, 2):
            _planted_dicom(
                base / "cbct" / "raw" / "series_001" / f"{i:04d}.dcm", p, i, private_sequence
            )
        _planted_nifti(base / "cbct" / "processed" / f"{p.label}_{p.names[1]}_seg.nii.gz", p)
        header = f"{p.names[-1]} {p.ids[0]} upper".encode()[:80].ljust(80, b" ")
        write_file(base / "ios" / "upper.stl", header + struct.pack("<I", 0))
        ply = (
            f"ply\nformat ascii 1.0\ncomment scanned {p.names[-1]}\nobj_info {p.ids[0]}\n"
            "element vertex 1\nproperty float x\nend_header\n0\n"
        )
        write_file(base / "ios" / "lower.ply", ply.encode())
        obj = f"# {p.names[-1]}\nmtllib {p.label}.mtl\no {p.ids[0]}\nv 0 0 0\n"
        write_file(base / "ios" / f"{p.label}_bite.obj", obj.encode())
        _planted_photos(base / "intraoral-photo", p)
        for path in base.rglob("*"):
            if path.is_file():
                os.utime(path, (p.mtime, p.mtime))
    return root


def gen_docs() -> ModuleType:
    """scripts/gen_docs.py (a script, not a module of the package), loaded for its tests."""
    spec = importlib.util.spec_from_file_location("gen_docs", PROJECT_ROOT / "scripts/gen_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
