"""The residual-identifier check: before an archive is completed, search what was written for
the exported patients' known identifiers.

The known identifiers come from the registry (:class:`PatientFacts`): labels and stored
patient directories, the names, IDs, other IDs, birth dates, addresses and phone numbers its
DICOM header subsets hold, the original study dates where the export shifts or removes
dates, and the stored folder and file names below each patient. Each becomes one or more
*needles*: sequences of normalised tokens (case-folded, accents dropped, split on anything
that is not a letter or digit), so ``Family^Given``, ``family given`` and ``GIVEN FAMILY``
all match, as whole tokens only. Values too short or too common to search without false
alarms are left out and counted.

The search runs on bytes the export already holds, as each entry is written: every DICOM
header whole (every element at any depth, private ones and the file meta included), entry
names, ZIP entry times, ``metadata.json``, ``dicom_changes.csv``, and the metadata parts of
JPEG, PNG, STL, PLY, OBJ and NIfTI files (an incremental parser per format reads only those
parts, whatever the file's size). Pixel data and mesh geometry are not searched. A finding
records the file, the place and the kind of identifier, never the value.
"""

from __future__ import annotations

import io
import json
import re
import struct
import threading
import unicodedata
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import pydicom

from exporter.deid.scrub import voxel_bytes
from exporter.dicom.header import tag_text
from exporter.schemas import NOT_CHECKED

MIN_LENGTH = 4  # letters and digits of a value, below which it is not searched
MIN_DIGITS = 6  # a value of digits only (counters, instance numbers) below which it is not
CAP = 1024 * 1024  # bytes of one metadata place searched (a longer one: its start)
MAX_FINDINGS = 1000  # listed in a report (the count covers every finding)
SCHEMA_VERSION = 1

# Words that say nothing of a person: the dummy values the profile writes, generic values,
# and the structure of the imaging tree (modalities, kinds, series, file types).
COMMON = frozenset(
    w.encode()
    for w in [
        "anonymized",
        "anonymous",
        "anon",
        "unknown",
        "none",
        "null",
        "nil",
        "test",
        "demo",
        "dummy",
        "removed",
        "patient",
        "patients",
        "subject",
        "case",
        "male",
        "female",
        "other",
        "yes",
        "no",
        "head",
        "raw",
        "processed",
        "series",
        "slice",
        "slices",
        "scan",
        "scans",
        "image",
        "images",
        "volume",
        "volumes",
        "mask",
        "masks",
        "seg",
        "segmentation",
        "label",
        "labels",
        "model",
        "models",
        "mesh",
        "dicom",
        "dcm",
        "nii",
        "gz",
        "stl",
        "ply",
        "obj",
        "jpg",
        "jpeg",
        "png",
        "json",
        "txt",
        "csv",
        "file",
        "files",
        "data",
        "export",
        "upper",
        "lower",
        "left",
        "right",
        "final",
        "denoised",
        "axial",
        "sagittal",
        "coronal",
        "cbct",
        "ios",
        "intraoral",
        "photo",
        "photos",
        "panoramic",
        "cephalometric",
        "facial",
        "study",
        "studies",
        "site",
        "visit",
        "baseline",
        "followup",
        "new",
        "old",
        "copy",
        "version",
    ]
)


class Kind:
    """What a needle is (the report says the kind, never the value)."""

    LABEL = "patient label"
    NAME = "patient name"
    ID = "patient ID"
    BIRTH_DATE = "birth date"
    DATE = "original date"
    ADDRESS = "address"
    PHONE = "phone number"
    STORED_NAME = "stored file or folder name"
    SOURCE_TIME = "source file time"
    UNCHECKED = "metadata the check could not read"


# The header subset's keywords, and what each holds.
HEADER_KINDS = {
    "PatientName": Kind.NAME,
    "OtherPatientNames": Kind.NAME,
    "PatientBirthName": Kind.NAME,
    "PatientMotherBirthName": Kind.NAME,
    "PatientID": Kind.ID,
    "OtherPatientIDs": Kind.ID,
    "OtherPatientIDsSequence": Kind.ID,
    "MedicalRecordLocator": Kind.ID,
    "AccessionNumber": Kind.ID,
    "PatientAddress": Kind.ADDRESS,
    "PatientTelephoneNumbers": Kind.PHONE,
    "PatientBirthDate": Kind.BIRTH_DATE,
}
STUDY_DATES = ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate")

_TOKEN = re.compile(r"[^\W_]+")
_DATE_TIME_LENGTHS = frozenset({10, 12, 14})  # YYYYMMDDHH, ...HHMM, ...HHMMSS


def _byte_fold_table() -> bytes:
    """Latin-1 bytes folded as :func:`fold` folds them: letters to lower-case ASCII without
    accents, digits kept, every other byte a separator (a space)."""
    table = bytearray(b" " * 256)
    for i in range(256):
        char = chr(i)
        base = unicodedata.normalize("NFKD", char)[:1].lower() if i >= 128 else char.lower()
        if base.isascii() and base.isalnum():
            table[i] = ord(base)
    table[0xDF] = ord("s")  # ß
    return bytes(table)


_BYTE_FOLD = _byte_fold_table()


def fold(text: str) -> str:
    """Case-folded, accents dropped (``Müller`` -> ``muller``)."""
    if text.isascii():
        return text.lower()
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def tokens(text: str) -> list[bytes]:
    """The letters-and-digits runs of ``text``, folded: what needles are made of."""
    folded = fold(text)
    if folded.isascii():
        return folded.encode().translate(_BYTE_FOLD).split()
    return [t.encode() for t in _TOKEN.findall(folded)]


def byte_tokens(data: bytes | bytearray | memoryview, unicode: bool = False) -> list[bytes]:
    """The tokens of raw bytes read as Latin-1 (every byte a character), plus those of the
    bytes read as UTF-8 where they hold more than ASCII (names in ISO_IR 192 headers).
    ``unicode``: also keep letters beyond Latin (when a needle has them)."""
    raw = bytes(data)
    found = raw.translate(_BYTE_FOLD).split()
    if not raw.isascii():
        text = raw.decode("utf-8", "ignore")
        if not text.isascii():
            latin = unicodedata.normalize("NFKD", text).encode("ascii", "ignore")
            found += latin.translate(_BYTE_FOLD).split()
            if unicode:
                found += tokens(text)
    return found


@dataclass(frozen=True)
class Finding:
    """An identifier found: in which file, where in it, what kind. Never the value."""

    file: str
    place: str
    kind: str


@dataclass
class PatientFacts:
    """What the registry knows of one exported patient (plain data, read by the job)."""

    patient_dir: str  # the folder the patient has in the archive (pseudonym or label)
    label: str
    source_dir: str | None = None
    headers: list[dict[str, Any]] = field(default_factory=list)  # one per series
    paths: list[str] = field(default_factory=list)  # stored paths, relative to the data root
    date_shift: int | None = None  # days, where the export shifts this patient's dates


Phrase = tuple[bytes, ...]


class Needles:
    """The known identifiers of an export's patients, as phrases of tokens by first token.

    Most needles apply to every file (a name of one patient in another's file is a leak
    too); dates apply to their own patient's files only, since a shifted date of one
    patient may well equal a real date of another.
    """

    def __init__(self) -> None:
        self.everywhere: dict[bytes, list[tuple[Phrase, str]]] = defaultdict(list)
        self.by_patient: dict[str, dict[bytes, list[tuple[Phrase, str]]]] = defaultdict(
            lambda: defaultdict(list)
        )
        self.values: Counter[str] = Counter()  # searched, by kind
        self.left_out: Counter[str] = Counter()  # not searched, by reason
        self._seen: set[tuple[str, Phrase]] = set()
        self.unicode = False  # a needle has letters beyond Latin: search raw bytes for them
        self.pseudonyms: set[Phrase] = set()

    # --- building -------------------------------------------------------------------------

    def _put(self, phrase: Phrase, kind: str, scope: str | None) -> bool:
        key = (scope or "", phrase)
        if not phrase or key in self._seen:
            return False
        self._seen.add(key)
        self.unicode = self.unicode or not all(t.isascii() for t in phrase)
        target = self.everywhere if scope is None else self.by_patient[scope]
        target[phrase[0]].append((phrase, kind))
        return True

    def _searchable(self, phrase: Phrase) -> str | None:
        """Why ``phrase`` cannot be searched without false alarms, or None."""
        letters = b"".join(phrase).decode()
        if phrase in self.pseudonyms:
            return "same as a pseudonym"
        if len(letters) < MIN_LENGTH:
            return "too short"
        if letters.isdigit() and len(letters) < MIN_DIGITS:
            return "too short"
        if all(t in COMMON or t.isdigit() for t in phrase) and not letters.isdigit():
            return "too common"
        return None

    def add(self, value: str, kind: str, scope: str | None = None, quiet: bool = False) -> None:
        """One identifying value: its tokens as a phrase, and the same squashed into one
        token (``85.03.12-123`` is found as ``85 03 12 123`` and as ``850312123``, not as
        ``8503-12123``). ``quiet``: a value left out is not counted (stored names that are
        only structure, such as ``series_001``)."""
        self.add_phrase(tuple(tokens(value)), kind, scope, quiet)

    def add_phrase(
        self, phrase: Phrase, kind: str, scope: str | None = None, quiet: bool = False
    ) -> None:
        if not phrase:
            return
        reason = self._searchable(phrase)
        if reason is not None:
            if not quiet:
                self.left_out[reason] += 1
            return
        added = self._put(phrase, kind, scope)
        if len(phrase) > 1:
            self._put((b"".join(phrase),), kind, scope)
        if added:
            self.values[kind] += 1

    def add_name(self, value: str, kind: str = Kind.NAME) -> None:
        """A person name (``Family^Given^Middle^Prefix^Suffix``, groups split by ``=``):
        the whole name in both orders, and each family name part alone. Given names alone
        are too common to search (``Jan``, ``Anna``)."""
        for group in value.split("="):
            parts = [tuple(tokens(p)) for p in group.split("^")]
            family, given = ([*parts, (), ()])[:2]
            middle = parts[2] if len(parts) > 2 else ()
            if not family and not given:
                continue
            self.add_phrase(family + given + middle, kind)
            if family and given:
                self.add_phrase(given + middle + family, kind)
            if len(family) > 1 or given:
                for token in family:
                    self.add_phrase((token,), kind)

    def add_address(self, value: str) -> None:
        """An address whole, and each of its comma-separated parts of two words or more
        (``Oeverlaan 120``, ``9000 Gent``; a town alone is too common)."""
        self.add(value, Kind.ADDRESS)
        for part in re.split(r"[,;^\n]", value):
            if part.strip() != value.strip() and len(tokens(part)) > 1:
                self.add(part, Kind.ADDRESS)

    def add_date(self, value: str, kind: str, scope: str) -> None:
        """A DICOM date (``YYYYMMDD``) in the forms files write it: ``19850312``,
        ``1985-03-12`` and ``1985:03:12`` (EXIF), ``12.03.1985`` and ``03/12/1985``."""
        text = value.strip()
        try:
            day = date(int(text[:4]), int(text[4:6]), int(text[6:8]))
        except ValueError:
            return
        if len(text) != 8 or not text.isdigit():
            return
        y, m, d = (f"{day:{f}}".encode() for f in ("%Y", "%m", "%d"))
        added = False
        for phrase in ((y + m + d,), (y, m, d), (d, m, y), (m, d, y)):
            added = self._put(phrase, kind, scope) or added
        if added:
            self.values[kind] += 1

    # --- searching ------------------------------------------------------------------------

    def find(self, words: list[bytes], scope: str | None) -> set[str]:
        """The kinds of needle found in ``words`` (tokens) of a file of patient ``scope``.
        A date-time token (``YYYYMMDDHHMM[SS]``) also counts as the date it starts with."""
        found: set[str] = set()
        local = self.by_patient.get(scope) if scope is not None else None
        present = set(words)
        for index in (self.everywhere, local):
            if not index:
                continue
            hits = index.keys() & present
            if index is local:
                stamps = {w[:8] for w in present if len(w) in _DATE_TIME_LENGTHS}
                for stamp in index.keys() & stamps:
                    found.update(kind for phrase, kind in index[stamp] if len(phrase) == 1)
            if not hits:
                continue
            long = set()
            for word in hits:
                for phrase, kind in index[word]:
                    if len(phrase) == 1:
                        found.add(kind)
                    else:
                        long.add(word)
            if not long:
                continue
            for word in long:
                i = -1
                while True:
                    try:
                        i = words.index(word, i + 1)
                    except ValueError:
                        break
                    for phrase, kind in index[word]:
                        if len(phrase) > 1 and tuple(words[i : i + len(phrase)]) == phrase:
                            found.add(kind)
        return found

    def report_counts(self) -> dict[str, Any]:
        return {
            "values": dict(sorted(self.values.items())),
            "left_out": dict(sorted(self.left_out.items())),
        }


def known_identifiers(
    patients: Iterable[PatientFacts],
    *,
    search_study_dates: bool,
    pseudonyms: Iterable[str] = (),
) -> Needles:
    """The needles of an export's patients.

    ``search_study_dates``: the export removes or shifts study dates, so the original ones
    must not appear (a pseudonymised export that keeps full dates does not search them).
    A patient's original date that the shift moves onto another of its dates cannot be told
    apart from the shifted one: it is left out and counted.
    """
    needles = Needles()
    needles.pseudonyms = {tuple(tokens(p)) for p in pseudonyms}
    facts = list(patients)
    for p in facts:
        needles.add(p.label, Kind.LABEL)
        if p.source_dir:
            needles.add(p.source_dir.rstrip("/").rpartition("/")[2], Kind.LABEL)
        dates: set[str] = set()
        for header in p.headers:
            for keyword, kind in HEADER_KINDS.items():
                for value in _values(header.get(keyword)):
                    if kind == Kind.NAME:
                        needles.add_name(value)
                    elif kind == Kind.ADDRESS:
                        needles.add_address(value)
                    elif kind == Kind.BIRTH_DATE:
                        needles.add_date(value, kind, p.patient_dir)
                        dates.add(value.strip())
                    else:
                        needles.add(value, kind)
            if search_study_dates:
                dates.update(v.strip() for k in STUDY_DATES for v in _values(header.get(k)))
        if search_study_dates:
            ambiguous = _shifted_onto(dates, p.date_shift)
            if ambiguous:
                needles.left_out["ambiguous after the date shift"] += len(ambiguous)
            for value in sorted(dates - ambiguous):
                needles.add_date(value, Kind.DATE, p.patient_dir)
        names = {c for path in p.paths for c in _below(path, p.source_dir)}
        for component in sorted(names):
            phrase = tuple(tokens(component))
            # Numbers only (counters, dates, UIDs as file names) name no one; the patient's
            # real dates come from its headers, searched in its own files.
            if not all(t.isdigit() for t in phrase):
                needles.add_phrase(phrase, Kind.STORED_NAME, quiet=True)
    return needles


def part_needles(
    facts: Iterable[PatientFacts],
    files: Iterable[tuple[str, str]],
    *,
    search_study_dates: bool,
) -> Needles:
    """The needles of one part: every patient's facts, with the stored paths of the part's
    own files (``(patient folder, stored path)`` pairs) as their stored names."""
    paths: dict[str, list[str]] = defaultdict(list)
    for folder, path in files:
        paths[folder].append(path)
    known = [
        PatientFacts(
            p.patient_dir,
            p.label,
            p.source_dir,
            p.headers,
            paths.get(p.patient_dir, []),
            p.date_shift,
        )
        for p in facts
    ]
    return known_identifiers(
        known, search_study_dates=search_study_dates, pseudonyms=[p.patient_dir for p in known]
    )


def identifying_texts(p: PatientFacts) -> list[str]:
    """A patient's identifying values as text (the label, the directory, the header's
    names, IDs and addresses), for cleaning descriptions: a kept description loses them."""
    found = [p.label]
    if p.source_dir:
        found.append(p.source_dir.rstrip("/").rpartition("/")[2])
    for header in p.headers:
        for keyword, kind in HEADER_KINDS.items():
            if kind not in (Kind.BIRTH_DATE,):
                found.extend(_values(header.get(keyword)))
    return list(dict.fromkeys(found))


def merge_reports(reports: list[dict[str, Any]]) -> dict[str, Any] | None:
    """One report for an export of several parts: counts summed, findings together."""
    if not reports:
        return None
    if len(reports) == 1:
        return reports[0]
    merged = dict(reports[0])
    results = [r.get("result") for r in reports]
    merged["result"] = next(
        (x for x in ("failed", "identifiers present") if x in results), results[0]
    )
    # Every part searched for every patient's values (counted once), in its own places.
    checked: dict[str, Counter[str]] = {
        "values": Counter(),
        "left_out": Counter(),
        "places": Counter(),
    }
    for r in reports:
        for key in ("values", "left_out"):
            checked[key] |= Counter(r.get("checked", {}).get(key, {}))
        checked["places"].update(r.get("checked", {}).get("places", {}))
    merged["checked"] = {
        **reports[0].get("checked", {}),
        **{k: dict(sorted(v.items())) for k, v in checked.items()},
        "bytes_searched": sum(r.get("checked", {}).get("bytes_searched", 0) for r in reports),
    }
    merged["finding_count"] = sum(r.get("finding_count", 0) for r in reports)
    merged["findings"] = [f for r in reports for f in r.get("findings", [])][:MAX_FINDINGS]
    merged["parts"] = len(reports)
    return merged


def _values(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list):
        return [t for v in value for t in _values(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _values(v)]
    return [str(value)]


def _shifted_onto(dates: set[str], shift: int | None) -> set[str]:
    """Dates that another date of the same patient becomes under ``shift``."""
    if not shift:
        return set()
    parsed = {}
    for value in dates:
        try:
            parsed[value] = date(int(value[:4]), int(value[4:6]), int(value[6:8]))
        except ValueError:
            continue
    moved = {d.toordinal() + shift for d in parsed.values()}
    return {v for v, d in parsed.items() if d.toordinal() in moved}


def _below(path: str, source_dir: str | None) -> list[str]:
    """The stored folder and file names below the patient's directory (stems only)."""
    rel = path
    if source_dir and path.startswith(source_dir.rstrip("/") + "/"):
        rel = path[len(source_dir.rstrip("/")) + 1 :]
    parts = rel.split("/")
    if parts:
        name = parts[-1]
        parts[-1] = (
            name[: -len(".nii.gz")]
            if name.lower().endswith(".nii.gz")
            else (name.rpartition(".")[0] or name)
        )
    return parts


# --- the check ---------------------------------------------------------------------------


class ResidualCheck:
    """Searches one part's written bytes for the needles; thread-safe (files are prepared
    on several threads).

    ``strict`` (every level but identified): a finding will fail the export, so DICOM
    findings are traced to their elements and entry times are checked against the sources'.
    An identified export is searched too, and its report lists what it carries.
    """

    def __init__(
        self, needles: Needles, source_times: Iterable[int] = (), strict: bool = True
    ) -> None:
        self.needles = needles
        self.source_times = frozenset(source_times)  # whole seconds
        self.strict = strict
        self.findings: list[Finding] = []
        self.count = 0
        self.places: Counter[str] = Counter()
        self.searched_bytes = 0
        self._lock = threading.Lock()
        # Short texts repeat (the change log's new values, metadata.json's fields): each is
        # searched once per patient scope.
        self._seen: dict[tuple[str | None, str], set[str]] = {}

    def _add(self, file: str, place: str, kinds: Iterable[str]) -> None:
        with self._lock:
            for kind in sorted(kinds):
                self.count += 1
                if len(self.findings) < MAX_FINDINGS:
                    self.findings.append(Finding(file, place, kind))

    def _search(
        self,
        data: bytes | bytearray | memoryview | str,
        scope: str | None,
        counted: str,
        cap: int = CAP,
    ) -> set[str]:
        if isinstance(data, str) and len(data) <= 256:
            key = (scope, data)
            found = self._seen.get(key)
            if found is None:
                found = _find(self.needles, data, scope, cap)
                if len(self._seen) < 100_000:
                    self._seen[key] = found
        else:
            found = _find(self.needles, data, scope, cap)
        with self._lock:
            self.places[counted] += 1
            self.searched_bytes += min(len(data), cap)
        return found

    def search(
        self,
        file: str,
        place: str | Callable[[], str],
        data: bytes | bytearray | memoryview | str,
        scope: str | None,
        counted: str | None = None,
    ) -> None:
        """Search one place (text, or raw bytes read as text); record what is found. A place
        may be given as a function, called only for a finding."""
        found = self._search(data, scope, counted or (place if isinstance(place, str) else ""))
        if found:
            self._add(file, place if isinstance(place, str) else place(), found)

    def entry_name(self, name: str, scope: str | None) -> None:
        self.search(name, "entry name", name, scope, "entry names")

    def entry_time(self, name: str, mtime: float) -> None:
        """An entry's time must not be one of the sources' (it would give away when the
        data were acquired)."""
        with self._lock:
            self.places["entry times"] += 1
        if self.strict and int(mtime) in self.source_times:
            self._add(name, "ZIP entry time", [Kind.SOURCE_TIME])

    def dicom_header(self, file: str, header: bytes, scope: str | None) -> None:
        """A whole DICOM header (preamble, file meta, every element at any depth); a
        finding is traced to the elements that hold it."""
        found = self._search(header, scope, "DICOM headers", cap=len(header))
        if not found:
            return
        if not self.strict:
            self._add(file, "DICOM header", found)
            return
        for place, kinds in _locate_dicom(header, self.needles, scope):
            self._add(file, place, kinds)

    def document(self, file: str, doc: Any, text: str | None = None) -> None:
        """Every key and string of a JSON document (``metadata.json``, whose ``text`` the
        caller may have): searched whole, and only when something is found, key by key to
        say where."""
        text = json.dumps(doc, ensure_ascii=False) if text is None else text
        with self._lock:
            self.places[file] += 1
            self.searched_bytes += len(text)
        # In windows that overlap by more than any phrase: a part's document lists every
        # file, and tokenising it whole took tens of MiB.
        step, overlap = 256 * 1024, 4096
        for start in range(0, max(len(text), 1), step):
            if self.needles.find(tokens(text[start : start + step + overlap]), None):
                self._document(file, doc, None)
                return

    def _document(self, file: str, doc: Any, scope: str | None, path: str = "") -> None:
        if isinstance(doc, dict):
            for key, value in doc.items():
                where = f"{path}.{key}" if path else str(key)
                self.search(file, f"{where} (key)", str(key), scope, file)
                self._document(file, value, scope, where)
        elif isinstance(doc, list):
            for i, value in enumerate(doc):
                self._document(file, value, scope, f"{path}[{i}]")
        elif isinstance(doc, str):
            self.search(file, path, doc, scope, file)

    def tap(self, file: str, kind: str | None, scope: str | None, syntax: str = "") -> Tap | None:
        """A parser for the metadata of one entry (``dicom-pixels``: a DICOM file's pixel
        data element, in ``syntax``), fed as it is written; None for kinds without metadata
        the portal knows how to find."""
        if kind != "dicom-pixels" and kind not in PARSERS:
            return None
        counted = PLACE_NAMES[kind or ""]

        def out(place: str, data: bytes) -> None:
            self.search(file, place, data, scope, counted)

        def time(mtime: int) -> None:
            if self.strict and mtime and mtime in self.source_times:
                self._add(file, "gzip header time", [Kind.SOURCE_TIME])

        def failed() -> None:  # what the check cannot read, it cannot clear
            if self.strict:
                self._add(file, f"{counted} (unreadable)", [Kind.UNCHECKED])

        parser = (
            encapsulated(out, syntax) if kind == "dicom-pixels" else PARSERS[kind or ""](out, time)
        )
        return Tap(parser, failed)

    def report(self, level: str) -> dict[str, Any]:
        """``privacy_report.json``: what was checked, how much, and every finding (file,
        place, kind; never a value)."""
        with self._lock:
            findings = sorted(set(self.findings), key=lambda f: (f.file, f.place, f.kind))
            places = dict(sorted(self.places.items()))
            count = self.count
        result = "passed" if not count else "failed" if self.strict else "identifiers present"
        return {
            "schema_version": SCHEMA_VERSION,
            "privacy": level,
            "result": result,
            "checked": {
                **self.needles.report_counts(),
                "places": places,
                "bytes_searched": self.searched_bytes,
                "matching": "whole tokens; case, accents and separators ignored",
            },
            "not_checked": list(NOT_CHECKED),
            "finding_count": count,
            "findings": [f.__dict__ for f in findings],
        }

    @property
    def failed(self) -> bool:
        return self.strict and self.count > 0


def _find(
    needles: Needles,
    data: bytes | bytearray | memoryview | str,
    scope: str | None,
    cap: int = CAP,
) -> set[str]:
    """The kinds of needle in one place: text, or raw bytes (its first ``cap`` bytes)."""
    if isinstance(data, str):
        return needles.find(tokens(data), scope)
    return needles.find(byte_tokens(data[:cap], needles.unicode), scope)


def _locate_dicom(header: bytes, needles: Needles, scope: str | None) -> list[tuple[str, set[str]]]:
    """Which elements of a header hold the needles found in it (pydicom, every depth)."""
    try:
        ds = pydicom.dcmread(io.BytesIO(header), force=True, stop_before_pixels=True)
    except Exception:  # unreadable here: say where it is as well as we can
        return [("DICOM header bytes", _find(needles, header, scope, len(header)))]
    places: list[tuple[str, set[str]]] = []

    def walk(dataset: Any, prefix: str) -> None:
        for elem in dataset:
            where = prefix + tag_text(int(elem.tag))
            if elem.VR == "SQ":
                for i, item in enumerate(elem.value or []):
                    walk(item, f"{where}[{i}]")
                continue
            value = elem.value
            raw = value if isinstance(value, bytes | bytearray) else str(value).encode()
            found = _find(needles, raw, scope)
            if found:
                name = elem.keyword or ("private" if elem.tag.is_private else "")
                places.append((f"{where} {name}".strip(), found))

    walk(getattr(ds, "file_meta", []), "")
    walk(ds, "")
    preamble = getattr(ds, "preamble", None) or b""
    found = _find(needles, preamble, scope) if preamble else set()
    if found:
        places.append(("preamble", found))
    if not places:
        places.append(("DICOM header", _find(needles, header, scope, len(header))))
    return places


# --- incremental parsers of non-DICOM metadata -------------------------------------------

# A parser is a generator that yields requests and is sent what they ask for:
# ("read", n) -> up to n bytes (fewer only at the end; b"" at the end); ("skip", n) -> None;
# ("scan", 0) -> None once the next JPEG marker (0xFF then a code that is neither a stuffed
# zero nor a restart) is the next thing to read: a scan's data is skipped without a copy.
Request = tuple[str, int]
Parser = Generator[Request, Any, None]
Out = Callable[[str, bytes], None]
EVERYTHING = 1 << 62


class Tap:
    """Feeds an entry's bytes, as they are written, to its format's parser; keeps only what
    the parser asks to read (metadata), skipping the rest without a copy."""

    def __init__(self, parser: Parser, failed: Callable[[], None] | None = None) -> None:
        """``failed`` is called when the parser meets what it cannot read (it stops)."""
        self.parser = parser
        self.failed = failed
        self.buf = bytearray()
        self.want = 0
        self.skip = 0
        self.scanning = False
        self.carry = False  # scanning, and the last piece ended in 0xFF
        self.done = False
        self._resume(None)

    def _resume(self, value: Any) -> None:
        try:
            op, n = self.parser.send(value)
        except StopIteration:
            self.done = True
            return
        except Exception:  # malformed data (a corrupt .nii.gz in an identified export)
            self.done = True
            if self.failed is not None:
                self.failed()
            return
        self.scanning = op == "scan"
        if op == "skip":
            self.skip, self.want = n, 0
        else:
            self.skip, self.want = 0, n

    def feed(self, piece: bytes | memoryview) -> None:
        view = memoryview(piece)
        pos, size = 0, len(view)
        while pos < size and not self.done:
            if self.scanning:
                pos = self._scan(view, pos)
                continue
            if self.skip:
                n = min(self.skip, size - pos)
                pos += n
                self.skip -= n
                if not self.skip:
                    self._resume(None)
                continue
            take = min(self.want - len(self.buf), size - pos)
            self.buf += view[pos : pos + take]
            pos += take
            if len(self.buf) >= self.want:
                data = bytes(self.buf)
                self.buf.clear()
                self._resume(data)

    def _scan(self, view: memoryview, pos: int) -> int:
        """Skip to the next JPEG marker in ``view`` from ``pos``; where it is."""
        if self.carry:  # was that 0xFF a marker's?
            code = view[pos]
            if code == 0xFF:
                return pos + 1
            self.carry = False
            if code != 0 and not 0xD0 <= code <= 0xD7:
                self.buf = bytearray(b"\xff")
                self._resume(None)
            return pos
        found = _JPEG_MARKER.search(view, pos)
        if found is not None:
            self._resume(None)
            return found.start()
        self.carry = view[-1] == 0xFF
        return len(view)

    def close(self) -> None:
        """The entry ended: the parser gets what is left (its reads come back short)."""
        self.scanning = self.carry = False
        for _ in range(10_000):
            if self.done:
                return
            data = bytes(self.buf)
            self.buf.clear()
            self._resume(None if self.skip else data)
        self.parser.close()


class _In:
    """What a parser reads: the tap's bytes with a little pushed back (generator helpers,
    used with ``yield from``)."""

    def __init__(self) -> None:
        self.pending = b""

    def read(self, n: int) -> Generator[Request, Any, bytes]:
        """Up to ``n`` bytes (fewer only at the end)."""
        if len(self.pending) >= n:
            data, self.pending = self.pending[:n], self.pending[n:]
            return data
        got: bytes = yield ("read", n - len(self.pending))
        data, self.pending = self.pending + got, b""
        return data

    def chunk(self) -> Generator[Request, Any, bytes]:
        """What comes next, up to ``CAP`` bytes; b"" at the end."""
        if self.pending:
            data, self.pending = self.pending, b""
            return data
        got: bytes = yield ("read", CAP)
        return got

    def skip(self, n: int) -> Generator[Request, Any, None]:
        if n <= len(self.pending):
            self.pending = self.pending[n:]
            return
        n -= len(self.pending)
        self.pending = b""
        yield ("skip", n)

    def unread(self, data: bytes) -> None:
        self.pending = data + self.pending


# 0xFF and a marker code: not a stuffed zero, a restart or a fill byte (literal first: fast)
_JPEG_MARKER = re.compile(rb"\xff[\x01-\xcf\xd8-\xfe]")


def _jpeg(out: Out, _time: Callable[[int], None]) -> Parser:
    """Every segment (application data, comments, tables, extensions), between the scans
    too, and anything after EOI; only the scans' data are skipped."""
    src = _In()
    if (yield from src.read(2)) != b"\xff\xd8":
        return
    while True:
        head = yield from src.read(2)
        if len(head) < 2 or head[0] != 0xFF:
            return
        code = head[1]
        if code == 0xFF:  # a fill byte before the marker
            src.unread(head[1:])
            continue
        if code == 0xD9:  # EOI: whatever follows is not the image
            rest = yield from src.read(CAP)
            if rest:
                out("JPEG data after the image (EOI)", rest)
            return
        if code == 0x01 or 0xD0 <= code <= 0xD7:
            continue
        raw = yield from src.read(2)
        if len(raw) < 2:
            return
        length = max(0, struct.unpack(">H", raw)[0] - 2)
        body = yield from src.read(min(length, CAP))
        yield from src.skip(length - len(body))
        name = (
            "COM"
            if code == 0xFE
            else f"APP{code - 0xE0}"
            if 0xE0 <= code <= 0xEF
            else f"0xFF{code:02X}"
        )
        out(f"JPEG {name} segment", body)
        if code == 0xDA:  # the scan's data, up to the next marker that is not a restart
            assert not src.pending  # reads are exact: nothing was read ahead
            yield ("scan", 0)


def _png(out: Out, _time: Callable[[int], None]) -> Parser:
    """Every chunk but the image data and the pixel layout, and anything after IEND."""
    src = _In()
    if (yield from src.read(8)) != b"\x89PNG\r\n\x1a\n":
        return
    while True:
        head = yield from src.read(8)
        if len(head) < 8:
            return
        length, kind = struct.unpack(">I4s", head)
        if kind == b"IDAT":
            yield from src.skip(length + 4)
            continue
        body = yield from src.read(min(length, CAP))
        yield from src.skip(length - len(body) + 4)
        if kind not in (b"IHDR", b"PLTE", b"tRNS"):
            out(f"PNG {kind.decode('latin-1')} chunk", body)
        if kind == b"IEND":
            rest = yield from src.read(CAP)
            if rest:
                out("PNG data after IEND", rest)
            return


def _lines(src: _In, first: bytes, out: Callable[[bytes], None]) -> Parser:
    """The rest of the entry in whole lines (``\\n``, ``\\r\\n`` or ``\\r``), a chunk at a
    time to ``out``: memory stays bounded whatever the file's size."""
    tail = first
    while True:
        data = yield from src.chunk()
        text = tail + data
        cut = max(text.rfind(b"\n"), text.rfind(b"\r")) + 1 if data else len(text)
        if len(text) - cut > CAP:  # a line longer than any a text format needs: search it
            cut = len(text)
        if cut:
            out(text[:cut])
        tail = text[cut:]
        if not data:
            return


_LINE_START = rb"(?m)(?:^|(?<=\r))"
_NUMBER = rb"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
# ASCII STL lines outside its grammar, and its solid lines (which may carry a name).
_STL_TEXT = re.compile(
    _LINE_START + rb"(?![ \t]*(?:facet[ \t]+normal(?:[ \t]+" + _NUMBER + rb"){3}|outer[ \t]+loop"
    rb"|vertex(?:[ \t]+" + _NUMBER + rb"){3}|endloop|endfacet)?[ \t]*(?:\r|\n|$))[^\r\n]+",
    re.I,
)
# OBJ lines that are not plain geometry or smoothing groups (numbers only).
_OBJ_TEXT = re.compile(
    _LINE_START + rb"(?![ \t]*(?:(?:v[tnp]?|f|l|p)(?:[ \t]+[-+0-9.eE/]+)*|s[ \t]+\w+)?[ \t]*"
    rb"(?:\r|\n|$))[^\r\n]+"
)


def _text_lines(pattern: re.Pattern[bytes], place: str, out: Out) -> Callable[[bytes], None]:
    def search(block: bytes) -> None:
        found = pattern.findall(block)
        if found:
            out(place, b"\n".join(found))

    return search


def _stl(out: Out, _time: Callable[[int], None]) -> Parser:
    """The 80-byte header of a binary STL and anything after its declared triangles; every
    line of an ASCII one that is not numbers in its grammar."""
    src = _In()
    first = yield from src.read(84)
    if not (first.lstrip().startswith(b"solid") and b"\n" in first):
        out("STL header", first[:80])
        if len(first) == 84:
            yield from src.skip(50 * int.from_bytes(first[80:84], "little"))
            rest = yield from src.read(CAP)
            if rest:
                out("STL data after the triangles", rest)
        return
    yield from _lines(src, first, _text_lines(_STL_TEXT, "STL text lines", out))


def _obj(out: Out, _time: Callable[[int], None]) -> Parser:
    """Every line that is not geometry or a smoothing group: comments (also after values),
    names, materials, any other statement."""
    yield from _lines(_In(), b"", _text_lines(_OBJ_TEXT, "OBJ text lines", out))


def _ply(out: Out, _time: Callable[[int], None]) -> Parser:
    """The header (format, elements, properties, comments, obj_info), up to the line that is
    exactly ``end_header`` (as readers and the scrubber end it)."""
    src = _In()
    header = b""
    end = re.compile(rb"(?m)^[ \t]*end_header[ \t]*\r?$")
    while not end.search(header) and len(header) < 1024 * 1024:
        data = yield from src.chunk()
        if not data:
            break
        header += data
    found = end.search(header)
    out("PLY header", header[: found.start()] if found else header)
    yield ("skip", EVERYTHING)


# NIfTI-1 and NIfTI-2 free-text fields: (name, start, end).
_NIFTI1 = (("db_name", 4, 14), ("descrip", 148, 228), ("aux_file", 228, 252),
           ("intent_name", 328, 344))  # fmt: skip
_NIFTI2 = (("descrip", 240, 320), ("aux_file", 320, 344), ("intent_name", 508, 524))
_NIFTI_HEAD = 544  # the longer (NIfTI-2) header and its extension flag


def _nifti_extent(head: bytes) -> int:
    """How many bytes hold the header and its extensions (0: not NIfTI)."""
    for order in "<>":
        size = struct.unpack(order + "i", head[:4])[0] if len(head) >= 4 else 0
        if size == 348 and len(head) >= 352:
            vox = struct.unpack(order + "f", head[108:112])[0]
            return 352 if head[348] == 0 else int(min(max(vox, 352), 16 * 1024 * 1024))
        if size == 540 and len(head) >= 544:
            vox = struct.unpack(order + "q", head[168:176])[0]
            return 544 if head[540] == 0 else int(min(max(vox, 544), 16 * 1024 * 1024))
    return 0


def _nifti_places(out: Out, data: bytes) -> None:
    size = 348 if data[:4] in (b"\x5c\x01\x00\x00", b"\x00\x00\x01\x5c") else 540
    rest = bytearray(data[:size])
    for name, start, end in _NIFTI1 if size == 348 else _NIFTI2:
        out(f"NIfTI {name}", data[start:end])
        rest[start:end] = bytes(end - start)
    out("NIfTI header (other fields)", bytes(rest))
    if len(data) > size + 4:
        out("NIfTI extensions", data[size + 4 : size + 4 + CAP])


def _nifti_voxels(head: bytes) -> int | None:
    """How many bytes of voxels follow the header and extensions (see the scrubber)."""
    size = 348 if head[:4] in (b"\x5c\x01\x00\x00", b"\x00\x00\x01\x5c") else 540
    order = "<" if head[:4] in (b"\x5c\x01\x00\x00", b"\x1c\x02\x00\x00") else ">"
    return voxel_bytes(head[:size], order) if len(head) >= size else None


def _nifti(out: Out, _time: Callable[[int], None]) -> Parser:
    src = _In()
    head = yield from src.read(_NIFTI_HEAD)
    extent = _nifti_extent(head)
    if not extent:
        return
    data = head + (yield from src.read(max(0, extent - len(head))))
    _nifti_places(out, data[:extent])
    voxels = _nifti_voxels(data)
    if voxels is None:
        return
    src.unread(data[extent:])
    yield from src.skip(voxels)
    rest = yield from src.read(CAP)
    if rest:
        out("NIfTI data after the voxels", rest)


def _nifti_gz(out: Out, time: Callable[[int], None]) -> Parser:
    """The gzip member's header (name, comment, extra field, time), then the NIfTI header
    inside it: only as much is decompressed as the header needs."""
    src = _In()
    head = yield from src.read(10)
    if len(head) < 10 or head[:2] != b"\x1f\x8b":
        return
    flags = head[3]
    time(struct.unpack("<I", head[4:8])[0])
    if flags & 4:
        size = struct.unpack("<H", (yield from src.read(2)).ljust(2, b"\0"))[0]
        out("gzip extra field", (yield from src.read(size)))
    for flag, name in ((8, "gzip file name"), (16, "gzip comment")):
        if flags & flag:
            text = b""
            while b"\0" not in text and len(text) < CAP:
                more = yield from src.read(256)
                if not more:
                    break
                text += more
            value, _, rest = text.partition(b"\0")
            src.unread(rest)
            out(name, value)
    if flags & 2:
        yield from src.skip(2)
    unzip = zlib.decompressobj(-15)
    data = b""
    extent = 0
    while not extent or len(data) < extent:  # only as much as the header needs
        want = (extent or _NIFTI_HEAD) - len(data)
        if unzip.unconsumed_tail:
            data += unzip.decompress(unzip.unconsumed_tail, want)
        else:
            piece = yield from src.read(16 * 1024)
            if not piece:
                break
            data += unzip.decompress(piece, want)
        if not extent and len(data) >= _NIFTI_HEAD:
            extent = _nifti_extent(data) or -1
            if extent < 0:
                break
    if not extent:  # the whole member is shorter than the longest header
        extent = _nifti_extent(data)
    if extent > 0:
        _nifti_places(out, data[:extent])
    yield from src.skip(EVERYTHING)


def encapsulated(out: Out, syntax: str) -> Parser:
    """A DICOM pixel data element as the rewrite writes it: for encapsulated data, the
    metadata of every JPEG fragment (an EXIF or comment segment inside the compressed
    frame), and anything after the element. Native pixel data are not searched."""
    little, implicit = syntax != "1.2.840.10008.1.2.2", syntax == "1.2.840.10008.1.2"
    order: Any = "little" if little else "big"
    src = _In()
    head = yield from src.read(8 if implicit else 12)
    if len(head) < 8 or head[:4] not in (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10"):
        return
    length = int.from_bytes(head[4:8] if implicit else head[8:12], order)
    if length != 0xFFFFFFFF:
        yield from src.skip(length)
    else:
        first = True
        while True:
            item = yield from src.read(8)
            if len(item) < 8:
                return
            size = int.from_bytes(item[4:8], order)
            if item[:4] in (b"\xfe\xff\xdd\xe0", b"\xff\xfe\xe0\xdd"):  # sequence end
                break
            frame = b"" if first else (yield from src.read(min(size, 256 * 1024)))
            yield from src.skip(size - len(frame))
            first = False  # the first item is the offset table
            if frame.startswith(b"\xff\xd8"):
                tap = Tap(
                    _jpeg(
                        lambda place, data: out(f"pixel data frame: {place}", data), lambda _: None
                    )
                )
                tap.feed(frame)
                tap.close()
    rest = yield from src.read(CAP)
    if rest:
        out("DICOM data after the pixel data", rest)


PARSERS: Mapping[str, Callable[[Out, Callable[[int], None]], Parser]] = {
    "jpeg": _jpeg,
    "png": _png,
    "stl": _stl,
    "ply": _ply,
    "obj": _obj,
    "nifti": _nifti,
    "nifti-gz": _nifti_gz,
}


PLACE_NAMES = {
    "dicom-pixels": "DICOM pixel data (JPEG frames)",
    "jpeg": "JPEG metadata",
    "png": "PNG metadata",
    "stl": "STL headers",
    "ply": "PLY headers",
    "obj": "OBJ text",
    "nifti": "NIfTI headers",
    "nifti-gz": "NIfTI headers (.nii.gz)",
}


def format_of(name: str) -> str | None:
    """The metadata parser a file name calls for (by extension), or None."""
    lower = name.lower()
    if lower.endswith(".nii.gz"):
        return "nifti-gz"
    ext = lower.rpartition(".")[2]
    return {
        "jpg": "jpeg",
        "jpeg": "jpeg",
        "png": "png",
        "stl": "stl",
        "ply": "ply",
        "obj": "obj",
        "nii": "nifti",
    }.get(ext)
