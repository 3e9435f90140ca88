"""What an export would change in DICOM headers, shown before it is submitted.

One file per selected series goes through the same rewrite the export uses (curated values,
pseudonym, de-identification profile), from its stored header, without writing anything.
For the project's data managers the stable pseudonyms, date shifts and UID replacements are
the project's, as the export will write them (patients never exported before show a
provisional ``new_patient_N``); others see illustrative values, since a label next to its
stable pseudonym or date shift is the re-identification key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from exporter.access.accounts import Principal
from exporter.archive.build import export_transform
from exporter.archive.layout import plan_files
from exporter.archive.sourceio import open_source
from exporter.deid.scrub import scrubber_for
from exporter.records import pseudonyms
from exporter.records.curation import rules_for
from exporter.registry.query import select_files
from exporter.schemas import ChangeRow, ExportOptions, FileEntry, Selection

MAX_SERIES = 20
HEAD_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Preview:
    rows: list[ChangeRow]
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


def _names(
    session: Session, ids: dict[str, int], options: ExportOptions, linked: bool
) -> dict[str, str] | None:
    """The folders the preview shows. ``linked`` (the project's data managers): the stable
    pseudonyms patients have, a provisional ``new_patient_N`` for the others; for anyone
    else provisional names only, since a label beside its pseudonym is the
    re-identification key."""
    if not options.pseudonyms:
        return None
    stable = pseudonyms.stable_of(session, list(ids.values()), options.privacy) if linked else {}
    if options.fresh_pseudonyms:
        stable = {}
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
    project_id: int,
    linked: bool = False,
) -> Preview:
    """The header changes for one file per selected series (at most ``MAX_SERIES``).

    ``linked`` (the project's data managers) shows the stable pseudonyms, date shifts and
    UIDs the export will write; anyone else sees the same changes with illustrative
    values (fresh names, shifts and UIDs), which link no label to the project's keys."""
    files = select_files(session, user, project, selection)
    samples, total = _samples(files)
    shown = samples[:MAX_SERIES]
    other = 0
    if options.deidentify:  # every level but identified scrubs other files
        other = sum(
            1 for f in files if f.media_type != "application/dicom" and scrubber_for(f.path)
        )
    ids = {f.patient_label: f.patient_id for f in shown}
    names = _names(session, ids, options, linked)
    planned = plan_files(shown, names)
    rules = rules_for(session, sorted(ids.values()))
    uid_key, shifts = None, {}
    if options.deidentify:
        fresh = options.fresh_pseudonyms or not linked
        uid_key, by_id = pseudonyms.keys(
            session, project_id, sorted(ids.values()), fresh, create=False, level=options.privacy
        )
        folder = {p.source.patient_id: p.patient_dir for p in planned}
        shifts = {folder[pid]: days for pid, days in by_id.items() if options.shift_dates}
    transform = export_transform(
        options, sorted({p.patient_dir for p in planned}), rules, uid_key, shifts
    )
    root = data_root.resolve()
    rows: list[ChangeRow] = []
    for item in planned:
        with open_source(root, item.source.path) as reader:
            _, _, _, changes = transform.rewrite(item, reader.read(HEAD_BYTES), reader)
        source = item.source
        rows.extend(
            ChangeRow(
                patient=source.patient_label,
                path=c.path,
                tag=c.tag,
                keyword=c.keyword,
                old_value=c.old_value,
                new_value=c.new_value,
                reason=c.reason,
                action=c.action,
                series=source.series_label or "",
            )
            for c in changes
        )
    return Preview(rows, total, len(shown), other)
