"""DICOM header work: pure functions over files and datasets, no database or UI."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

# The header subset the registry keeps per file: who, which study/series, what equipment, when.
HEADER_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "StudyDescription",
    "AccessionNumber",
    "ReferringPhysicianName",
    "SeriesInstanceUID",
    "SeriesNumber",
    "SeriesDescription",
    "SeriesDate",
    "AcquisitionDate",
    "ContentDate",
    "Modality",
    "Manufacturer",
    "ManufacturerModelName",
    "InstitutionName",
    "StationName",
    "SOPClassUID",
    "SOPInstanceUID",
    "InstanceNumber",
    "Rows",
    "Columns",
    "BitsAllocated",
    "PixelSpacing",
    "SliceThickness",
)


class NotDicom(Exception):
    """The file does not parse as DICOM."""


def has_dicom_preamble(path: Path) -> bool:
    """True when the file carries the DICM magic at offset 128 (a Part 10 file)."""
    with open(path, "rb") as fh:
        fh.seek(128)
        return fh.read(4) == b"DICM"


def _text(value: Any) -> Any:
    if isinstance(value, pydicom.multival.MultiValue):
        return [_text(v) for v in value]
    if isinstance(value, int | float):
        return value
    return str(value)


def extract_header(path: Path) -> dict[str, Any]:
    """The registry's header subset of one file, read without its pixel data."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, EOFError, ValueError, TypeError, KeyError) as exc:
        raise NotDicom(str(exc) or type(exc).__name__) from None
    if "SOPClassUID" not in ds and "PatientID" not in ds and "Modality" not in ds:
        raise NotDicom("no SOP Class, patient or modality element")
    header: dict[str, Any] = {}
    for keyword in HEADER_KEYWORDS:
        element = ds.get(keyword)
        if element is not None and element != "":
            header[keyword] = _text(element)
    header["TransferSyntaxUID"] = str(ds.file_meta.get("TransferSyntaxUID", ""))
    return header


def acquisition_date(header: dict[str, Any]) -> date | None:
    """The first usable DICOM date (DA, YYYYMMDD) among acquisition, content, series, study."""
    for keyword in ("AcquisitionDate", "ContentDate", "SeriesDate", "StudyDate"):
        value = header.get(keyword)
        if isinstance(value, str) and len(value) == 8 and value.isdigit():
            try:
                return date(int(value[:4]), int(value[4:6]), int(value[6:]))
            except ValueError:
                continue
    return None
