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

from exporter.deid.dataset import MAX_SHIFT_DAYS


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
