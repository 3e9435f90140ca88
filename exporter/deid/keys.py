"""A project's secret and what is derived from it with HMAC: each patient's stable date shift
and the UID key of each privacy level, so that follow-up exports line up without a stored
table of shifts (the levels themselves are ``exporter.schemas.PrivacyLevel``)."""

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
