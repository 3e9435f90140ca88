"""Writing released files into a project's tree under the data root, never half-written.

A release writes each file to a hidden temporary name beside its place (the registry's walk
skips hidden names), hashing what it hands to the kernel (SHA-256 for the registry, CRC-32
for the check); fsyncs it; reads it back and checks that the bytes on file are the bytes
written (size and CRC-32: ISA-L's runs at memory speed, where a second SHA-256 pass cost a
quarter of a release) and, for an archive's copy, that the SHA-256 is the original's; and
only then gives it its name. The caller registers it
after that: a file that is registered is whole. A file is never overwritten once the
registry knows it: the version it replaces is kept under ``.versions/v<N>/`` first.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from isal.isal_zlib import crc32

from exporter.dicom import header as dicom
from exporter.errors import NotEnoughSpace, PortalError, SourceFileError
from exporter.schemas import Chunk

CHUNK = 1024 * 1024
VERSIONS = ".versions"


@dataclass(frozen=True)
class Written:
    """A file as it now lies at its place: what the registry needs of it."""

    path: str  # relative to the data root
    sha256: str
    size: int
    mtime_ns: int
    header: dict[str, Any] | None  # the registry's DICOM header subset, read back


def _checked_dir(data_root: Path, relative: str, checked: set[str] | None = None) -> str:
    """The directory that holds ``relative`` (created as needed), refusing any path that
    is not plain or that leads out of the data root through a link. ``checked``: the
    directories one job has already checked (one check each, not one per file)."""
    if not _plain_relative(relative):
        raise PortalError(f"{relative}: not a plain relative path")
    parts = relative.split("/")
    root = str(data_root)
    directory = root + "/" + "/".join(parts[:-1]) if len(parts) > 1 else root
    if checked is not None and directory in checked:
        return directory
    current = root
    for part in parts[:-1]:  # made one level at a time, never through a link
        current = f"{current}/{part}"
        with contextlib.suppress(FileExistsError):
            Path(current).mkdir(0o750)
        if not stat.S_ISDIR(os.lstat(current).st_mode):
            raise PortalError(
                f"{relative}: {current[len(root) + 1 :]} is a link or a file, not a folder; "
                "refused (move it aside and run again)"
            )
    real = os.path.realpath(directory)
    if real != directory or not (real == root or real.startswith(root + "/")):
        raise PortalError(f"{relative}: leads outside the data root (a link); refused")
    if checked is not None:
        checked.add(directory)
    return directory


def _full(exc: OSError, relative: str) -> NotEnoughSpace:
    return NotEnoughSpace(
        f"The data root filled up while {relative} was written: free space (or raise the "
        "reserve) and run the release again; files written before it are kept and registered"
    )


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(
    data_root: Path,
    relative: str,
    chunks: Iterable[Chunk],
    *,
    expect_sha256: str | None = None,
    replace: bool = False,
    checked: set[str] | None = None,
    sync_dir: bool = True,
) -> Written:
    """Write ``chunks`` as the file at ``relative`` (under ``data_root``): temporary name,
    fsync, read back and check, compare the SHA-256 with ``expect_sha256`` when given,
    rename.

    An existing file at ``relative`` is an error unless ``replace`` (the caller made sure the
    registry does not know it: a crashed release's leftover). ``sync_dir`` False leaves the
    directory's fsync (which makes the new name durable) to the caller, once for many files
    (:func:`sync_dirs`), before it registers them."""
    directory = _checked_dir(data_root, relative, checked)
    name = relative.rpartition("/")[2]
    final = f"{directory}/{name}"
    temp = f"{directory}/.{name}.{os.urandom(6).hex()}.part"
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise _full(exc, relative) from None
        raise
    written = hashlib.sha256()
    crc = 0
    size = 0
    try:
        with os.fdopen(fd, "wb", buffering=0) as out:
            for piece in chunks:
                view = memoryview(piece)
                while view:
                    n = out.write(view)
                    assert n is not None
                    view = view[n:]
                written.update(piece)
                crc = crc32(piece, crc)
                size += len(piece)
            os.fsync(out.fileno())
        digest = written.hexdigest()
        if expect_sha256 is not None and digest != expect_sha256:
            raise SourceFileError(
                f"{relative}: the copy's SHA-256 is not the original's; register the source "
                "directory again"
            )
        header, st = _read_back(temp, relative, crc, size)
        if replace:
            Path(temp).replace(final)
        else:
            try:
                os.link(temp, final)  # fails if the name is taken: nothing is overwritten
            finally:
                Path(temp).unlink()
        if sync_dir:
            _fsync_dir(directory)
    except OSError as exc:
        _discard(temp)
        if exc.errno == errno.ENOSPC:
            raise _full(exc, relative) from None
        if isinstance(exc, FileExistsError):
            raise PortalError(
                f"{relative}: a file the registry does not know is in the way; move it "
                "aside and run the release again"
            ) from None
        raise
    except BaseException:
        _discard(temp)
        raise
    return Written(relative, digest, size, st.st_mtime_ns, header)


def sync_dirs(data_root: Path, relatives: Iterable[str]) -> None:
    """fsync the directories of these files once each: their names are durable after it."""
    root = str(data_root)
    for folder in sorted({r.rpartition("/")[0] for r in relatives}):
        _fsync_dir(f"{root}/{folder}" if folder else root)


def _read_back(
    temp: str, relative: str, crc: int, size: int
) -> tuple[dict[str, Any] | None, os.stat_result]:
    """Read the written file back: its size and CRC-32 must be those of the bytes written.
    DICOM files give their registry header subset from the same read."""
    check = 0
    header = None
    with open(temp, "rb", buffering=0) as fh:
        st = os.fstat(fh.fileno())
        first = chunk = fh.read(CHUNK)
        while chunk:
            check = crc32(chunk, check)
            chunk = fh.read(CHUNK)
        if check != crc or st.st_size != size:
            raise PortalError(
                f"{relative}: the file read back is not the file written (a disk or "
                "filesystem fault); nothing was registered: check the storage and run again"
            )
        if relative.lower().endswith(".dcm") or first[128:132] == b"DICM":
            fh.seek(0)
            header = dicom.extract_header(fh, first)
    return header, st


def _discard(path: str) -> None:
    Path(path).unlink(missing_ok=True)


def version_path(relative: str, version: int) -> str:
    """Where version ``version`` of the file at ``relative`` is kept once a newer one has
    its name: ``<folder>/.versions/v<N>/<name>``."""
    folder, _, name = relative.rpartition("/")
    return f"{folder}/{VERSIONS}/v{version}/{name}" if folder else f"{VERSIONS}/v{version}/{name}"


def keep_version(data_root: Path, relative: str, version: int) -> str | None:
    """Keep the file at ``relative`` as ``version`` (a hard link, or a copy where links do
    not work) before a newer version takes its name; None if no file is there."""
    source = f"{_checked_dir(data_root, relative)}/{relative.rpartition('/')[2]}"
    try:
        st = os.lstat(source)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        raise PortalError(f"{relative}: not a regular file; refused")
    kept = version_path(relative, version)
    directory = _checked_dir(data_root, kept)
    target = f"{directory}/{kept.rpartition('/')[2]}"
    if Path(target).exists():
        return kept  # kept by an earlier try of the same release
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            if exc.errno == errno.ENOSPC:
                raise _full(exc, kept) from None
            raise
        try:
            shutil.copy2(source, target)
        except OSError as copy_exc:
            _discard(target)
            if copy_exc.errno == errno.ENOSPC:
                raise _full(copy_exc, kept) from None
            raise
    _fsync_dir(directory)
    return kept


Originals = tuple[str | None, list[tuple[str, str, str]]]
"""A patient's folder, and its (source path, sha256, archive path) per file, relative to the
data root."""


def verified_originals(data_root: Path, files: list[tuple[str, str, str]]) -> bool:
    """Whether each source file and its archive copy are plain files under the data root
    (reached through no link) whose bytes, read now, have the registered SHA-256: a source
    that changed since it was registered, or a copy that did, keeps the patient where it is."""
    root = str(data_root)
    try:
        return all(
            _plain_file(root, place) and _sha256(f"{root}/{place}") == digest
            for source, digest, copy in files
            for place in (copy, source)
        )
    except OSError:
        return False


def remove_originals(data_root: Path, patients: Iterable[Originals]) -> list[str]:
    """Delete moved-out patients' source files (:func:`verified_originals` said yes), each
    only if its bytes, read once more, are still the registered ones; then their folders,
    where empty. Never through a link. Returns the source paths deleted (the rest stay: a
    file that changed meanwhile or could not go)."""
    root = str(data_root)
    deleted: list[str] = []
    for folder, files in patients:
        for source, digest, _copy in files:
            try:
                if _plain_file(root, source) and _sha256(f"{root}/{source}") == digest:
                    Path(root, source).unlink()
                    deleted.append(source)
            except OSError:
                pass
        if folder and _inside(root, folder):
            _remove_empty(f"{root}/{folder}")
    return deleted


def _plain_relative(relative: str) -> bool:
    """A path of plain names below a root: not absolute, no backslash, no empty, ``.`` or
    ``..`` part."""
    return not (
        relative.startswith("/")
        or "\\" in relative
        or any(p in ("", ".", "..") for p in relative.split("/"))
    )


def _inside(root: str, relative: str) -> bool:
    if not _plain_relative(relative):
        return False
    real = os.path.realpath(f"{root}/{relative}")
    return real == f"{root}/{relative}" and real.startswith(root + "/")


def _plain_file(root: str, relative: str) -> bool:
    """A regular file at ``relative``, reached through no link (the file itself included)."""
    if not _inside(root, relative):
        return False
    try:
        return stat.S_ISREG(os.lstat(f"{root}/{relative}").st_mode)
    except FileNotFoundError:
        return False


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb", buffering=0) as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _remove_empty(top: str) -> None:
    """Empty folders below ``top`` and ``top`` itself, deepest first; never a link."""
    if Path(top).is_symlink() or not Path(top).is_dir():
        return
    for directory, _, _ in os.walk(top, topdown=False, followlinks=False):
        with contextlib.suppress(OSError):
            Path(directory).rmdir()  # refuses a folder that is not empty
