"""Who may receive what: an export's privacy level, and what a project's data managers allow.

Three levels, one per export (and per release):

- *pseudonymised*, a researcher's default: the patient's stable pseudonym in PatientID,
  PatientName and the entry names; the PS3.15 Basic profile on every other attribute, with
  only the options the project's policy allows (full dates, UIDs, device identity, patient
  characteristics, a reviewed list of private tags); other files scrubbed.
- *de-identified*: the Basic profile with dates shifted per patient (or removed) and UIDs
  remapped, both stable per project; nothing of the project's policy is retained.
- *identified*: stored headers plus curated values and real labels; for the project's data
  managers, or its researchers when a data manager allowed it.

The stable per-project values (date shifts, the UID key) are derived from the project's
secret with HMAC, so follow-up exports line up without storing a table of shifts.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from exporter.deid import MAX_SHIFT_DAYS, PrivateTag


class PrivacyLevel(StrEnum):
    PSEUDONYMISED = "pseudonymised"
    DEIDENTIFIED = "deidentified"
    IDENTIFIED = "identified"


LEVELS = tuple(level.value for level in PrivacyLevel)

# What each level means, in the words pages, CLI help and e-mails use.
TITLES = {
    PrivacyLevel.PSEUDONYMISED: "Pseudonymised (default)",
    PrivacyLevel.DEIDENTIFIED: "De-identified",
    PrivacyLevel.IDENTIFIED: "Identified (carries names, IDs and dates)",
}
SUMMARIES = {
    PrivacyLevel.PSEUDONYMISED: (
        "Each patient appears under a stable pseudonym (the same in every export of this "
        "project). Names, IDs, addresses, phone numbers, staff, institutions and every other "
        "direct identifier are removed from DICOM headers (PS3.15 Basic profile), and "
        "photos, scans and volumes lose their metadata. Dates, UIDs and device details are "
        "kept only where the project's data managers allow it."
    ),
    PrivacyLevel.DEIDENTIFIED: (
        "As pseudonymised, and dates are shifted by a per-patient number of days (stable per "
        "project, so intervals survive), UIDs are replaced (stable per project), device "
        "details and private tags are removed."
    ),
    PrivacyLevel.IDENTIFIED: (
        "The stored headers with the curated values, real patient labels in folder names, "
        "source file times: everything that names the patient stays. For data managers, or "
        "researchers of a project whose data manager allowed it; every such export is audited."
    ),
}
NOT_CHECKED = (
    "text burned into the pixels of images (no OCR)",
    "faces and other recognisable features in photos, scans and volumes",
    "identifiers the portal does not know (values absent from the registry's headers, the "
    "labels and the stored names)",
    "values shorter than 4 characters, numbers shorter than 6 digits and common words",
    "a value whose separators were partly removed (850312-123 written as 85.03.12-123 is "
    "found; 850312123 written as 8503-12123 is not)",
)


@dataclass(frozen=True)
class ProjectPolicy:
    """What a project's data managers allow; stored on the project, frozen into each export.

    The retain options apply to pseudonymised exports only; a de-identified export keeps
    none of them. ``kept_private`` is the reviewed list of private attributes kept in
    pseudonymised exports (every other private attribute is removed).
    """

    retain_full_dates: bool = False
    retain_uids: bool = False
    retain_device_identity: bool = False
    retain_patient_characteristics: bool = False
    kept_private: tuple[PrivateTag, ...] = ()
    identified_for_researchers: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "retain_full_dates": self.retain_full_dates,
            "retain_uids": self.retain_uids,
            "retain_device_identity": self.retain_device_identity,
            "retain_patient_characteristics": self.retain_patient_characteristics,
            "kept_private": [k.text() for k in self.kept_private],
            "identified_for_researchers": self.identified_for_researchers,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> ProjectPolicy:
        data = data or {}
        return cls(
            retain_full_dates=bool(data.get("retain_full_dates")),
            retain_uids=bool(data.get("retain_uids")),
            retain_device_identity=bool(data.get("retain_device_identity")),
            retain_patient_characteristics=bool(data.get("retain_patient_characteristics")),
            kept_private=tuple(sorted(PrivateTag.parse(t) for t in data.get("kept_private", []))),
            identified_for_researchers=bool(data.get("identified_for_researchers")),
        )

    def retained(self) -> list[str]:
        """What a pseudonymised export of the project keeps, in words (for pages and docs)."""
        words = [
            ("full dates", self.retain_full_dates),
            ("UIDs", self.retain_uids),
            ("device identity", self.retain_device_identity),
            ("patient characteristics (age, sex, size, weight)",
             self.retain_patient_characteristics),
        ]  # fmt: skip
        kept = [w for w, on in words if on]
        if self.kept_private:
            kept.append(f"{len(self.kept_private)} reviewed private tag(s)")
        return kept


POLICY_FLAGS = tuple(
    name for name in ProjectPolicy.__dataclass_fields__ if name not in ("kept_private",)
)


def new_project_key() -> str:
    """A project's secret, from which its stable date shifts and UID key are derived."""
    return secrets.token_hex(32)


def _derive(key: str, purpose: str) -> bytes:
    return hmac.new(bytes.fromhex(key), purpose.encode(), hashlib.sha256).digest()


def stable_date_shift(key: str, patient_id: int, level: str = "deidentified") -> int:
    """The patient's date shift in this project: 1 day to 3 years back, the same in every
    export of ``level`` (derived, never drawn, so follow-up exports line up)."""
    value = int.from_bytes(_derive(key, f"date-shift:{level}:{patient_id}")[:8], "big")
    return -(value % MAX_SHIFT_DAYS + 1)


def stable_uid_key(key: str, level: str = "deidentified") -> str:
    """The project's key for UID replacements: the same UID maps to the same new UID in
    every export of ``level`` in the project (and to another in the other level's)."""
    return _derive(key, f"uid-map:{level}").hex()


@dataclass(frozen=True)
class PolicyView:
    """A project's policy as pages, API and CLI show it."""

    project: str
    policy: ProjectPolicy
    may_change: bool
    data_managers: list[str] = field(default_factory=list)
