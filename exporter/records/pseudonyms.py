"""Stable pseudonyms and keys per project: the same patient is the same ``patient_NNN`` in
every export of its project, with the same date shift and UID replacements.

A patient's pseudonym is assigned on its first export and kept (``patient_pseudonym``); the
patients new to one export get the next numbers in a random order, so numbering follows the
order of first export, never the order of labels. An export that asks for *fresh
pseudonyms* gets its own ``subject_001``... in random order (never a stable name, which
would stand for someone else), fresh date shifts and a fresh UID key, unlinkable to any
other export. Readable by the project's data managers only.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from exporter.archive.layout import FRESH, STABLE, pseudonym, pseudonyms
from exporter.deid.dataset import new_date_shift, new_uid_key
from exporter.deid.keys import new_project_key, stable_date_shift, stable_uid_key
from exporter.schemas import PrivacyLevel
from exporter.store.models import PatientPseudonym, Project

SERIES = {PrivacyLevel.PSEUDONYMISED.value: STABLE, PrivacyLevel.DEIDENTIFIED.value: "case"}


def project_key(session: Session, project_id: int) -> str:
    """The project's secret, created on first use (two workers at once agree on one)."""
    session.execute(
        update(Project)
        .where(Project.id == project_id, Project.privacy_key.is_(None))
        .values(privacy_key=new_project_key())
    )
    key = session.scalar(select(Project.privacy_key).where(Project.id == project_id))
    assert key is not None
    return key


def assign(
    session: Session,
    project_id: int,
    patients: Mapping[int, str],
    export_id: str | None = None,
    fresh: bool = False,
    level: str = PrivacyLevel.PSEUDONYMISED.value,
) -> dict[int, str]:
    """The pseudonym of each patient (id -> label given), by patient id, for exports of
    ``level``: pseudonymised ones are ``patient_NNN``, de-identified ones ``case_NNN``, two
    series unrelated to each other, so that a pseudonymised archive that keeps dates does
    not tell by its folder names which de-identified patient it is (and so its shift).

    Stable ones are created for patients that have none yet, under a lock on the project
    row (two exports starting at once number their new patients one after the other).
    """
    if fresh:
        names = pseudonyms(patients.values(), prefix=FRESH)
        return {pid: names[label] for pid, label in patients.items()}
    session.execute(update(Project).where(Project.id == project_id).values(id=Project.id))
    known = stable_of(session, list(patients), level)
    new = [pid for pid in patients if pid not in known]
    secrets.SystemRandom().shuffle(new)
    last = session.scalar(
        select(func.coalesce(func.max(PatientPseudonym.number), 0)).where(
            PatientPseudonym.project_id == project_id, PatientPseudonym.series == level
        )
    )
    for number, pid in enumerate(new, start=int(last or 0) + 1):
        name = pseudonym(number, SERIES[level])
        session.add(
            PatientPseudonym(
                project_id=project_id,
                patient_id=pid,
                series=level,
                number=number,
                pseudonym=name,
                first_export_id=export_id,
            )
        )
        known[pid] = name
    session.flush()
    return {pid: known[pid] for pid in patients}


def keys(
    session: Session,
    project_id: int,
    patient_ids: list[int],
    fresh: bool,
    create: bool = True,
    level: str = PrivacyLevel.PSEUDONYMISED.value,
) -> tuple[str, dict[int, int]]:
    """The UID key and each patient's date shift: the project's stable ones for ``level``
    (derived from its secret), or fresh ones. ``create`` False only reads the secret (a
    preview writes nothing): without one yet, the values are fresh."""
    key = None
    if not fresh:
        key = (
            project_key(session, project_id)
            if create
            else session.scalar(select(Project.privacy_key).where(Project.id == project_id))
        )
    if key is None:
        return new_uid_key(), {pid: new_date_shift() for pid in patient_ids}
    shifts = {pid: stable_date_shift(key, pid, level) for pid in patient_ids}
    return stable_uid_key(key, level), shifts


def stable_of(
    session: Session, patient_ids: list[int], level: str = PrivacyLevel.PSEUDONYMISED.value
) -> dict[int, str]:
    """The stable pseudonyms these patients already have for ``level``."""
    found: dict[int, str] = {}
    for start in range(0, len(patient_ids), 500):
        rows = session.execute(
            select(PatientPseudonym.patient_id, PatientPseudonym.pseudonym).where(
                PatientPseudonym.patient_id.in_(patient_ids[start : start + 500]),
                PatientPseudonym.series == level,
            )
        )
        found.update((pid, name) for pid, name in rows)
    return found
