"""Value types every layer shares: what a user asks for (Selection, ExportOptions), what the
registry answers (Estimate, FileEntry), privacy levels and a project's policy, curation views.

Plain frozen dataclasses and enums: no database, no files, no DICOM. Pages, the API, the CLI,
the jobs and the archive builder pass these between them.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import date, datetime
from enum import StrEnum
from typing import Any

from exporter.errors import (
    InvalidOption,
    InvalidSelection,
    LimitExceeded,
    NotEnoughSpace,
    PortalError,
)

# What a ZIP entry's data arrives as: bytes, or views into the export's read buffers.
Chunk = bytes | memoryview

TAG_MODES = ("any", "all")


STUDY_TEXT_FIELDS = {
    # filter name: (DICOM keyword in the registry's header subset, how it matches)
    "series_description": ("SeriesDescription", "contains"),
    "body_part": ("BodyPartExamined", "is"),
    "manufacturer": ("Manufacturer", "contains"),
    "model": ("ManufacturerModelName", "contains"),
}
MAX_STUDY_TEXT = 64  # the longest of these DICOM values (LO) has 64 characters
_ISO_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


@dataclass(frozen=True)
class StudyFilter:
    """What must be in a file's study for it to be selected: its acquisition date within
    ``date_from``..``date_to`` (either end open), and, for DICOM files, the registry's
    header values (series description, manufacturer and model contain the text, body part
    is it; any case). A file without what a filter asks for is left out."""

    date_from: date | None = None
    date_to: date | None = None
    series_description: str = ""
    body_part: str = ""
    manufacturer: str = ""
    model: str = ""

    def __bool__(self) -> bool:
        return self != StudyFilter()

    def texts(self) -> dict[str, str]:
        """The text filters that are set, by filter name."""
        return {k: getattr(self, k) for k in STUDY_TEXT_FIELDS if getattr(self, k)}

    def as_dict(self) -> dict[str, str]:
        out = {
            k: v.isoformat()
            for k, v in (("date_from", self.date_from), ("date_to", self.date_to))
            if v
        }
        return {**out, **self.texts()}

    @classmethod
    def parse(cls, data: dict[str, Any] | None) -> StudyFilter:
        """A filter from transport values (ISO dates, texts); InvalidSelection names the
        field that does not fit and what would."""
        data = dict(data or {})
        unknown = sorted(set(data) - {"date_from", "date_to", *STUDY_TEXT_FIELDS})
        if unknown:
            raise InvalidSelection(
                f"Study filter {unknown[0]!r} is not known: use date_from, date_to, "
                + ", ".join(STUDY_TEXT_FIELDS)
            )
        dates: dict[str, date | None] = {}
        for key in ("date_from", "date_to"):
            value = data.get(key)
            if value is None or value == "":
                dates[key] = None
            elif isinstance(value, date):
                dates[key] = value
            else:
                text = value.strip() if isinstance(value, str) else ""
                try:
                    if not _ISO_DAY.fullmatch(text):
                        raise ValueError(text)
                    dates[key] = date.fromisoformat(text)
                except ValueError:
                    raise InvalidSelection(
                        f"Study filter {key}: {str(value)[:40]!r} is not a date: write YYYY-MM-DD"
                    ) from None
        if dates["date_from"] and dates["date_to"] and dates["date_from"] > dates["date_to"]:
            raise InvalidSelection("Study filter: date_from is after date_to")
        texts: dict[str, str] = {}
        for key in STUDY_TEXT_FIELDS:
            value = data.get(key)
            if value is None:
                value = ""
            if not isinstance(value, str):
                raise InvalidSelection(f"Study filter {key} must be text")
            value = value.strip()
            if len(value) > MAX_STUDY_TEXT or not value.isprintable():
                raise InvalidSelection(
                    f"Study filter {key}: at most {MAX_STUDY_TEXT} printable characters"
                )
            texts[key] = value
        return cls(dates["date_from"], dates["date_to"], **texts)


@dataclass(frozen=True)
class Selection:
    """What a researcher asked for. ``folders=("",)`` selects the whole project."""

    folders: tuple[str, ...] = ()
    patients: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    tag_mode: str = "any"
    modalities: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ("raw", "processed")
    not_exported: bool = False  # only patients no completed export has carried yet
    # Only patients not yet released to this destination project (its slug).
    not_released_to: str = ""
    study: StudyFilter = field(default_factory=StudyFilter)

    def as_dict(self) -> dict[str, Any]:
        study = {"study": self.study.as_dict()} if self.study else {}
        return {
            "folders": list(self.folders),
            "patients": list(self.patients),
            "tags": list(self.tags),
            "tag_mode": self.tag_mode,
            "modalities": list(self.modalities),
            "kinds": list(self.kinds),
            "not_exported": self.not_exported,
            "not_released_to": self.not_released_to,
            **study,
        }

    @classmethod
    def from_dict(cls, c: dict[str, Any]) -> Selection:
        """The selection a record stored with :meth:`as_dict`."""
        return parse_selection(
            c.get("folders"),
            c.get("patients"),
            c.get("tags"),
            c.get("tag_mode", "any"),
            c.get("modalities"),
            c.get("kinds"),
            bool(c.get("not_exported")),
            str(c.get("not_released_to") or ""),
            study=c.get("study"),
        )


@dataclass(frozen=True)
class ModalityEstimate:
    key: str
    label: str
    selected: bool
    patients: int
    files: int
    bytes: int


@dataclass(frozen=True)
class Estimate:
    """Counts for a selection; totals cover the selected modalities and kinds only."""

    project: str
    patients_selected: int
    patient_count: int
    file_count: int
    total_bytes: int
    by_modality: list[ModalityEstimate] = field(default_factory=list)
    # What was estimated, and when (time.monotonic()): the registry fills them in. Not part of
    # the figures: two estimates of the same selection are equal.
    selection: Selection | None = field(default=None, compare=False)
    made_at: float = field(default=0.0, compare=False)

    @property
    def is_empty(self) -> bool:
        return self.file_count == 0

    def stands_for(self, project: str, selection: Selection, max_age: float) -> bool:
        """Whether these figures are those of ``selection`` in ``project``, made at most
        ``max_age`` seconds ago: the same selection, but for modalities that have no files
        in it (they change no figure)."""
        mine = self.selection
        if mine is None or self.project != project:
            return False
        if time.monotonic() - self.made_at > max_age:
            return False
        if replace(mine, modalities=()) != replace(selection, modalities=()):
            return False
        listed = {m.key for m in self.by_modality}
        return set(selection.modalities) == set(mine.modalities) & listed


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One file to export, as plain data."""

    id: int
    patient_id: int
    patient_label: str
    modality: str
    kind: str
    subtype: str | None
    path: str
    size: int
    sha256: str
    media_type: str
    series_label: str | None
    mtime_ns: int


def parse_selection(
    folders: list[str] | None = None,
    patients: list[str] | None = None,
    tags: list[str] | None = None,
    tag_mode: str = "any",
    modalities: list[str] | None = None,
    kinds: list[str] | None = None,
    not_exported: bool = False,
    not_released_to: str = "",
    study: StudyFilter | dict[str, Any] | None = None,
) -> Selection:
    """A Selection from transport-level lists, with duplicates and blanks removed."""

    def clean(values: list[str] | None) -> tuple[str, ...]:
        return tuple(dict.fromkeys(v.strip() for v in values or [] if v.strip()))

    if folders and any(f.strip() in ("", "/") for f in folders):
        folder_t: tuple[str, ...] = ("",)
    else:
        folder_t = clean(folders)
    if tag_mode not in TAG_MODES:
        raise InvalidSelection(f"Tag mode {tag_mode!r} is not known: use 'any' or 'all'")
    return Selection(
        folders=folder_t,
        patients=clean(patients),
        tags=clean(tags),
        tag_mode=tag_mode,
        modalities=clean(modalities),
        kinds=clean(kinds) or ("raw", "processed"),
        not_exported=not_exported,
        not_released_to=not_released_to.strip(),
        study=study if isinstance(study, StudyFilter) else StudyFilter.parse(study),
    )


@dataclass(frozen=True, order=True)
class PrivateTag:
    """One private attribute a data manager reviewed and keeps: its group, the private
    creator that reserves its block, and its element within the block (``0x10`` in
    ``(0009,xx10)``). Written ``0009,DEMO VENDOR,10``."""

    group: int
    creator: str
    element: int

    def __post_init__(self) -> None:
        if not (self.group & 1 and 0x0009 <= self.group <= 0xFFFF):
            raise ValueError(f"group {self.group:04X} is not a private (odd) group")
        if not self.creator.strip() or len(self.creator) > 64:
            raise ValueError("the private creator must be 1 to 64 characters")
        if not 0 <= self.element <= 0xFF:
            raise ValueError("the element must be 00 to FF (the last two hex digits)")

    def text(self) -> str:
        return f"{self.group:04X},{self.creator},{self.element:02X}"

    @classmethod
    def parse(cls, text: str) -> PrivateTag:
        """``"0009,DEMO VENDOR,10"`` (group and element in hex); ValueError says what fits."""
        group, _, rest = text.strip().partition(",")
        creator, _, element = rest.rpartition(",")
        try:
            return cls(int(group, 16), creator.strip(), int(element, 16))
        except ValueError as exc:
            raise ValueError(
                f"{text!r} is not a private tag: write GROUP,CREATOR,ELEMENT in hex, e.g. "
                f"0009,DEMO VENDOR,10 ({exc})"
            ) from None


class PrivacyLevel(StrEnum):
    """Who may receive what, one level per export (and per release).

    - *pseudonymised*, a researcher's default: the patient's stable pseudonym in PatientID,
      PatientName and the entry names; the PS3.15 Basic profile on every other attribute,
      with only the options the project's policy allows (full dates, UIDs, device identity,
      patient characteristics, a reviewed list of private tags); other files scrubbed.
    - *de-identified*: the Basic profile with dates shifted per patient (or removed) and UIDs
      remapped, both stable per project; nothing of the project's policy is retained.
    - *identified*: stored headers plus curated values and real labels; for the project's
      data managers, or its researchers when a data manager allowed it.
    """

    PSEUDONYMISED = "pseudonymised"
    DEIDENTIFIED = "deidentified"
    IDENTIFIED = "identified"


LEVELS = tuple(level.value for level in PrivacyLevel)


# What each level means, in the words pages, CLI help and e-mails use.
NAMES = {  # a level in running text: "... · de-identified"
    PrivacyLevel.PSEUDONYMISED: "pseudonymised",
    PrivacyLevel.DEIDENTIFIED: "de-identified",
    PrivacyLevel.IDENTIFIED: "identified",
}

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
            (
                "patient characteristics (age, sex, size, weight)",
                self.retain_patient_characteristics,
            ),
        ]
        kept = [w for w, on in words if on]
        if self.kept_private:
            kept.append(f"{len(self.kept_private)} reviewed private tag(s)")
        return kept


POLICY_FLAGS = tuple(
    name for name in ProjectPolicy.__dataclass_fields__ if name not in ("kept_private",)
)


@dataclass(frozen=True)
class PolicyView:
    """A project's policy as pages, API and CLI show it."""

    project: str
    policy: ProjectPolicy
    may_change: bool
    data_managers: list[str] = field(default_factory=list)


COMPRESSION_LEVELS = {"store": None, "fast": 1, "small": 6}


@dataclass(frozen=True)
class ExportOptions:
    """How to build: privacy level, compression, missing sources, part size, and what the
    project's policy let a pseudonymised export keep (frozen when the export is created)."""

    compression: str = "fast"
    privacy: str = PrivacyLevel.PSEUDONYMISED.value
    fresh_pseudonyms: bool = False  # unlinkable to earlier exports: new pseudonyms and keys
    skip_missing: bool = False
    max_part_bytes: int | None = None
    shift_dates: bool = False  # de-identified: dates shifted per patient (else removed)
    clean_descriptors: bool = False  # descriptions kept, cleaned of identifiers
    # The project's policy, for pseudonymised exports only.
    retain_full_dates: bool = False
    retain_uids: bool = False
    retain_device_identity: bool = False
    retain_patient_characteristics: bool = False
    kept_private: tuple[str, ...] = ()  # PrivateTag texts: "0009,DEMO VENDOR,10"

    @property
    def level(self) -> PrivacyLevel:
        return PrivacyLevel(self.privacy)

    @property
    def pseudonyms(self) -> bool:
        """Pseudonyms in headers and entry names (every level but identified)."""
        return self.level is not PrivacyLevel.IDENTIFIED

    @property
    def deidentify(self) -> bool:
        """The Basic profile, scrubbed files, generic names, export-time entry times."""
        return self.level is not PrivacyLevel.IDENTIFIED

    def __post_init__(self) -> None:
        if self.privacy not in LEVELS:
            raise InvalidOption(
                f"Privacy level {self.privacy!r} is not known: use {', '.join(LEVELS)}"
            )
        level = self.level
        kept = (
            self.retain_full_dates
            or self.retain_uids
            or self.retain_device_identity
            or self.retain_patient_characteristics
            or self.kept_private
        )
        if kept and level is not PrivacyLevel.PSEUDONYMISED:
            raise InvalidOption(
                "Retained dates, UIDs, device identity, patient characteristics and private "
                "tags come from the project's policy and apply to pseudonymised exports only"
            )
        if self.shift_dates and level is not PrivacyLevel.DEIDENTIFIED:
            raise InvalidOption("Shifted dates apply to de-identified exports only")
        if level is PrivacyLevel.IDENTIFIED and (self.fresh_pseudonyms or self.clean_descriptors):
            raise InvalidOption(
                "An identified export has no pseudonyms and keeps descriptions as stored: "
                "fresh pseudonyms and cleaned descriptions apply to the other levels"
            )
        if self.compression not in COMPRESSION_LEVELS:
            raise InvalidOption(
                f"Compression {self.compression!r} is not known: use store, fast or small"
            )
        if self.max_part_bytes is not None and self.max_part_bytes < 1024 * 1024:
            raise InvalidOption("Part size must be at least 1 MiB")

    def to_json(self) -> dict[str, Any]:
        """The options as the export row and ``metadata.json`` store them."""
        data = asdict(self)
        data["kept_private"] = list(self.kept_private)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ExportOptions:
        """Options stored on an export row. A row made before privacy levels (it has
        ``pseudonyms``/``deidentify`` and no ``privacy``) maps to the nearest level."""
        if "privacy" not in data:
            return cls(
                compression=data.get("compression", "fast"),
                privacy=legacy_level(data),
                skip_missing=bool(data.get("skip_missing")),
                max_part_bytes=data.get("max_part_bytes"),
                shift_dates=bool(data.get("deidentify") and data.get("retain_dates")),
                clean_descriptors=bool(data.get("deidentify") and data.get("clean_descriptors")),
            )
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["kept_private"] = tuple(values.get("kept_private") or ())
        return cls(**values)


def legacy_level(options: dict[str, Any]) -> str:
    """The privacy level nearest to options stored before privacy levels existed."""
    if "privacy" in options:
        return str(options["privacy"])
    if not options.get("pseudonyms", True):
        return PrivacyLevel.IDENTIFIED.value
    if options.get("deidentify"):
        return PrivacyLevel.DEIDENTIFIED.value
    return PrivacyLevel.PSEUDONYMISED.value


@dataclass(frozen=True)
class CuratedValue:
    """One curation edit as pages, API and CLI show it."""

    id: int
    patient: str
    scope: str
    series_label: str | None
    file_path: str | None
    tag: str
    keyword: str
    old_value: str | None
    value: str | None  # None: the curation was cleared
    by: str
    at: datetime
    in_force: bool


@dataclass(frozen=True)
class HeaderField:
    """One top-level element of a file's header, with the curated value in force."""

    tag: str
    keyword: str
    name: str
    vr: str
    vm: str
    value: str  # as stored in the file
    curated: str | None  # the value an export writes, when a curation applies
    curated_scope: str | None
    editable: bool


@dataclass(frozen=True)
class SeriesInfo:
    label: str
    files: int
    first_path: str


def again_name(name: str, max_name: int) -> str:
    """The name of an export made again from ``name``: ``<name> again`` (once, however often
    it is made again), within ``max_name`` characters."""
    stem = re.sub(r"( again)+$", "", name)[: max_name - len(" again")]
    return f"{stem} again"


@dataclass(frozen=True)
class ExportRequest:
    """What a researcher asks for (input model: UI, API and CLI build one)."""

    selection: Selection
    name: str = ""
    notes: str = ""
    compression: str = "fast"
    part_size: int | None = None
    privacy: str = PrivacyLevel.PSEUDONYMISED.value
    fresh_pseudonyms: bool = False
    skip_missing: bool = False
    shift_dates: bool = True  # de-identified: dates shifted per patient (else removed)
    clean_descriptors: bool = False

    def options(self, policy: ProjectPolicy | None = None) -> ExportOptions:
        """The build options, with what the project's policy lets a pseudonymised export
        keep (none of it without a policy: the most protective choice)."""
        level = self.privacy
        kept = policy if policy is not None and level == PrivacyLevel.PSEUDONYMISED else None
        return ExportOptions(
            compression=self.compression,
            privacy=level,
            fresh_pseudonyms=self.fresh_pseudonyms,
            skip_missing=self.skip_missing,
            max_part_bytes=self.part_size,
            shift_dates=self.shift_dates and level == PrivacyLevel.DEIDENTIFIED,
            clean_descriptors=self.clean_descriptors,
            retain_full_dates=bool(kept and kept.retain_full_dates),
            retain_uids=bool(kept and kept.retain_uids),
            retain_device_identity=bool(kept and kept.retain_device_identity),
            retain_patient_characteristics=bool(kept and kept.retain_patient_characteristics),
            kept_private=tuple(k.text() for k in kept.kept_private) if kept else (),
        )

    def choices(self) -> dict[str, Any]:
        """The request's own options (not the selection), as the transports name them."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "selection"}


@dataclass(frozen=True)
class PartView:
    number: int
    status: str
    file: str | None
    size: int | None
    sha256: str | None


@dataclass(frozen=True)
class ExportView:
    """An export as pages, API and CLI show it (output model: no ORM object leaves)."""

    id: str
    project: str
    name: str
    notes: str
    status: str
    creator: str
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    expires_at: datetime | None
    patient_count: int
    file_count: int
    estimated_bytes: int
    archive_bytes: int | None
    archive_sha256: str | None
    files_done: int
    bytes_done: int
    current_item: str | None
    eta_seconds: float | None
    error_message: str | None
    criteria: dict[str, Any]
    options: dict[str, Any]
    parts: list[PartView] = field(default_factory=list)
    privacy: str = PrivacyLevel.PSEUDONYMISED.value
    privacy_check: str | None = None  # passed | failed | identifiers present | None (not yet)

    @property
    def progress(self) -> float:
        return min(1.0, self.bytes_done / self.estimated_bytes) if self.estimated_bytes else 0.0


@dataclass(frozen=True)
class Target:
    """What an edit applies to: a file, a series (by label), or a whole patient."""

    patient: str
    series_label: str | None = None
    file_id: int | None = None

    @property
    def scope(self) -> str:
        if self.file_id is not None:
            return "file"
        return "series" if self.series_label is not None else "patient"


def targets(
    patients: list[str], series: str | None = None, file_id: int | None = None
) -> list[Target]:
    """The targets of one edit: one file (of the one patient), or a series (by key) or the
    whole of each patient."""
    if file_id is not None:
        if len(patients) != 1:
            raise InvalidSelection(
                "A single file belongs to one patient: for several patients choose their "
                "series or the whole patient"
            )
        return [Target(patients[0], file_id=file_id)]
    return [Target(p, series) for p in patients]


@dataclass(frozen=True)
class ChangeRow:
    """One changed header field as pages, API and CLI show it: in an export's change log (per
    file, or per series when ``files`` is more than one) or in a preview (per sample file)."""

    patient: str  # the patient's label (the researcher chose it; data managers may see it)
    path: str  # the entry name, or the series folder when ``files`` is more than one
    tag: str
    keyword: str
    old_value: str | None  # None once removed with the export's files (or when absent)
    new_value: str | None
    reason: str
    action: str
    series: str = ""  # a preview's series label
    part: int = 0  # an export's part (0 in a preview)
    files: int = 1


class RefusalReason(StrEnum):
    """Why a request cannot be carried out now. The reason, never the message's wording,
    picks the error a transport answers with (and so the HTTP status)."""

    NO_MODALITY = "no_modality"
    EMPTY = "empty"
    SIZE_LIMIT = "size_limit"
    QUOTA = "quota"
    DISK = "disk"


_REFUSAL_ERRORS: dict[RefusalReason, type[PortalError]] = {
    RefusalReason.NO_MODALITY: InvalidSelection,  # 422
    RefusalReason.EMPTY: InvalidSelection,  # 422
    RefusalReason.SIZE_LIMIT: LimitExceeded,  # 413
    RefusalReason.QUOTA: LimitExceeded,  # 413
    RefusalReason.DISK: NotEnoughSpace,  # 507
}


@dataclass(frozen=True)
class Refusal:
    """A request the portal would refuse: the reason, and the message that says what to do."""

    reason: RefusalReason
    message: str

    def error(self) -> PortalError:
        """The error to raise for this refusal."""
        return _REFUSAL_ERRORS[self.reason](self.message)


CURATION_CSV_COLUMNS = ("patient", "series", "field", "value")
MAX_CURATION_ROWS = 10_000


@dataclass(frozen=True)
class CurationRow:
    """One row of a curation import: a value for one field of a patient's series (``series``
    empty: every DICOM file of the patient). ``line`` is the row's line in the file."""

    line: int
    patient: str
    series: str
    field: str
    value: str


RELEASE_LEVELS = (PrivacyLevel.PSEUDONYMISED.value, PrivacyLevel.DEIDENTIFIED.value)


@dataclass(frozen=True)
class ReleaseRequest:
    """What a data manager asks for: a source selection released into ``destination`` (a
    project they also manage), the originals optionally into ``archive``."""

    selection: Selection
    destination: str
    archive: str | None = None
    name: str = ""
    notes: str = ""
    privacy: str = PrivacyLevel.PSEUDONYMISED.value
    shift_dates: bool = True  # de-identified: dates shifted per patient (else removed)
    clean_descriptors: bool = False
    # A source file that changed on disk since registration: skip it (listed failed in the
    # log) and release the rest; else the release fails at that file.
    skip_changed: bool = False
    # With an archive: each patient whose every file now has its verified original in the
    # archive leaves the source project (its source files are deleted once the archive's
    # copies are checked again); a patient with files the release left out stays.
    move_out: bool = False

    def options(self, policy: ProjectPolicy | None = None) -> ExportOptions:
        """The rewrite's options, as an export's at the same level (the policy applies to
        pseudonymised releases only). Identified releases do not exist: a destination's
        labels are pseudonyms, and so are the names in its files."""
        if self.privacy not in RELEASE_LEVELS:
            raise InvalidOption(
                f"A release is {' or '.join(RELEASE_LEVELS)} (got {self.privacy!r}): the "
                "destination holds no direct identifier; the originals go to the archive"
            )
        as_export = ExportRequest(
            self.selection,
            compression="store",
            privacy=self.privacy,
            shift_dates=self.shift_dates,
            clean_descriptors=self.clean_descriptors,
        )
        return as_export.options(policy)


@dataclass(frozen=True)
class ReleaseView:
    """A release as pages, API and CLI show it."""

    id: str
    project: str  # the source
    destination: str
    archive: str | None
    name: str
    notes: str
    status: str
    creator: str
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    patient_count: int
    file_count: int
    estimated_bytes: int
    files_done: int
    bytes_done: int
    counts: dict[str, int]
    current_item: str | None
    error_message: str | None
    criteria: dict[str, Any]
    options: dict[str, Any]
    privacy: str

    @property
    def progress(self) -> float:
        total = self.estimated_bytes
        return min(1.0, self.bytes_done / total) if total else 0.0


@dataclass(frozen=True)
class FileVersion:
    """One version of a destination file: which release wrote it, and where it is kept."""

    version: int
    release_id: str
    release_name: str
    status: str  # created | new_version
    path: str
    stored_path: str
    sha256: str
    size: int
    created_at: datetime
