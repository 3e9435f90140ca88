"""Where each file goes inside an export: safe entry names, pseudonyms, and parts.

Entry names are built only from sanitised components. With pseudonyms (every privacy level but
identified) patient folders, series folders and file names are generated
(``patient_001/cbct/series_001/0001.dcm``, ``ios/upper.stl``, ``intraoral-photo/photo_1.jpg``,
``cbct/processed_1.nii.gz``), so no stored path, series label, file name or patient label
reaches the archive: a name chosen by whoever processed the data may say whose it is. An
identified export uses sanitised labels and file names throughout.
"""

from __future__ import annotations

import random
import re
import secrets
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from exporter.schemas import FileEntry

MAX_COMPONENT = 100
# Separators, reserved punctuation, C0/C1 controls, and bidirectional overrides (which make
# a name display differently from what it is).
_UNSAFE = re.compile(
    r'[\x00-\x1f\x7f-\x9f/\\:*?"<>|\u200e\u200f\u202a-\u202e\u2066-\u2069'
    # and what looks like a path separator: fraction, division and big slashes, set minus
    r"\u2044\u2215\u2216\u29f8\u29f9]+"
)
# Invisible characters, dropped: they make two names look alike or hide text. Unicode's
# format characters (Cf: zero-width space and joiners U+200B-U+200D, word joiner U+2060, BOM
# U+FEFF, Arabic letter mark U+061C, soft hyphen, and the bidirectional marks, embeddings,
# overrides and isolates, which reorder what is shown), line and paragraph separators, and
# the fillers and selectors that are letters or marks to Unicode but draw nothing.
_INVISIBLE_OTHER = frozenset(
    "\u034f\u115f\u1160\u17b4\u17b5\u2028\u2029\u2800\u3164\uffa0"
    + "".join(map(chr, range(0xFE00, 0xFE10)))
)


def visible(char: str) -> bool:
    """Whether ``char`` draws something (not a format, filler or selector character)."""
    return not (
        unicodedata.category(char) == "Cf"
        or char in _INVISIBLE_OTHER
        or 0xE0100 <= ord(char) <= 0xE01EF  # variation selectors supplement
    )


_RESERVED = {"CON", "PRN", "AUX", "NUL"} | {f"{p}{i}" for p in ("COM", "LPT") for i in range(1, 10)}
_EXTENSION = re.compile(r"^(\.[a-z0-9]{1,8}){1,2}$")
RAW_STEMS = {"cbct": "slice", "intraoral-photo": "photo", "facial-photo": "photo"}


def sanitize_component(text: str, fallback: str = "unnamed") -> str:
    """One safe path component: no separators or look-alikes, control or invisible
    characters, leading combining marks, ``..``, reserved names; compatibility forms folded.

    Keeps letters (any script), digits and ordinary punctuation; bounds the length while
    keeping the extension.
    """
    # NFKC: compatibility forms become what they look like (fullwidth ／ is /, COM¹ is COM1)
    cleaned = unicodedata.normalize("NFKC", text)
    if not cleaned.isascii():
        cleaned = "".join(filter(visible, cleaned))
        # a combining mark with nothing before it to combine with draws on whatever precedes
        cleaned = cleaned.lstrip("".join(c for c in set(cleaned) if unicodedata.combining(c)))
    cleaned = _UNSAFE.sub("_", cleaned).strip(" .")
    cleaned = re.sub(r"\s+", " ", cleaned)
    if not cleaned or set(cleaned) <= {"_", "."}:
        cleaned = fallback
    stem, dot, ext = cleaned.rpartition(".")
    if not dot or not stem or not re.fullmatch(r"[A-Za-z0-9]{1,10}", ext):
        stem, ext = cleaned, ""
    if stem.split(".")[0].upper() in _RESERVED:
        stem = "_" + stem
    suffix = f".{ext}" if ext else ""
    stem = stem[: MAX_COMPONENT - len(suffix)].rstrip(" .") or fallback
    return stem + suffix


def safe_extension(name: str) -> str:
    """The file's extension if it is short and plain (``.dcm``, ``.nii.gz``), else none."""
    lower = name.lower()
    ext = ".nii.gz" if lower.endswith(".nii.gz") else "." + lower.rpartition(".")[2]
    return ext if "." in lower and _EXTENSION.match(ext) else ""


def export_folder_name(created: datetime) -> str:
    """The top folder inside every archive of an export: ``export_2025-10-20_143022``."""
    return created.strftime("export_%Y-%m-%d_%H%M%S")


STABLE = "patient"  # a project's stable pseudonyms: patient_001, ...
FRESH = "subject"  # an export's own (fresh pseudonyms): subject_001, never a stable name


def pseudonym(number: int, prefix: str = STABLE) -> str:
    """``patient_001``; four digits and more once the numbers need them."""
    return f"{prefix}_{number:03d}"


def pseudonyms(
    labels: Iterable[str], seed: int | None = None, prefix: str = STABLE
) -> dict[str, str]:
    """``patient_001``, ``patient_002``, ... assigned in a random order.

    Not in label order: with sorted labels anyone who knows the cohort could rebuild the
    key. ``seed`` makes it reproducible for tests.
    """
    ordered = sorted(set(labels))
    rng = random.Random(seed) if seed is not None else secrets.SystemRandom()  # noqa: S311 (seeded: tests only)
    rng.shuffle(ordered)
    return {label: pseudonym(i, prefix) for i, label in enumerate(ordered, start=1)}


@dataclass(frozen=True)
class PlannedFile:
    """One source file and the entry name it gets (relative to the export folder)."""

    source: FileEntry
    arcname: str
    patient_dir: str


@dataclass
class PlannedPart:
    number: int
    files: list[PlannedFile] = field(default_factory=list)
    bytes: int = 0

    @property
    def patient_dirs(self) -> list[str]:
        return list(dict.fromkeys(f.patient_dir for f in self.files))


class _Names:
    """Keeps entry names unique per folder, case-insensitively (for Windows and macOS)."""

    def __init__(self) -> None:
        self.used: dict[str, set[str]] = defaultdict(set)
        # the archive's own files at the top: a patient folder may not take their names
        self.used[""] |= {"metadata.json", "sha256sums", "dicom_changes.csv", "privacy_report.json"}

    def claim(self, folder: str, name: str) -> str:
        taken = self.used[folder]
        candidate, n = name, 1
        while candidate.lower() in taken:
            n += 1
            stem, dot, ext = name.partition(".")
            candidate = f"{stem}_{n}{dot}{ext}"
        taken.add(candidate.lower())
        return f"{folder}/{candidate}" if folder else candidate


def plan_files(
    files: Sequence[FileEntry], names: Mapping[str, str] | None = None
) -> list[PlannedFile]:
    """Entry names for every file, grouped by patient in pseudonym order.

    ``names`` maps each patient label to its pseudonym; None (an identified export) keeps
    sanitised labels and file names.
    """
    by_patient: dict[str, list[FileEntry]] = defaultdict(list)
    for f in files:
        by_patient[f.patient_label].append(f)
    if names is not None and not set(by_patient) <= set(names):
        raise ValueError("every patient needs a pseudonym")
    taken = _Names()
    planned: list[PlannedFile] = []
    order = sorted(by_patient, key=lambda label: _sort_key(names[label] if names else label))
    for label in order:
        patient_dir = names[label] if names else sanitize_component(label, "patient")
        patient_dir = taken.claim("", patient_dir)
        series_dirs: dict[tuple[str, str], str] = {}
        counters: dict[str, int] = defaultdict(int)
        entries = sorted(
            by_patient[label], key=lambda e: (e.modality, e.kind, e.series_label or "", e.path)
        )
        for entry in entries:
            modality = sanitize_component(entry.modality, "modality")
            folder = f"{patient_dir}/{modality}"
            ext = safe_extension(entry.path)
            if entry.series_label:
                key = (modality, entry.series_label)
                if key not in series_dirs:
                    if names is not None:
                        n = sum(1 for k in series_dirs if k[0] == modality) + 1
                        series_dirs[key] = f"series_{n:03d}"
                    else:
                        series_dirs[key] = "/".join(
                            sanitize_component(part, "series")
                            for part in entry.series_label.split("/")
                        )
                folder = f"{folder}/{series_dirs[key]}"
            if names is not None:
                counters[folder] += 1
                if entry.series_label:
                    name = f"{counters[folder]:04d}{ext}"
                elif entry.subtype:
                    name = sanitize_component(entry.subtype) + ext
                else:
                    stem = (
                        "processed"
                        if entry.kind == "processed"
                        else RAW_STEMS.get(entry.modality, "file")
                    )
                    name = f"{stem}_{counters[folder]}{ext}"
            else:
                name = sanitize_component(entry.path.rpartition("/")[2], "file")
            planned.append(PlannedFile(entry, taken.claim(folder, name), patient_dir))
    return planned


def _sort_key(name: str) -> tuple[int, str]:
    """``patient_002`` before ``patient_010`` and ``patient_1000``."""
    stem, _, number = name.rpartition("_")
    return (int(number), stem) if stem in (STABLE, FRESH) and number.isdigit() else (0, name)


def split_parts(planned: Sequence[PlannedFile], max_part_bytes: int | None) -> list[PlannedPart]:
    """Whole patients per part, in order; a patient larger than the limit gets a part alone."""
    patient_bytes: dict[str, int] = defaultdict(int)
    for item in planned:
        patient_bytes[item.patient_dir] += item.source.size
    parts = [PlannedPart(1)]
    current_patient = None
    for item in planned:
        part = parts[-1]
        if item.patient_dir != current_patient:
            current_patient = item.patient_dir
            size = patient_bytes[current_patient]
            if max_part_bytes and part.files and part.bytes + size > max_part_bytes:
                parts.append(PlannedPart(len(parts) + 1))
                part = parts[-1]
        part.files.append(item)
        part.bytes += item.source.size
    return parts


def unsafe_reason(name: str) -> str | None:
    """Why an entry name is unsafe to extract, or None when it is safe."""
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return "absolute path"
    if ".." in name.split("/"):
        return "parent directory (..)"
    if "\\" in name:
        return "backslash"
    if re.search(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]", name):
        return "control character"
    if not name.isascii() and not all(map(visible, name)):
        return "invisible character"
    if any(len(part) > MAX_COMPONENT + 20 for part in name.split("/")):
        return "component too long"
    return None
