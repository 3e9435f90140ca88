"""What an export would change in DICOM headers, shown before it is submitted.

One file per selected series goes through the same rewrite the export uses (curated values,
pseudonym, de-identification profile), from its stored header, without writing anything.
Pseudonyms and date shifts are drawn again when the export runs: the preview shows their
kind, not their final values.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from exporter.accounts import Principal
from exporter.archive import ExportOptions, export_transform
from exporter.curation import rules_for
from exporter.layout import plan_files
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
    if options.deidentify:
        from exporter.scrub import scrubber_for

        other = sum(
            1 for f in files if f.media_type != "application/dicom" and scrubber_for(f.path)
        )
    planned = plan_files(shown, options.pseudonyms, generic_names=options.deidentify)
    rules = rules_for(session, sorted({f.patient_id for f in shown}))
    transform = export_transform(options, sorted({p.patient_dir for p in planned}), rules)
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
