"""Walk an imaging tree and read each file once: the filesystem half of registration.

Convention: ``DIR/<folder>/<...>/<patient>/<modality>/[raw|processed/]<files or series dirs>``.
A directory is a patient when it has a child directory named after a known modality; the
folders above patients become the patient folder tree. Files not under ``processed/`` are
raw. Nothing here touches the database. Symbolic links are never followed, and a file is
opened without following links and checked to be the very file the walk saw.
"""

from __future__ import annotations

import hashlib
import mimetypes
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from exporter.dicom import header as dicom
from exporter.errors import NotDicom
from exporter.store.models import FileKind

CHUNK = 1024 * 1024
MEDIA_TYPES = {
    ".dcm": "application/dicom",
    ".stl": "model/stl",
    ".ply": "model/ply",
    ".obj": "model/obj",
    ".nii": "application/x-nifti",
    ".nii.gz": "application/x-nifti+gzip",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
}


@dataclass(frozen=True)
class Issue:
    path: str
    reason: str


@dataclass(frozen=True)
class ModalityRule:
    """What the walk needs to know of a modality."""

    key: str
    extensions: tuple[str, ...]
    subtypes: tuple[str, ...]
    enabled: bool = True


@dataclass(frozen=True)
class Candidate:
    """A file found by the walk, not yet read."""

    abs_path: str
    rel_path: str  # relative to the data root, POSIX separators
    patient_label: str
    patient_dir: str  # relative to the data root
    folder_path: str  # relative to the project's root
    modality_key: str
    kind: FileKind
    series_label: str | None
    subtype: str | None
    size: int
    mtime_ns: int
    inode: tuple[int, int]


@dataclass(frozen=True)
class Facts:
    sha256: str
    media_type: str
    dicom_header: dict[str, Any] | None
    acquisition_date: date | None


@dataclass
class WalkResult:
    candidates: list[Candidate] = field(default_factory=list)
    patients: dict[str, tuple[str, str]] = field(default_factory=dict)  # label -> (dir, folder)
    skipped: list[Issue] = field(default_factory=list)
    refused: list[Issue] = field(default_factory=list)


def file_suffix(name: str) -> str:
    """The lower-case extension, with ``.nii.gz`` kept whole; "" when there is none."""
    lower = name.lower()
    if lower.endswith(".nii.gz"):
        return ".nii.gz"
    stem, dot, ext = lower.rpartition(".")
    return dot + ext if dot and stem else ""


def read_facts(candidate: Candidate) -> Facts | Issue:
    """Hash the file and read what it says about itself, in one read. Thread-safe."""
    name = candidate.abs_path.rpartition("/")[2]
    suffix = file_suffix(name)
    try:
        fd = os.open(candidate.abs_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        return Issue(candidate.rel_path, f"unreadable: {exc.strerror or exc}")
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if (st.st_dev, st.st_ino) != candidate.inode:
            return Issue(candidate.rel_path, "replaced while it was being registered; run again")
        try:
            digest = hashlib.sha256()
            first = chunk = fh.read(CHUNK)
            while chunk:
                digest.update(chunk)
                chunk = fh.read(CHUNK)
            header = None
            if suffix == ".dcm" or (suffix == "" and first[128:132] == b"DICM"):
                fh.seek(0)
                header = dicom.extract_header(fh, first)
        except NotDicom as exc:
            return Issue(candidate.rel_path, f"not a DICOM file ({exc}); fix or remove it")
        except OSError as exc:
            return Issue(candidate.rel_path, f"unreadable: {exc.strerror or exc}")
        except Exception as exc:  # a malformed header must not stop the whole run
            return Issue(candidate.rel_path, f"DICOM header unreadable ({exc}); fix or remove it")
    media = "application/dicom" if header is not None else MEDIA_TYPES.get(suffix)
    if media is None:
        media = mimetypes.guess_type(name)[0] or "application/octet-stream"
    acquired = dicom.acquisition_date(header) if header else None
    return Facts(digest.hexdigest(), media, header, acquired)


class Walker:
    """Finds patients and their files below a directory, reporting what does not fit."""

    def __init__(self, data_root: Path, modalities: dict[str, ModalityRule]) -> None:
        self.data_root = data_root
        self.prefix_len = len(str(data_root)) + 1  # per-file paths are cut as strings: fast
        self.modalities = modalities
        self.result = WalkResult()

    def _rel(self, path: str) -> str:
        return path[self.prefix_len :]

    def _entries(self, directory: str) -> list[os.DirEntry[str]]:
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            self.result.skipped.append(Issue(self._rel(directory), f"unreadable: {exc.strerror}"))
            return []
        kept = []
        for entry in entries:
            if entry.is_symlink():
                self.result.refused.append(
                    Issue(
                        self._rel(entry.path),
                        "symbolic link refused (it may point outside the directory): "
                        "replace it with the file itself",
                    )
                )
            elif entry.name.startswith("."):
                self.result.skipped.append(Issue(self._rel(entry.path), "hidden: skipped"))
            else:
                kept.append(entry)
        return kept

    def walk(self, directory: str, folder: tuple[str, ...]) -> Iterator[Candidate]:
        """Candidates below ``directory``, whose folder path (from the project root) is
        ``folder`` (the directory's own name last, or empty at the project root)."""
        entries = self._entries(directory)
        subdirs = [e for e in entries if e.is_dir(follow_symlinks=False)]
        if any(d.name in self.modalities for d in subdirs):
            yield from self._patient(directory, folder[:-1], entries)
            return
        known = ", ".join(sorted(self.modalities))
        for entry in entries:
            if not entry.is_dir(follow_symlinks=False):
                self.result.skipped.append(
                    Issue(
                        self._rel(entry.path),
                        "file outside any <patient>/<modality>/ directory (is a modality "
                        f"directory misspelled? known: {known})",
                    )
                )
        for sub in subdirs:
            yield from self.walk(sub.path, (*folder, sub.name))

    def _patient(
        self, directory: str, folder: tuple[str, ...], entries: list[os.DirEntry[str]]
    ) -> Iterator[Candidate]:
        label = directory.rpartition("/")[2]
        folder_path = "/".join(folder)
        rel_dir = self._rel(directory)
        if label in self.result.patients:
            self.result.refused.append(
                Issue(
                    rel_dir,
                    f"patient {label!r} also appears at {self.result.patients[label][0]!r}: "
                    "patient directory names must be unique within a project",
                )
            )
            return
        self.result.patients[label] = (rel_dir, folder_path)
        known = ", ".join(sorted(k for k, m in self.modalities.items() if m.enabled))
        for entry in entries:
            modality = self.modalities.get(entry.name)
            if entry.is_dir(follow_symlinks=False) and modality is not None:
                if not modality.enabled:
                    self.result.skipped.append(
                        Issue(
                            self._rel(entry.path),
                            f"modality {entry.name!r} is not enabled "
                            "in this project: ask an administrator to enable it",
                        )
                    )
                    continue
                yield from self._modality(entry.path, label, rel_dir, folder_path, modality)
            elif entry.is_dir(follow_symlinks=False):
                self.result.skipped.append(
                    Issue(
                        self._rel(entry.path),
                        f"unknown directory name {entry.name!r} in patient {label!r}: "
                        f"expected a modality ({known})",
                    )
                )
            else:
                self.result.skipped.append(
                    Issue(
                        self._rel(entry.path),
                        "file directly in a patient directory: put it under a modality",
                    )
                )

    def _modality(
        self, directory: str, label: str, rel_dir: str, folder_path: str, modality: ModalityRule
    ) -> Iterator[Candidate]:
        args = (label, rel_dir, folder_path, modality)
        for entry in self._entries(directory):
            if entry.is_dir(follow_symlinks=False) and entry.name in ("raw", "processed"):
                yield from self._files(entry.path, entry.path, FileKind(entry.name), *args)
            elif entry.is_dir(follow_symlinks=False):
                yield from self._files(entry.path, directory, FileKind.RAW, *args)
            else:
                yield from self._file(entry, directory, FileKind.RAW, *args)

    def _files(
        self,
        directory: str,
        base: str,
        kind: FileKind,
        label: str,
        rel_dir: str,
        folder_path: str,
        modality: ModalityRule,
    ) -> Iterator[Candidate]:
        for entry in self._entries(directory):
            if entry.is_dir(follow_symlinks=False):
                yield from self._files(
                    entry.path, base, kind, label, rel_dir, folder_path, modality
                )
            else:
                yield from self._file(entry, base, kind, label, rel_dir, folder_path, modality)

    def _file(
        self,
        entry: os.DirEntry[str],
        base: str,
        kind: FileKind,
        label: str,
        rel_dir: str,
        folder_path: str,
        modality: ModalityRule,
    ) -> Iterator[Candidate]:
        rel = self._rel(entry.path)
        if not entry.is_file(follow_symlinks=False):
            self.result.skipped.append(Issue(rel, "not a regular file"))
            return
        suffix = file_suffix(entry.name)
        accepted = modality.extensions
        if suffix not in accepted and not (suffix == "" and ".dcm" in accepted):
            self.result.skipped.append(
                Issue(
                    rel,
                    f"extension {suffix or '(none)'!r} is not one of {modality.key}'s "
                    f"({', '.join(accepted)})",
                )
            )
            return
        parent = entry.path.rpartition("/")[0][len(base) + 1 :] or None
        stem = entry.name.lower()
        st = entry.stat(follow_symlinks=False)
        yield Candidate(
            abs_path=entry.path,
            rel_path=rel,
            patient_label=label,
            patient_dir=rel_dir,
            folder_path=folder_path,
            modality_key=modality.key,
            kind=kind,
            series_label=parent,
            subtype=next((s for s in modality.subtypes if s in stem), None),
            size=st.st_size,
            mtime_ns=st.st_mtime_ns,
            inode=(st.st_dev, st.st_ino),
        )
