"""The curated values in force for some patients, resolved per file at export time (pure data:
the database half of curation is in ``exporter.records.curation``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

NO_SERIES = "(no series)"


@dataclass(frozen=True)
class CurationRules:
    """The curated values in force for some patients, resolved per file at export time."""

    by_file: dict[int, dict[int, tuple[str, str]]] = field(default_factory=dict)
    by_series: dict[tuple[int, str], dict[int, tuple[str, str]]] = field(default_factory=dict)
    by_patient: dict[int, dict[int, tuple[str, str]]] = field(default_factory=dict)

    def for_file(
        self, file_id: int, patient_id: int, series: str | None
    ) -> dict[int, tuple[str, str]]:
        """{tag: (keyword, value)} for one file: patient, then series (by
        :func:`series_key`), then file values."""
        merged = dict(self.by_patient.get(patient_id, {}))
        if series is not None:
            merged.update(self.by_series.get((patient_id, series), {}))
        merged.update(self.by_file.get(file_id, {}))
        return merged

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe copy (an export freezes the values in force when it starts)."""

        def fields(values: dict[int, tuple[str, str]]) -> dict[str, list[str]]:
            return {str(tag): [kw, value] for tag, (kw, value) in values.items()}

        return {
            "file": {str(fid): fields(v) for fid, v in self.by_file.items()},
            "series": [[pid, key, fields(v)] for (pid, key), v in self.by_series.items()],
            "patient": {str(pid): fields(v) for pid, v in self.by_patient.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CurationRules:
        def fields(values: dict[str, list[str]]) -> dict[int, tuple[str, str]]:
            return {int(tag): (kw, value) for tag, (kw, value) in values.items()}

        return cls(
            {int(fid): fields(v) for fid, v in data.get("file", {}).items()},
            {(int(pid), key): fields(v) for pid, key, v in data.get("series", [])},
            {int(pid): fields(v) for pid, v in data.get("patient", {}).items()},
        )

    def __bool__(self) -> bool:
        buckets = (self.by_file, self.by_series, self.by_patient)
        return any(values for bucket in buckets for values in bucket.values())


def series_key(modality: str, kind: str, label: str | None) -> str:
    """How curation names a series: ``cbct/raw/series_001`` (modality, kind, series label),
    so that same-named series of another modality or kind stay apart. DICOM files outside
    any series get ``cbct/raw/(no series)``: they are curated one by one or per patient."""
    return f"{modality}/{kind}/{label if label is not None else NO_SERIES}"
