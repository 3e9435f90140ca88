"""De-identification of DICOM datasets by the PS3.15 Basic Application Level Confidentiality
Profile (the attribute table is in :mod:`exporter.deid.profile`).

Pure functions over a pydicom dataset (the header, read without pixel data). Every element,
in sequences too, gets its row's action: removed, blanked, given a dummy value, given a new
UID, cleaned, or (with the *retain dates* option) shifted by the patient's number of days.
UIDs are replaced by a keyed hash, so the same UID gets the same replacement in every file
and part of one export, and a different one in another export. Private elements are removed
unless the export asks to keep them. The patient's pseudonym stays in PatientID and
PatientName: it is the dummy value those fields get.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from exporter.deid import profile as deid_profile
from exporter.deid.profile import effective_action, row_for
from exporter.dicom.header import tag_text
from exporter.schemas import ExportOptions, PrivacyLevel, PrivateTag

# The fields that carry the patient's pseudonym (the dummy value the profile allows there).
PSEUDONYM_FIELDS = {0x00100020: "PatientID", 0x00100010: "PatientName"}
PSEUDONYM_KEYWORDS = frozenset(PSEUDONYM_FIELDS.values())
# What the dummy action writes, by VR (PS3.15 asks for a value "consistent with the VR").
DUMMIES = {
    "AE": "ANONYMIZED", "AS": "000Y", "CS": "ANONYMIZED", "DA": "19000101", "DS": "0",
    "DT": "19000101000000", "IS": "0", "LO": "ANONYMIZED", "LT": "ANONYMIZED",
    "PN": "ANONYMIZED", "SH": "ANONYMIZED", "ST": "ANONYMIZED", "TM": "000000",
    "UC": "ANONYMIZED", "UR": "", "UT": "ANONYMIZED",
}  # fmt: skip
TEXT_VRS = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})
_NUMERIC = frozenset({"US", "SS", "UL", "SL", "FL", "FD", "SV", "UV"})
# Where the source's identifiers are found, to clean them out of free text.
_IDENTIFYING = (
    "PatientName", "PatientID", "OtherPatientIDs", "OtherPatientNames", "PatientBirthName",
    "PatientMotherBirthName", "PatientBirthDate", "PatientAddress", "AccessionNumber",
    "InstitutionName", "InstitutionAddress", "ReferringPhysicianName",
    "PerformingPhysicianName", "OperatorsName", "StationName", "DeviceSerialNumber",
    "PatientTelephoneNumbers", "MedicalRecordLocator",
)  # fmt: skip
MAX_OLD_TEXT = 2000
# File meta elements that name the sending/receiving systems or hold private data.
META_REMOVED = (0x00020016, 0x00020017, 0x00020018, 0x00020100, 0x00020102)
MAX_SHIFT_DAYS = 1095


def new_uid_key() -> str:
    """A fresh key for one export's UID replacements (kept in the database, never exported)."""
    return secrets.token_hex(32)


def new_date_shift() -> int:
    """One patient's date shift: between one day and three years back, at random."""
    return -(secrets.randbelow(MAX_SHIFT_DAYS) + 1)


@dataclass(frozen=True)
class DeidOptions:
    """The profile's options, as one export applies them."""

    retain_dates: bool = False  # Retain Longitudinal Temporal Information, Modified Dates
    retain_uids: bool = False
    clean_descriptors: bool = False
    retain_full_dates: bool = False  # Retain Longitudinal Temporal Information, Full Dates
    retain_device_identity: bool = False
    retain_patient_characteristics: bool = False
    # Retain Safe Private: only the private attributes a data manager reviewed and listed.
    kept_private: tuple[PrivateTag, ...] = ()

    def __post_init__(self) -> None:
        if self.retain_dates and self.retain_full_dates:
            raise ValueError("dates are either kept as they are or shifted, not both")

    @classmethod
    def for_export(cls, options: ExportOptions) -> DeidOptions | None:
        """The profile's options of an export, or None for an identified export."""
        if options.level is PrivacyLevel.IDENTIFIED:
            return None
        return cls(
            retain_dates=options.shift_dates,
            retain_uids=options.retain_uids,
            clean_descriptors=options.clean_descriptors,
            retain_full_dates=options.retain_full_dates,
            retain_device_identity=options.retain_device_identity,
            retain_patient_characteristics=options.retain_patient_characteristics,
            kept_private=tuple(PrivateTag.parse(t) for t in options.kept_private),
        )

    def profile_flags(self) -> dict[str, bool]:
        """The options :func:`exporter.deid.profile.effective_action` takes."""
        return {
            "retain_uids": self.retain_uids,
            "retain_dates": self.retain_dates,
            "clean_descriptors": self.clean_descriptors,
            "retain_full_dates": self.retain_full_dates,
            "retain_device_identity": self.retain_device_identity,
            "retain_patient_characteristics": self.retain_patient_characteristics,
        }

    def method(self) -> list[str]:
        """De-identification Method (0012,0063): the profile and each option in force."""
        return [deid_profile.DEID_METHOD, *(meaning[:64] for _, meaning in self.codes()[1:])]

    def codes(self) -> list[tuple[str, str]]:
        """(code value, meaning) of CID 7050 for the profile and each option in force."""
        codes = [deid_profile.OPTION_CODES["basic"]]
        codes += [deid_profile.OPTION_CODES[o] for o, on in self._flags() if on]
        return codes

    def _flags(self) -> list[tuple[str, bool]]:
        return [
            ("retain_full_dates", self.retain_full_dates),
            ("retain_dates", self.retain_dates),
            ("retain_patient_characteristics", self.retain_patient_characteristics),
            ("retain_device_identity", self.retain_device_identity),
            ("retain_uids", self.retain_uids),
            ("retain_safe_private", bool(self.kept_private)),
            ("clean_descriptors", self.clean_descriptors),
        ]

    def temporal(self) -> str:
        """Longitudinal Temporal Information Modified (0028,0303)."""
        if self.retain_full_dates:
            return "UNMODIFIED"
        return "MODIFIED" if self.retain_dates else "REMOVED"


@dataclass(frozen=True)
class Edit:
    """One change the profile made: where, which field, old and new text, and how."""

    tag: str
    keyword: str
    old: str | None
    new: str | None
    action: str  # removed | blanked | replaced | shifted | cleaned | set


def element_text(elem: DataElement) -> str:
    """An element's value as one line of text (for logs), bounded."""
    value = elem.value
    if elem.VR == "SQ":
        text = (
            "["
            + "; ".join(
                ", ".join(f"{e.keyword or tag_text(int(e.tag))}={element_text(e)}" for e in item)
                for item in value
            )
            + "]"
        )
    elif isinstance(value, bytes | bytearray):
        text = f"<{len(value)} bytes>"
    elif isinstance(value, list | tuple | MultiValue):
        text = "\\".join(str(v) for v in value)
    else:
        text = "" if value is None else str(value)
    return text[:MAX_OLD_TEXT]


class Deidentifier:
    """Applies the profile to datasets of one export (thread-safe: no mutable state)."""

    def __init__(
        self, options: DeidOptions, uid_key: bytes, date_shifts: Mapping[str, int]
    ) -> None:
        self.options = options
        self.uid_key = uid_key
        self.date_shifts = date_shifts  # by patient folder (pseudonym or label)
        self._flags = options.profile_flags()
        self._kept = frozenset(options.kept_private)
        self._kept_creators = frozenset((k.group, k.creator) for k in options.kept_private)

    def action(self, tag: int) -> str:
        """The profile's action for a public element, under this export's options."""
        row = row_for(tag)
        if row is None:
            return "K"
        return effective_action(row, **self._flags)

    def new_uid(self, uid: str) -> str:
        """The UID's replacement in this export: ``2.25.`` and a 128-bit keyed hash."""
        digest = hmac.new(self.uid_key, uid.strip().encode(), hashlib.sha256).digest()
        return f"2.25.{int.from_bytes(digest[:16], 'big')}"

    def apply(self, ds: Dataset, patient_dir: str, identifiers: list[str]) -> list[Edit]:
        """De-identify ``ds`` in place (its file meta too); the edits made, in tag order.

        ``identifiers`` are the source's identifying texts (see :func:`identifiers_of`),
        cleaned out of descriptors with the *clean descriptors* option.
        """
        shift = self.date_shifts.get(patient_dir, 0)
        if self.options.retain_dates and not shift:
            raise ValueError(f"no date shift for {patient_dir!r}: dates would not be modified")
        cleaner = _Cleaner(identifiers)
        edits: list[Edit] = []
        self._walk(ds, "", shift, cleaner, edits)
        meta = getattr(ds, "file_meta", None)
        if meta is not None:
            for tag in META_REMOVED:  # who sent or received the file, private data
                if tag in meta:
                    edits.append(
                        Edit(
                            tag_text(tag),
                            meta[tag].keyword,
                            element_text(meta[tag]),
                            None,
                            "removed",
                        )
                    )
                    del meta[tag]
            if not self.options.retain_uids and "MediaStorageSOPInstanceUID" in meta:
                meta.MediaStorageSOPInstanceUID = (
                    ds.SOPInstanceUID
                    if ds.get("SOPInstanceUID")
                    else self.new_uid(str(meta.MediaStorageSOPInstanceUID))
                )
        self.mark(ds, edits)
        return edits

    def _walk(self, ds: Dataset, prefix: str, shift: int, clean: _Cleaner, out: list[Edit]) -> None:
        for elem in list(ds):
            tag = int(elem.tag)
            where = prefix + tag_text(tag)
            keyword = elem.keyword or ""
            if elem.tag.is_private:
                if not self.keeps_private(ds, tag):
                    out.append(Edit(where, "private", element_text(elem), None, "removed"))
                    del ds[tag]
                elif elem.VR == "SQ":  # kept, but public elements inside get the profile
                    for i, item in enumerate(elem.value):
                        self._walk(item, f"{where}[{i}]", shift, clean, out)
                continue
            if keyword in PSEUDONYM_KEYWORDS and not prefix:
                continue  # carries the pseudonym: the dummy value of the profile
            action = self.action(tag)
            if action == "K" or (action == "C" and elem.VR == "SQ"):
                if elem.VR == "SQ":
                    for i, item in enumerate(elem.value):
                        self._walk(item, f"{where}[{i}]", shift, clean, out)
                continue
            old = element_text(elem)
            if action == "X":
                del ds[tag]
                out.append(Edit(where, keyword, old, None, "removed"))
            elif action == "Z" or (
                action == "D" and elem.VR not in DUMMIES and elem.VR not in _NUMERIC
            ):
                if _is_empty(elem):
                    continue
                elem.value = Sequence() if elem.VR == "SQ" else None
                out.append(Edit(where, keyword, old, "", "blanked"))
            elif action == "D":
                self._set(elem, _dummy(elem.VR), where, keyword, old, "replaced", out)
            elif action == "U":
                if elem.VR != "UI":
                    continue
                values = [v for v in _values(elem) if v.strip()]
                if not values:
                    continue
                self._set(
                    elem, [self.new_uid(v) for v in values], where, keyword, old, "replaced", out
                )
            elif action == "SHIFT":
                self._set(
                    elem,
                    [shift_value(v, elem.VR, shift) for v in _values(elem)],
                    where,
                    keyword,
                    old,
                    "shifted",
                    out,
                )
            elif action == "C":
                if elem.VR in ("DA", "DT", "TM"):
                    self._set(
                        elem,
                        [shift_value(v, elem.VR, shift) for v in _values(elem)],
                        where,
                        keyword,
                        old,
                        "shifted",
                        out,
                    )
                elif elem.VR in TEXT_VRS:
                    self._set(
                        elem,
                        [clean(str(v)) for v in _values(elem)],
                        where,
                        keyword,
                        old,
                        "cleaned",
                        out,
                    )
                else:  # nothing to clean in a code, number or binary value: it goes
                    del ds[tag]
                    out.append(Edit(where, keyword, old, None, "removed"))

    def keeps_private(self, ds: Dataset, tag: int) -> bool:
        """Whether the private element ``tag`` of ``ds`` is on the reviewed list (a private
        creator is kept when the list keeps an element of its block)."""
        if not self._kept:
            return False
        group, element = tag >> 16, tag & 0xFFFF
        if 0x0010 <= element <= 0x00FF:
            return (group, _creator(ds.get(tag))) in self._kept_creators
        if element < 0x1000:
            return False
        creator = _creator(ds.get((group << 16) | (element >> 8)))
        return PrivateTag(group, creator or "-", element & 0xFF) in self._kept

    @staticmethod
    def _set(
        elem: DataElement,
        new: str | list[str],
        where: str,
        keyword: str,
        old: str,
        action: str,
        out: list[Edit],
    ) -> None:
        if isinstance(new, list):
            value: object = new[0] if len(new) == 1 else new
            text = "\\".join(new)
        else:
            value = new
            text = new
        if elem.VR in _NUMERIC:
            value = 0
            text = "0"
        if text == old:
            return
        elem.value = value
        out.append(Edit(where, keyword, old, text, action))

    def mark(self, ds: Dataset, out: list[Edit]) -> None:
        """Patient Identity Removed, the method and its codes, and the temporal flag."""
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = self.options.method()
        items = []
        for value, meaning in self.options.codes():
            item = Dataset()
            item.CodeValue = value
            item.CodingSchemeDesignator = "DCM"
            item.CodeMeaning = meaning
            items.append(item)
        ds.DeidentificationMethodCodeSequence = items
        ds.LongitudinalTemporalInformationModified = self.options.temporal()
        for keyword in (
            "PatientIdentityRemoved",
            "DeidentificationMethod",
            "DeidentificationMethodCodeSequence",
            "LongitudinalTemporalInformationModified",
        ):
            elem = ds.data_element(keyword)
            assert elem is not None
            out.append(Edit(tag_text(int(elem.tag)), keyword, None, element_text(elem), "set"))


class _Cleaner:
    """Removes the source's identifiers from free text (case-insensitive, whole words)."""

    def __init__(self, identifiers: list[str]) -> None:
        words = sorted({i.strip() for i in identifiers if len(i.strip()) >= 2}, key=len)[::-1]
        self.pattern = (
            re.compile(
                "(?<!\\w)(?:" + "|".join(re.escape(w) for w in words) + ")(?!\\w)", re.IGNORECASE
            )
            if words
            else None
        )

    def __call__(self, text: str) -> str:
        if self.pattern is None:
            return text
        return re.sub(r"\s{2,}", " ", self.pattern.sub("", text)).strip(" ,;^-")


def identifiers_of(ds: Dataset) -> list[str]:
    """The identifying texts a source header carries (names split into their parts too)."""
    found: list[str] = []
    for keyword in _IDENTIFYING:
        value = ds.get(keyword)
        if value is None:
            continue
        values = value if isinstance(value, list | tuple | MultiValue) else [value]
        for v in values:
            text = str(v)
            found.append(text)
            if "^" in text:
                found.extend(p for p in re.split(r"[\^=]", text) if p)
                found.append(" ".join(p for p in text.split("^") if p))
    for item in ds.get("OtherPatientIDsSequence", []) or []:
        if "PatientID" in item:
            found.append(str(item.PatientID))
    return found


def _creator(elem: DataElement | None) -> str:
    """A private creator element's value, as the reviewed list writes it."""
    value = getattr(elem, "value", None)
    return value.strip(" \0") if isinstance(value, str) else ""


def _is_empty(elem: DataElement) -> bool:
    return elem.value is None or elem.value == "" or elem.value == [] or len(elem.value) == 0


def _values(elem: DataElement) -> list[str]:
    value = elem.value
    if value is None:
        return []
    if isinstance(value, list | tuple | MultiValue):
        return [str(v) for v in value]
    return [str(value)]


def _dummy(vr: str) -> str:
    return DUMMIES.get(vr, "")


def shift_value(value: str, vr: str, days: int) -> str:
    """A DA or DT value moved by ``days`` (times are kept); anything unreadable is blanked."""
    text = value.strip()
    if vr == "TM" or not text:
        return text
    try:
        moved = date(int(text[:4]), int(text[4:6]), int(text[6:8])) + timedelta(days=days)
    except ValueError:
        return ""
    if vr == "DA":
        return moved.strftime("%Y%m%d") if len(text) == 8 else ""
    return moved.strftime("%Y%m%d") + text[8:]  # DT: the time and offset stay
