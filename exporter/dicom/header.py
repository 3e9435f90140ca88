"""DICOM header work: pure functions over files and datasets, no database or UI."""

from __future__ import annotations

import functools
import re
import struct
from collections.abc import Collection
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import pydicom
from pydicom.errors import InvalidDicomError

from exporter.errors import NotDicom

# The header subset the registry keeps per file: who, which study/series, what equipment, when.
# The identifying ones are also what the residual-identifier check searches archives for.
HEADER_KEYWORDS = (
    "PatientName",
    "PatientID",
    "OtherPatientIDs",
    "OtherPatientIDsSequence",  # kept as the list of its items' PatientID
    "OtherPatientNames",
    "PatientBirthName",
    "PatientMotherBirthName",
    "MedicalRecordLocator",
    "PatientAddress",
    "PatientTelephoneNumbers",
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
    "BodyPartExamined",  # for the study filters (files registered before: register --reread)
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


_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                       b"UR", b"UT", b"UV"})  # fmt: skip
_KNOWN_VRS = _LONG_VRS | frozenset(
    {
        b"AE",
        b"AS",
        b"AT",
        b"CS",
        b"DA",
        b"DS",
        b"DT",
        b"FL",
        b"FD",
        b"IS",
        b"LO",
        b"LT",
        b"PN",
        b"SH",
        b"SL",
        b"SS",
        b"ST",
        b"TM",
        b"UI",
        b"UL",
        b"US",
    }
)
_STRING_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "LO", "LT", "PN", "SH", "ST", "TM", "UC",
                         "UI", "UR", "UT"})  # fmt: skip
# Datasets encoded other than explicit VR little endian go to pydicom.
_SLOW_SYNTAXES = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"})
# The character sets the byte-level readers and writers handle, and their Python codecs.
CHARSETS = {"": "ascii", "ISO_IR 6": "ascii", "ISO_IR 100": "latin-1", "ISO_IR 192": "utf-8"}
_WANTED = {
    int(pydicom.datadict.tag_for_keyword(k) or 0): (k, pydicom.datadict.dictionary_VR(k))
    for k in HEADER_KEYWORDS
}
_LAST_WANTED = max(_WANTED)
_CHARSET_TAG = 0x00080005
_PIXEL_DATA = 0x7FE00010


class _Unsupported(Exception):
    """The fast reader met something it leaves to pydicom."""


@functools.lru_cache(maxsize=4096)
def tag_text(tag: int) -> str:
    """``(gggg,eeee)``, as DCMTK and the change logs write a tag."""
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


@functools.lru_cache(maxsize=4096)
def keyword_of(tag: int) -> str:
    """The dictionary keyword of a tag, or '' for an unknown one."""
    return str(pydicom.datadict.keyword_for_tag(tag) or "")


def _normalise(vr: str, value: Any) -> Any:
    """One JSON-friendly form for a header value, whichever reader produced it."""
    if isinstance(value, list | tuple | pydicom.multival.MultiValue):
        items = [_normalise(vr, v) for v in value]
        return items if len(items) != 1 else items[0]
    if vr == "IS":
        return int(value)
    if vr == "DS":
        return float(value)
    if vr in ("US", "SS", "UL", "SL"):
        return int(value)
    return str(value)


def _decode(vr: str, raw: bytes, encoding: str) -> Any:
    if vr in ("US", "SS", "UL", "SL"):
        fmt = {"US": "<H", "SS": "<h", "UL": "<I", "SL": "<i"}[vr]
        values = [v[0] for v in struct.iter_unpack(fmt, raw)]
        return values[0] if len(values) == 1 else values
    text = raw.decode(encoding).rstrip(" \0").strip()
    if vr in ("IS", "DS") or (vr in _STRING_VRS and vr not in ("LT", "ST", "UT", "UR")):
        parts = [p.strip() for p in text.split("\\")]
        parts = [p for p in parts if p] if len(parts) > 1 else parts
        return _normalise(vr, parts if len(parts) > 1 else text)
    return text


def _skip_undefined_sequence(buf: bytes, pos: int) -> int:
    """Position after the delimiter of an undefined-length sequence that starts at ``pos``."""
    while True:
        if pos + 8 > len(buf):
            raise _Unsupported("truncated sequence")
        group, elem, length = struct.unpack_from("<HHI", buf, pos)
        pos += 8
        tag = group << 16 | elem
        if tag == 0xFFFEE0DD:  # sequence delimitation
            return pos
        if tag != 0xFFFEE000:
            raise _Unsupported("unexpected tag in sequence")
        if length != 0xFFFFFFFF:
            pos += length
            continue
        while True:  # an undefined-length item: its elements, up to the item delimiter
            if pos + 8 > len(buf):
                raise _Unsupported("truncated item")
            group, elem = struct.unpack_from("<HH", buf, pos)
            if (group << 16 | elem) == 0xFFFEE00D:
                pos += 8
                break
            pos = _skip_element(buf, pos)


def _skip_element(buf: bytes, pos: int) -> int:
    return _element_at(buf, pos)[4]


def read_header_fast(prefix: bytes) -> dict[str, Any] | None:
    """The header subset parsed from the first bytes of a Part-10 file, or None.

    Handles explicit VR little endian datasets (almost every stored DICOM file) by walking the
    top-level elements, about ten times faster than a full pydicom parse. None means "ask
    pydicom": another transfer syntax, an unusual character set, or a header longer than
    ``prefix``.
    """
    if len(prefix) < 132 or prefix[128:132] != b"DICM":
        return None
    try:
        return _read_header_fast(prefix)
    except (_Unsupported, struct.error, UnicodeDecodeError, ValueError):
        return None


def _read_header_fast(buf: bytes) -> dict[str, Any] | None:
    pos = 132
    syntax = ""
    while pos + 8 <= len(buf):
        group, elem = struct.unpack_from("<HH", buf, pos)
        if group != 0x0002:
            break
        start = pos
        pos = _skip_element(buf, pos)
        if elem == 0x0010:
            header_len = 8 if buf[start + 4 : start + 6] not in _LONG_VRS else 12
            syntax = buf[start + header_len : pos].decode("ascii").rstrip(" \0")
    if not syntax or syntax in _SLOW_SYNTAXES:
        return None
    encoding = "ascii"
    header: dict[str, Any] = {}
    while True:
        if pos + 8 > len(buf):
            return None  # header longer than what was read: let pydicom read the file
        group, elem = struct.unpack_from("<HH", buf, pos)
        tag = group << 16 | elem
        if tag > _LAST_WANTED or tag == _PIXEL_DATA:
            break
        start = pos
        vr = buf[pos + 4 : pos + 6]
        pos = _skip_element(buf, pos)
        if pos > len(buf):
            return None
        if tag == _CHARSET_TAG:
            charset = buf[start + 8 : pos].decode("ascii").strip(" \0")
            if charset not in CHARSETS:
                return None
            encoding = CHARSETS[charset]
        wanted = _WANTED.get(tag)
        if wanted is None:
            continue
        keyword, dict_vr = wanted
        header_len = 12 if vr in _LONG_VRS else 8
        if dict_vr == "SQ":
            ids = _item_ids(buf[start + header_len : pos], encoding)
            if ids:
                header[keyword] = ids
            continue
        # UN (value representation unknown) is decoded as the dictionary says it should be.
        use_vr = dict_vr if vr == b"UN" else vr.decode("ascii")
        value = _decode(use_vr, buf[start + header_len : pos], encoding)
        if value not in ("", []):
            header[keyword] = value
    if not {"SOPClassUID", "PatientID", "Modality"} & header.keys():
        return None
    header["TransferSyntaxUID"] = syntax
    return header


_ITEM_PATIENT_ID = re.compile(rb"\x10\x00\x20\x00LO(..)", re.DOTALL)


def _item_ids(raw: bytes, encoding: str) -> list[str]:
    """The PatientID of each item of an explicit VR little endian sequence's value."""
    ids = []
    for found in _ITEM_PATIENT_ID.finditer(raw):
        size = struct.unpack("<H", found.group(1))[0]
        value = raw[found.end() : found.end() + size].decode(encoding).strip(" \0")
        if value:
            ids.append(value)
    return ids


def extract_header(source: str | Path | BinaryIO, prefix: bytes | None = None) -> dict[str, Any]:
    """The registry's header subset of one file, read without its pixel data.

    ``prefix`` (the file's first bytes, when the caller has them) lets the fast reader work
    without opening the file again; pydicom reads whatever the fast reader declines.
    """
    if prefix is not None:
        fast = read_header_fast(prefix)
        if fast is not None:
            return fast
    try:
        ds = pydicom.dcmread(source, stop_before_pixels=True)
    except (InvalidDicomError, EOFError, ValueError, TypeError, KeyError) as exc:
        raise NotDicom(str(exc) or type(exc).__name__) from None
    if "SOPClassUID" not in ds and "PatientID" not in ds and "Modality" not in ds:
        raise NotDicom("no SOP Class, patient or modality element")
    header: dict[str, Any] = {}
    for keyword in HEADER_KEYWORDS:
        if keyword not in ds:
            continue
        element = ds.data_element(keyword)
        if element is None or element.value in (None, "", b""):
            continue
        if element.VR == "SQ":
            ids = [str(item.PatientID) for item in element.value if item.get("PatientID")]
            if ids:
                header[keyword] = ids
            continue
        value = _normalise(element.VR, element.value)
        if value not in ("", []):
            header[keyword] = value
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


# Text VRs with a 2-byte length whose value can be replaced in place (padded with a space).
_PATCHABLE_VRS = frozenset({b"AE", b"AS", b"CS", b"DA", b"DS", b"DT", b"IS", b"LO", b"LT", b"PN",
                            b"SH", b"ST", b"TM"})  # fmt: skip


def patch_elements(buf: bytes, values: dict[int, str]) -> tuple[bytes, int, dict[int, str]] | None:
    """Set top-level text elements (``{tag: value}``) at byte level.

    For explicit VR little endian files whose target elements are all present, with text VRs
    and 2-byte lengths, and no group length in their groups, every element in ascending tag
    order and none repeated; ASCII values only. Returns (new header bytes up to the pixel
    data, the pixel data's offset in ``buf``, the old values by tag), or None to let pydicom
    do it (about 40x faster than a pydicom read and write: 100 against ~3,900 us a CBCT
    slice's header here).
    """
    if len(buf) < 132 or buf[128:132] != b"DICM":
        return None
    if not all(v.isascii() and len(v) < 0xFFFE for v in values.values()):
        return None
    try:
        return _patch(buf, values)
    except (_Unsupported, struct.error, UnicodeDecodeError, ValueError):
        return None


def _patch(buf: bytes, values: dict[int, str]) -> tuple[bytes, int, dict[int, str]] | None:
    groups = {tag >> 16 for tag in values}
    header = walk(buf, only=values.keys() | {group << 16 for group in groups})
    found = {e.tag: e for e in header.elements}
    if found.keys() != values.keys():
        return None  # an element to add (pydicom does that), or a group length to fix
    if any(e.vr.encode() not in _PATCHABLE_VRS for e in found.values()):
        return None
    out, cursor, old = [], 0, {}
    for tag in sorted(found):
        e = found[tag]
        encoded = values[tag].encode("ascii")
        if len(encoded) % 2:
            encoded += b" "
        old[tag] = buf[e.value_start : e.end].decode("latin-1").rstrip(" \0").strip()
        out.append(buf[cursor : e.start])
        out.append(struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, e.vr.encode(), len(encoded)))
        out.append(encoded)
        cursor = e.end
    out.append(buf[cursor : header.pixel])
    return b"".join(out), header.pixel, old


class Element(NamedTuple):
    """Where one element lies in a buffer (a tuple: a header walk makes one per element,
    and a tuple is made three times faster than a frozen dataclass)."""

    tag: int
    vr: str
    start: int  # its header
    value_start: int
    end: int


@dataclass(frozen=True)
class Header:
    """The layout of a Part-10 header up to its pixel data."""

    meta: list[Element]
    elements: list[Element]  # top level, before the pixel data
    pixel: int  # where the pixel data element starts
    charset: str  # Specific Character Set as written ("" when absent)


def walk(buf: bytes, only: Collection[int] | None = None) -> Header:
    """The elements of an explicit VR little endian Part-10 file up to its pixel data, from
    the bytes read so far (``only``: just the elements with these tags, the rest skipped);
    raises :class:`Unsupported` for another transfer syntax, when the pixel data is not
    within ``buf``, or for elements out of order or repeated (changing one copy would leave
    the other). The callers decide which elements they handle."""
    meta, syntax = file_meta(buf)
    pos = meta[-1].end
    if not syntax or syntax in _SLOW_SYNTAXES:
        raise _Unsupported(f"transfer syntax {syntax!r}")
    elements: list[Element] = []
    charset = ""
    size, last, unpack = len(buf), -1, _ELEMENT_HEAD.unpack_from
    while True:  # the walk runs for every file of an export: short VRs are read inline
        if pos + 8 > size:
            raise _Unsupported("no pixel data within what was read")
        group, elem, vr, length = unpack(buf, pos)
        tag = group << 16 | elem
        if tag == _PIXEL_DATA:
            break
        if tag <= last:
            raise _Unsupported("elements out of order, or one repeated")
        last = tag
        if vr in _LONG_VRS:  # 4-byte lengths and sequences, a few a header
            element = _element_at(buf, pos)
            start, end = element[3], element[4]
        elif vr in _KNOWN_VRS:
            start = pos + 8
            end = start + length
            element = None
        else:
            raise _Unsupported(f"value representation {vr!r}")
        if end > size:
            raise _Unsupported("an element goes on past what was read")
        if tag == _CHARSET_TAG:
            charset = buf[start:end].decode("ascii").strip(" \0")
        if only is None or tag in only:
            elements.append(element or _new_element(Element, (tag, _VR_TEXT[vr], pos, start, end)))
        pos = end
    return Header(meta, elements, pos, charset)


def file_meta(buf: bytes) -> tuple[list[Element], str]:
    """The file meta elements of a Part-10 file (always explicit VR little endian) and its
    transfer syntax; raises :class:`Unsupported` for anything else."""
    if len(buf) < 132 or buf[128:132] != b"DICM":
        raise _Unsupported("not a Part-10 file")
    pos = 132
    meta: list[Element] = []
    syntax = ""
    while pos + 8 <= len(buf) and struct.unpack_from("<H", buf, pos)[0] == 0x0002:
        element = _element_at(buf, pos)
        meta.append(element)
        if element.tag == 0x00020010:
            syntax = buf[element.value_start : element.end].decode("ascii").rstrip(" \0")
        pos = element.end
    if not meta:
        raise _Unsupported("no file meta")
    return meta, syntax


_ELEMENT_HEAD = struct.Struct("<HH2sH")  # tag, VR, and the length if it is a short one
_LONG_LENGTH = struct.Struct("<I")
_VR_TEXT = {vr: vr.decode("ascii") for vr in _KNOWN_VRS}
_new_element = tuple.__new__  # Element(...) without the Python-level __new__ of NamedTuple


def _element_at(buf: bytes, pos: int) -> Element:
    group, elem, vr, length = _ELEMENT_HEAD.unpack_from(buf, pos)
    text = _VR_TEXT.get(vr)
    if text is None:
        raise _Unsupported(f"value representation {vr!r}")
    if vr in _LONG_VRS:
        length = _LONG_LENGTH.unpack_from(buf, pos + 8)[0]
        value_start = pos + 12
        if length == 0xFFFFFFFF:
            if vr != b"SQ":
                raise _Unsupported("undefined length outside a sequence")
            end = _skip_undefined_sequence(buf, value_start)
        else:
            end = value_start + length
    else:
        value_start = pos + 8
        end = value_start + length
    return _new_element(Element, (group << 16 | elem, text, pos, value_start, end))


# For the other byte-level code (exporter.deid.header_bytes, exporter.archive.transform).
LONG_VRS = _LONG_VRS
Unsupported = _Unsupported
