"""Curated DICOM header values: data managers' corrections, kept with their history.

A curated value targets one field of one file, of one series (every file of a patient with
that series label) or of one patient (every DICOM file of the patient). In an export the
narrowest target wins: file, then series, then patient. Every edit is a new row that
supersedes the one in force for the same target and field, so the history says who changed
what, when, from which value; restoring an earlier value (or clearing the curation) is an
edit too. The stored files are never touched: the values reach exported copies only.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydicom
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from exporter import schemas
from exporter.access.accounts import Principal, require_project
from exporter.archive.sourceio import open_source
from exporter.dicom.header import tag_text
from exporter.dicom.rules import NO_SERIES, CurationRules, series_key
from exporter.dicom.values import FieldSpec, curatable, field_spec, validate_value
from exporter.errors import InvalidInput, InvalidSelection, NotFound, SourceFileError
from exporter.records.exports import as_utc
from exporter.schemas import CuratedValue, HeaderField, SeriesInfo, Target
from exporter.store.models import CuratedHeaderValue, FileRegistry, Modality, Patient, Role, User

HISTORY_CAP = 500
MAX_BULK_PATIENTS = 1000


def _stored_tag(tag: int) -> str:
    return f"{tag >> 16:04X},{tag & 0xFFFF:04X}"


def _tag_int(stored: str) -> int:
    group, elem = stored.split(",")
    return int(group, 16) << 16 | int(elem, 16)


def _patient(session: Session, project_id: int, label: str) -> Patient:
    patient = session.scalar(
        select(Patient).where(
            Patient.project_id == project_id, Patient.label == label, Patient.left_at.is_(None)
        )
    )
    if patient is None:
        raise NotFound(f"No patient {label!r} in this project: check the label")
    return patient


def _dicom_files(session: Session, patient_id: int, key: str | None = None) -> Any:
    """The present DICOM files of a patient, or of one series (by :func:`series_key`)."""
    query = select(FileRegistry).where(
        FileRegistry.patient_id == patient_id,
        FileRegistry.media_type == "application/dicom",
        FileRegistry.missing_since.is_(None),
    )
    if key is not None:
        parts = key.split("/", 2)
        if len(parts) != 3:
            raise NotFound(f"No series {key!r}: series are named like cbct/raw/series_001")
        modality, kind, label = parts
        query = query.join(Modality, Modality.id == FileRegistry.modality_id).where(
            Modality.key == modality,
            FileRegistry.kind == kind,
            FileRegistry.series_label.is_(None)
            if label == NO_SERIES
            else FileRegistry.series_label == label,
        )
    return query.order_by(FileRegistry.path)


def patient_series(
    session: Session, user: Principal, project: str, patient_label: str
) -> list[SeriesInfo]:
    """The DICOM series of one patient (files grouped by series label), for data managers."""
    access = require_project(session, user, project, Role.DATA_MANAGER)
    patient = _patient(session, access.project_id, patient_label)
    keys = {m.id: m.key for m in session.scalars(select(Modality))}
    rows = session.execute(  # counts per series, not the rows (their header JSON is large)
        _dicom_files(session, patient.id)
        .with_only_columns(
            FileRegistry.modality_id,
            FileRegistry.kind,
            FileRegistry.series_label,
            func.count(),
            func.min(FileRegistry.path),
        )
        .group_by(FileRegistry.modality_id, FileRegistry.kind, FileRegistry.series_label)
        .order_by(None)
    )
    found = [
        SeriesInfo(series_key(keys[mid], kind.value, label), count, first)
        for mid, kind, label, count, first in rows
    ]
    return sorted(found, key=lambda s: s.first_path)


def series_files(
    session: Session, user: Principal, project: str, patient_label: str, series_label: str
) -> list[tuple[int, str]]:
    """(file id, registry path) of every file of one series, in path order."""
    access = require_project(session, user, project, Role.DATA_MANAGER)
    patient = _patient(session, access.project_id, patient_label)
    rows = session.execute(
        _dicom_files(session, patient.id, series_label).with_only_columns(
            FileRegistry.id, FileRegistry.path
        )
    )
    return [(fid, path) for fid, path in rows]


def _read_header(data_root: Path, relative: str) -> pydicom.Dataset:
    with open_source(data_root.resolve(), relative) as fh:
        try:
            return pydicom.dcmread(fh, stop_before_pixels=True)
        except Exception as exc:
            raise SourceFileError(f"{relative}: DICOM header cannot be read ({exc})") from None


def _element_text(ds: pydicom.Dataset, tag: int) -> str | None:
    if tag not in ds:
        return None
    value = ds[tag].value
    if value is None:
        return ""
    if isinstance(value, list | tuple | pydicom.multival.MultiValue):
        return "\\".join(str(v) for v in value)
    return str(value)


def header_fields(
    session: Session,
    user: Principal,
    project: str,
    data_root: Path,
    patient_label: str,
    series_label: str,
    file_id: int | None = None,
) -> list[HeaderField]:
    """The top-level header of one file of a series (its first, or ``file_id``), with the
    curated value in force for each field."""
    access = require_project(session, user, project, Role.DATA_MANAGER)
    patient = _patient(session, access.project_id, patient_label)
    query = _dicom_files(session, patient.id, series_label)
    if file_id:
        query = query.where(FileRegistry.id == file_id)
    target = session.scalars(query.limit(1)).first()
    if target is None and file_id:
        raise NotFound(f"File {file_id} is not in series {series_label!r}")
    if target is None:
        raise NotFound(f"No DICOM series {series_label!r} for patient {patient_label!r}")
    ds = _read_header(data_root, target.path)
    rules = rules_for(session, [patient.id])
    key = None if series_label.endswith("/" + NO_SERIES) else series_label
    scopes = _scopes_for(rules, target.id, patient.id, key)
    merged = rules.for_file(target.id, patient.id, key)
    out: list[HeaderField] = []
    for element in ds:
        if element.VR == "SQ" or element.tag.is_private or element.tag == 0x7FE00010:
            continue
        keyword = element.keyword or ""
        curated = merged.get(int(element.tag))
        out.append(
            HeaderField(
                tag_text(int(element.tag)),
                keyword,
                element.name,
                element.VR,
                str(pydicom.datadict.dictionary_VM(element.tag)) if keyword else "",
                _element_text(ds, int(element.tag)) or "",
                curated[1] if curated else None,
                scopes.get(int(element.tag)),
                bool(keyword) and curatable(keyword),
            )
        )
    present = {int(e.tag) for e in ds}
    for tag, (keyword, value) in sorted(merged.items()):
        if tag not in present:  # a curated value for a field the file lacks: it gets added
            spec = field_spec(keyword)
            out.append(
                HeaderField(
                    tag_text(tag),
                    keyword,
                    spec.name,
                    spec.vr,
                    spec.vm,
                    "",
                    value,
                    scopes.get(tag),
                    True,
                )
            )
    return out


def _scopes_for(
    rules: CurationRules, file_id: int, patient_id: int, series_label: str | None
) -> dict[int, str]:
    scopes = dict.fromkeys(rules.by_patient.get(patient_id, {}), "patient")
    if series_label is not None:
        scopes.update(dict.fromkeys(rules.by_series.get((patient_id, series_label), {}), "series"))
    scopes.update(dict.fromkeys(rules.by_file.get(file_id, {}), "file"))
    return scopes


def _in_force(
    session: Session, patient_id: int, tag: str, series_label: str | None, file_id: int | None
) -> CuratedHeaderValue | None:
    query = select(CuratedHeaderValue).where(
        CuratedHeaderValue.patient_id == patient_id,
        CuratedHeaderValue.tag == tag,
        CuratedHeaderValue.superseded_at.is_(None),
    )
    if file_id is not None:
        query = query.where(CuratedHeaderValue.file_id == file_id)
    else:
        query = query.where(CuratedHeaderValue.file_id.is_(None))
        query = query.where(
            CuratedHeaderValue.series_label == series_label
            if series_label is not None
            else CuratedHeaderValue.series_label.is_(None)
        )
    # Locked (PostgreSQL): two edits of the same field at once take turns, so one row stays
    # in force. SQLite serialises writers anyway.
    return session.scalars(query.order_by(CuratedHeaderValue.id.desc()).with_for_update()).first()


def _acquired_value(data_root: Path, spec: FieldSpec, first: FileRegistry) -> str | None:
    """The value the first target file carries (what the data manager saw before the edit)."""
    header = first.dicom_header or {}
    if spec.keyword in header and spec.keyword != "TransferSyntaxUID":
        value = header[spec.keyword]
        return "\\".join(str(v) for v in value) if isinstance(value, list) else str(value)
    return _element_text(_read_header(data_root, first.path), spec.tag)


def curate(
    session: Session,
    user: Principal,
    project: str,
    data_root: Path,
    targets: list[Target],
    field_name: str,
    value: str | None,
) -> list[CuratedValue]:
    """Set (or with ``value`` None, clear) one field on every target, in one transaction.

    The value is validated against the field's VR and VM first; a target without DICOM
    files, or a file outside its patient, fails the whole edit.
    """
    access = require_project(session, user, project, Role.DATA_MANAGER)
    if not targets:
        raise InvalidSelection("Choose at least one patient, series or file to curate")
    if len(targets) > MAX_BULK_PATIENTS:
        raise InvalidSelection(
            f"At most {MAX_BULK_PATIENTS} targets per edit: split the edit into smaller batches"
        )
    spec = field_spec(field_name)
    checked = validate_value(spec, value) if value is not None else None
    now = datetime.now(UTC)
    stored_tag = _stored_tag(spec.tag)
    created: list[CuratedHeaderValue] = []
    for target in targets:
        patient = _patient(session, access.project_id, target.patient)
        if target.file_id is not None:
            file_row = session.get(FileRegistry, target.file_id)
            if file_row is None or file_row.patient_id != patient.id:
                raise NotFound(f"File {target.file_id} does not belong to {target.patient!r}")
            if file_row.media_type != "application/dicom":
                raise InvalidSelection(f"{file_row.path} is not a DICOM file: nothing to curate")
            first: FileRegistry | None = file_row
        else:
            if target.series_label is not None and target.series_label.endswith("/" + NO_SERIES):
                raise InvalidSelection(
                    f"The files of {target.series_label!r} are not in a series: curate them "
                    "one file at a time, or for the whole patient"
                )
            files = _dicom_files(session, patient.id, target.series_label)
            first = session.scalars(files.limit(1)).first()
            if first is None:
                what = f"series {target.series_label!r}" if target.series_label else "DICOM files"
                raise NotFound(f"Patient {target.patient!r} has no {what}: nothing to curate")
        current = _in_force(session, patient.id, stored_tag, target.series_label, target.file_id)
        if current is not None:
            current.superseded_at = now
            old = None if current.cleared else current.value
        else:
            old = None
        if old is None and first is not None:
            old = _acquired_value(data_root, spec, first)
        row = CuratedHeaderValue(
            patient_id=patient.id,
            file_id=target.file_id,
            series_label=target.series_label if target.file_id is None else None,
            tag=stored_tag,
            keyword=spec.keyword,
            old_value=old,
            value=checked if checked is not None else "",
            cleared=checked is None,
            created_by_id=user.id,
            created_at=now,
        )
        session.add(row)
        created.append(row)
    session.flush()
    return [_view(session, row) for row in created]


def restore(
    session: Session, user: Principal, project: str, data_root: Path, value_id: int
) -> CuratedValue:
    """Put an earlier value (or an earlier cleared state) back in force, as a new edit."""
    access = require_project(session, user, project, Role.DATA_MANAGER)
    row = session.get(CuratedHeaderValue, value_id)
    patient = session.get(Patient, row.patient_id) if row is not None else None
    if row is None or patient is None or patient.project_id != access.project_id:
        raise NotFound(f"No curation edit {value_id} in this project")
    target = Target(patient.label, row.series_label, row.file_id)
    return curate(
        session,
        user,
        project,
        data_root,
        [target],
        row.keyword,
        None if row.cleared else row.value,
    )[0]


def history(
    session: Session, user: Principal, project: str, patient_label: str
) -> list[CuratedValue]:
    """Every edit of one patient's fields, newest first (bounded)."""
    access = require_project(session, user, project, Role.DATA_MANAGER)
    patient = _patient(session, access.project_id, patient_label)
    rows = session.scalars(
        select(CuratedHeaderValue)
        .where(CuratedHeaderValue.patient_id == patient.id)
        .order_by(CuratedHeaderValue.id.desc())
        .limit(HISTORY_CAP)
    )
    return [_view(session, row, patient.label) for row in rows]


def _view(session: Session, row: CuratedHeaderValue, label: str | None = None) -> CuratedValue:
    if label is None:
        patient = session.get(Patient, row.patient_id)
        label = patient.label if patient else "?"
    user = session.get(User, row.created_by_id)
    path = None
    if row.file_id is not None:
        path = session.scalar(select(FileRegistry.path).where(FileRegistry.id == row.file_id))
    scope = "file" if row.file_id is not None else "series" if row.series_label else "patient"
    return CuratedValue(
        row.id,
        label,
        scope,
        row.series_label,
        path,
        f"({row.tag})",
        row.keyword,
        row.old_value,
        None if row.cleared else row.value,
        user.email if user else "?",
        as_utc(row.created_at),
        row.superseded_at is None,
    )


def rules_for(session: Session, patient_ids: list[int]) -> CurationRules:
    """The curated values in force for these patients (none cleared), for an export."""
    rules = CurationRules()
    if not patient_ids:
        return rules
    rows: list[CuratedHeaderValue] = []
    for start in range(0, len(patient_ids), 1000):  # bounded IN lists
        rows.extend(
            session.scalars(
                select(CuratedHeaderValue)
                .where(
                    CuratedHeaderValue.patient_id.in_(patient_ids[start : start + 1000]),
                    CuratedHeaderValue.superseded_at.is_(None),
                )
                .order_by(CuratedHeaderValue.id)
            )
        )
    for row in rows:  # in id order: a later duplicate (concurrent edits) wins
        tag = _tag_int(row.tag)
        if row.file_id is not None:
            bucket = rules.by_file.setdefault(row.file_id, {})
        elif row.series_label is not None:
            bucket = rules.by_series.setdefault((row.patient_id, row.series_label), {})
        else:
            bucket = rules.by_patient.setdefault(row.patient_id, {})
        if row.cleared:
            bucket.pop(tag, None)
        else:
            bucket[tag] = (row.keyword, row.value)
    return rules


def parse_csv(text: str) -> list[schemas.CurationRow]:
    """The rows of a curation CSV (``patient,series,field,value``, a header line first).

    Raises InvalidInput naming every line that does not fit, so that nothing is applied
    from a file with a mistake in it.
    """
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff"), newline=""))
    header = [h.strip().lower() for h in next(reader, [])]
    if tuple(header) != schemas.CURATION_CSV_COLUMNS:
        raise InvalidInput(
            f"The first line must be the header {','.join(schemas.CURATION_CSV_COLUMNS)} "
            f"(found {','.join(header)[:80] or 'nothing'})"
        )
    rows: list[schemas.CurationRow] = []
    wrong: list[str] = []
    for number, cells in enumerate(reader, start=2):
        if not any(c.strip() for c in cells):
            continue  # a blank line
        if len(cells) != len(schemas.CURATION_CSV_COLUMNS):
            wrong.append(f"line {number}: {len(cells)} cells, expected 4")
            continue
        patient, series, field_name, value = cells
        if not patient.strip() or not field_name.strip():
            wrong.append(f"line {number}: the patient and the field are required")
            continue
        if any(not c.isprintable() for c in (patient, series, field_name, value)):
            wrong.append(f"line {number}: holds a control character")
            continue
        rows.append(
            schemas.CurationRow(number, patient.strip(), series.strip(), field_name.strip(), value)
        )
        if len(rows) > schemas.MAX_CURATION_ROWS:
            raise InvalidInput(f"More than {schemas.MAX_CURATION_ROWS:,} rows: split the file")
    if wrong:
        raise InvalidInput("Nothing was applied; fix these lines: " + "; ".join(wrong[:20]))
    if not rows:
        raise InvalidInput("The file has a header but no rows: nothing to apply")
    return rows
