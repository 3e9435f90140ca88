"""Check an export against its own ``metadata.json``: what a researcher runs after download.

Accepts a ZIP part, an export directory (``manifest.json`` and its parts) or an extracted
archive folder (the one holding ``metadata.json``). Every file is re-hashed; unsafe entry
names, missing and extra entries, and a ``SHA256SUMS`` that disagrees are all reported.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from exporter.archive.layout import unsafe_reason

KNOWN_SCHEMAS = {1, 2}
SIDE_FILES = {"metadata.json", "SHA256SUMS", "dicom_changes.csv", "privacy_report.json"}
CHUNK = 1024 * 1024


@dataclass
class VerifyReport:
    target: str
    files: int = 0
    bytes: int = 0
    archives: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and self.files > 0

    def summary(self) -> str:
        verdict = "OK" if self.ok else f"FAILED ({len(self.problems)} problems)"
        return (
            f"{verdict}: {self.files} files, {self.bytes} bytes checked in {self.archives} "
            f"archive(s) at {self.target}"
        )


def _sha256(stream: IO[bytes]) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    while chunk := stream.read(CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def verify(target: Path) -> VerifyReport:
    """Verify a ZIP, an export directory, or an extracted archive folder."""
    report = VerifyReport(str(target))
    if target.is_file():
        _verify_zip(target, report)
    elif (target / "manifest.json").is_file():
        _verify_export_dir(target, report)
    elif (target / "metadata.json").is_file():
        _verify_tree(target, report)
    elif target.is_dir():
        report.problems.append(
            f"{target}: no manifest.json or metadata.json here: give a .zip, the export's "
            "folder, or the extracted folder that holds metadata.json"
        )
    else:
        report.problems.append(f"{target}: no such file or directory")
    return report


def _verify_export_dir(directory: Path, report: VerifyReport) -> None:
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
        parts = manifest["parts"]
    except (ValueError, KeyError, TypeError) as exc:
        report.problems.append(f"manifest.json is not readable: {exc}")
        return
    for part in parts:
        name = str(part.get("file", ""))
        path = directory / name
        if unsafe_reason(name) or "/" in name or not path.is_file():
            report.problems.append(f"part {part.get('number')}: {name!r} is missing")
            continue
        with open(path, "rb") as fh:
            sha, size = _sha256(fh)
        if (sha, size) != (part.get("sha256"), part.get("size")):
            report.problems.append(f"{name}: SHA-256 or size differs from manifest.json")
        _verify_zip(path, report)


def _verify_zip(path: Path, report: VerifyReport) -> None:
    report.archives += 1
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        report.problems.append(f"{path.name}: not a readable ZIP ({exc})")
        return
    with archive:
        names = archive.namelist()
        for name in names:
            reason = unsafe_reason(name)
            if reason:
                report.problems.append(f"{path.name}: unsafe entry name {name!r} ({reason})")
        metas = [n for n in names if n.count("/") == 1 and n.endswith("/metadata.json")]
        if len(metas) != 1:
            report.problems.append(f"{path.name}: expected one <folder>/metadata.json")
            return
        folder = metas[0].rpartition("/")[0]

        def opener(rel: str) -> IO[bytes]:
            return archive.open(f"{folder}/{rel}")

        present = {n[len(folder) + 1 :] for n in names if n.startswith(folder + "/")}
        present |= {f"../{n}" for n in names if not n.startswith(folder + "/")}
        _check(opener, present, f"{path.name}: ", report)


def _verify_tree(root: Path, report: VerifyReport) -> None:
    report.archives += 1

    def opener(rel: str) -> IO[bytes]:
        target = root / rel
        if target.is_symlink():
            raise OSError("is a symbolic link")
        return open(target, "rb")

    present = {p.relative_to(root).as_posix() for p in _walk(root)}
    _check(opener, present, "", report)


def _walk(root: Path) -> Iterator[Path]:
    for path in root.rglob("*"):
        if path.is_file() or path.is_symlink():
            yield path


def _check(opener: Any, present: set[str], where: str, report: VerifyReport) -> None:
    try:
        with opener("metadata.json") as fh:
            raw_meta = fh.read()
        meta = json.loads(raw_meta)
        files = meta["files"]
    except (ValueError, KeyError, TypeError, OSError) as exc:
        report.problems.append(f"{where}metadata.json is not readable: {exc}")
        return
    if meta.get("schema_version") not in KNOWN_SCHEMAS:
        report.problems.append(f"{where}metadata.json has unknown schema_version")
        return
    expected: dict[str, str] = {}
    for item in files:
        rel = str(item.get("path", ""))
        expected[rel] = str(item.get("sha256"))
        if unsafe_reason(rel):
            report.problems.append(f"{where}{rel!r}: unsafe path in metadata.json")
            continue
        if rel not in present:
            report.problems.append(f"{where}{rel}: listed in metadata.json but missing")
            continue
        try:
            with opener(rel) as fh:
                sha, size = _sha256(fh)
        except (OSError, zipfile.BadZipFile) as exc:
            report.problems.append(f"{where}{rel}: unreadable ({exc})")
            continue
        if sha != item.get("sha256") or size != item.get("size"):
            report.problems.append(f"{where}{rel}: SHA-256 or size differs from metadata.json")
            continue
        report.files += 1
        report.bytes += size
    for extra in sorted(present - expected.keys() - SIDE_FILES):
        report.problems.append(f"{where}{extra}: not listed in metadata.json")
    _check_sums(opener, expected, hashlib.sha256(raw_meta).hexdigest(), where, report)


def _check_sums(
    opener: Any, expected: dict[str, str], meta_sha: str, where: str, report: VerifyReport
) -> None:
    listed: dict[str, str] = {}
    with suppress(KeyError, OSError), opener("SHA256SUMS") as fh:
        for line in fh.read().decode("utf-8", "replace").splitlines():
            sha, _, rel = line.partition("  ")
            listed[rel] = sha
    if not listed:
        report.problems.append(f"{where}SHA256SUMS is missing or empty")
        return
    if listed.pop("metadata.json", None) != meta_sha:
        report.problems.append(f"{where}SHA256SUMS: metadata.json's hash differs")
    for side in ("dicom_changes.csv", "privacy_report.json"):
        side_sha = listed.pop(side, None)
        if side_sha is None:
            continue
        try:
            with opener(side) as fh:
                if _sha256(fh)[0] != side_sha:
                    report.problems.append(f"{where}{side}: SHA-256 differs")
        except (KeyError, OSError):
            report.problems.append(f"{where}{side} is listed but missing")
    if listed != expected:
        report.problems.append(f"{where}SHA256SUMS disagrees with metadata.json")
