"""What an export would change in DICOM headers, shown before it is submitted.

One file per selected series goes through the same rewrite the export uses (curated values,
pseudonym, de-identification profile), from its stored header, without writing anything.
Stable pseudonyms, date shifts and UID replacements are the project's, as the export will
write them; patients never exported before show a provisional ``new_patient_N``, and a
*fresh pseudonyms* export draws its values again when it runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from exporter import layout, pseudonyms
from exporter.accounts import Principal
from exporter.archive import ExportOptions, export_transform
from exporter.curation import rules_for
from exporter.layout import plan_files
from exporter.models import Patient
from exporter.registry import FileEntry, Selection, select_files
from exporter.sourceio import open_source

MAX_SERIES = 20
HEAD_BYTES = 1024 * 1024


@dataclass(frozen=True)
class PreviewRow:
    patient: str  # the patient's label (the researcher chose it)
    series: str
    file: str  # the entry name it would get
    tag: str
    keyword: str
    old_value: str | None
    new_value: str | None
    reason: str
    action: str


@dataclass(frozen=True)
class Preview:
    rows: list[PreviewRow]
    series_total: int
    series_shown: int
    other_files: int  # non-DICOM files whose metadata would be stripped (de-identified only)


def _samples(files: list[FileEntry]) -> tuple[list[FileEntry], int]:
    """The first DICOM file of each (patient, modality, series)."""
    seen: dict[tuple[int, str, str], FileEntry] = {}
    for f in files:
        if f.media_type == "application/dicom":
            seen.setdefault((f.patient_id, f.modality, f.series_label or f.path), f)
    return list(seen.values()), len(seen)


def _names(session: Session, ids: dict[str, int], options: ExportOptions) -> dict[str, str] | None:
    """The folders the preview shows: stable pseudonyms where patients have them, a
    provisional ``new_patient_N`` for the others (assigned when the export runs)."""
    if not options.pseudonyms:
        return None
    if options.fresh_pseudonyms:
        return layout.pseudonyms(ids)
    stable = pseudonyms.stable_of(session, list(ids.values()))
    new = (label for label in sorted(ids) if ids[label] not in stable)
    names = {label: f"new_patient_{i}" for i, label in enumerate(new, start=1)}
    return {label: stable.get(pid) or names[label] for label, pid in ids.items()}


def preview(
    session: Session,
    user: Principal,
    project: str,
    selection: Selection,
    options: ExportOptions,
    data_root: Path,
) -> Preview:
    """The header changes for one file per selected series (at most ``MAX_SERIES``)."""
    files = select_files(session, user, project, selection)
    samples, total = _samples(files)
    shown = samples[:MAX_SERIES]
    other = 0
    if options.deidentify:  # every level but identified scrubs other files
        from exporter.scrub import scrubber_for

        other = sum(
            1 for f in files if f.media_type != "application/dicom" and scrubber_for(f.path)
        )
    ids = {f.patient_label: f.patient_id for f in shown}
    names = _names(session, ids, options)
    planned = plan_files(shown, names)
    rules = rules_for(session, sorted(ids.values()))
    uid_key, shifts = None, {}
    if options.deidentify:
        project_id = session.scalar(select(Patient.project_id).where(Patient.id.in_(ids.values())))
        uid_key, by_id = pseudonyms.keys(
            session, int(project_id or 0), sorted(ids.values()), options.fresh_pseudonyms
        )
        folder = {p.source.patient_id: p.patient_dir for p in planned}
        shifts = {folder[pid]: days for pid, days in by_id.items() if options.shift_dates}
    transform = export_transform(
        options, sorted({p.patient_dir for p in planned}), rules, uid_key, shifts
    )
    root = data_root.resolve()
    rows: list[PreviewRow] = []
    for item in planned:
        with open_source(root, item.source.path) as reader:
            _, _, _, changes = transform.rewrite(item, reader.read(HEAD_BYTES), reader)
        source = item.source
        rows.extend(
            PreviewRow(
                source.patient_label,
                source.series_label or "",
                c.path,
                c.tag,
                c.keyword,
                c.old_value,
                c.new_value,
                c.reason,
                c.action,
            )
            for c in changes
        )
    return Preview(rows, total, len(shown), other)
