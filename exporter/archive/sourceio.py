"""Reading stored files and writing archives with as little copying as the data allows.

Every reader of stored files opens them through :func:`open_source`, which refuses anything
that could leave the data root. The export reads each file up to ``PREPARE_LIMIT`` whole,
in one call, into a buffer from a :class:`BufferPool`, and everything after (the source's
SHA-256, the header rewrite, the entry's SHA-256 and CRC, the copy into the archive's
buffers) works on views of that buffer; then the buffer goes back to the pool. Why a pool:
on this kind of machine a fresh allocation per file costs more than reading the file (the
kernel zeroes every new page), about 0.3 ms of every 0.5 MiB DICOM slice; reused buffers
cost nothing after the first. The :class:`ArchiveWriter` avoids the page cache for the
same reason.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import mmap
import os
import queue
import stat
import threading
from collections.abc import Callable
from io import FileIO
from pathlib import Path
from typing import BinaryIO

from exporter.errors import NotEnoughSpace, SourceFileError
from exporter.schemas import Chunk

CHUNK = 1024 * 1024
FLUSH_EVERY = 128 * 1024 * 1024  # without O_DIRECT: write back this often
_SMALLEST = 64 * 1024


def source_path(data_root: Path, relative: str, checked: dict[str, bool] | None = None) -> str:
    """The file behind a registry path, refusing anything that could leave the data root.

    The final component is opened with O_NOFOLLOW; the directories above it are resolved
    here, once per directory when ``checked`` (a cache owned by one build) is given.
    """
    parts = relative.split("/")
    if relative.startswith("/") or "\\" in relative or any(p in ("", ".", "..") for p in parts):
        raise SourceFileError(f"{relative}: not a plain relative path; re-register the file")
    root = str(data_root)
    directory = root + "/" + relative.rpartition("/")[0] if len(parts) > 1 else root
    safe = checked.get(directory) if checked is not None else None
    if safe is None:
        real = os.path.realpath(directory)
        safe = real == directory and (real == root or real.startswith(root + "/"))
        if checked is not None:
            checked[directory] = safe
    if not safe:
        raise SourceFileError(f"{relative}: leads outside the data root (a link); refused")
    return root + "/" + relative


def open_source(data_root: Path, relative: str, checked: dict[str, bool] | None = None) -> FileIO:
    """The registered file at ``relative``, opened unbuffered for reading: never through a
    link out of the data root or a symbolic link, never a FIFO or device (every reader of
    stored files goes through here)."""
    path = source_path(data_root, relative, checked)
    try:
        # O_NONBLOCK: a FIFO at a registered path must not hang the reader.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise SourceFileError(f"{relative}: missing from storage") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SourceFileError(f"{relative}: is a symbolic link; refused") from None
        raise SourceFileError(f"{relative}: unreadable ({exc.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise SourceFileError(f"{relative}: not a regular file; refused")
    return FileIO(fd, "rb")


def _size_class(size: int) -> int:
    """Buffers come in sizes 1/16 of a power of two apart (at most ~6% unused), so files of
    one series, and of similar series, share them."""
    if size <= _SMALLEST:
        return _SMALLEST
    step = 1 << (size.bit_length() - 5)  # 16 sizes from one power of two to the next
    return -(-size // step) * step


class BufferPool:
    """Read buffers handed out and taken back, kept for reuse up to ``keep`` bytes.

    A buffer is an anonymous memory map: the kernel hands it out zeroed page by page as the
    first read fills it (with the GIL released), where ``bytearray(n)`` would zero it all
    first while holding the GIL.
    """

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._free: dict[int, list[mmap.mmap]] = {}
        self._kept = 0
        self._lock = threading.Lock()

    def take(self, size: int) -> mmap.mmap:
        """A buffer of at least ``size`` bytes (contents undefined)."""
        wanted = _size_class(size)
        with self._lock:
            free = self._free.get(wanted)
            if free:
                self._kept -= wanted
                return free.pop()
        return mmap.mmap(-1, wanted)

    def give(self, buf: mmap.mmap) -> None:
        """Take a buffer back; nothing may use it any more."""
        with self._lock:
            # Make room by dropping buffers of other sizes: the sizes in demand change.
            while self._kept + len(buf) > self.keep and self._kept:
                size = max(self._free, key=lambda s: len(self._free[s]) * s)
                self._free[size].pop()
                self._kept -= size
                if not self._free[size]:
                    del self._free[size]
            if self._kept + len(buf) <= self.keep:
                self._free.setdefault(len(buf), []).append(buf)
                self._kept += len(buf)


class Loaded:
    """A source file read whole into a pooled buffer, verified, and read on from there by a
    transform: :meth:`read` gives bytes (for parsers), :meth:`read_view` views (for data
    that only passes through)."""

    def __init__(self, buf: mmap.mmap, data: memoryview, sha256: str) -> None:
        self.buf = buf
        self.data = data
        self.sha256 = sha256
        self.pos = 0

    def read_view(self, n: int = -1) -> memoryview:
        end = len(self.data) if n < 0 else min(self.pos + n, len(self.data))
        view = self.data[self.pos : end]
        self.pos = end
        return view

    def read(self, n: int = -1) -> bytes:
        return bytes(self.read_view(n))


def load(raw: FileIO, name: str, size: int, sha256: str, pool: BufferPool) -> Loaded:
    """Read an open source file whole (one more byte is asked for, to notice growth) and
    check it against the registry's size and SHA-256."""
    buf = pool.take(size + 1)
    view = memoryview(buf)[: size + 1]
    got = 0
    try:
        while got < len(view) and (n := raw.readinto(view[got:])):
            got += n
    except OSError as exc:
        raise SourceFileError(f"{name}: unreadable ({exc.strerror})") from None
    data = view[:got]
    digest = hashlib.sha256(data).hexdigest()
    if got != size or digest != sha256:
        data.release()
        view.release()
        pool.give(buf)
        now = os.fstat(raw.fileno()).st_size if got > size else got  # only size + 1 was read
        raise SourceFileError(
            f"{name}: changed since it was registered (size {now} against {size}, or a "
            "different SHA-256); register the directory again"
        )
    return Loaded(buf, data, digest)


class HashingReader:
    """Reads a (large) source in chunks, hashing what passes; a transform reads through it."""

    def __init__(self, fh: BinaryIO, check: Callable[[], None]) -> None:
        self.fh = fh
        self.sha = hashlib.sha256()
        self.size = 0
        self.check = check

    def read(self, n: int = -1) -> bytes:
        self.check()
        data = self.fh.read(n)
        self.sha.update(data)
        self.size += len(data)
        return data

    read_view = read

    def drain(self) -> None:
        while self.read(CHUNK):
            pass


STAGE = 4 * 1024 * 1024  # bytes handed to the disk at a time: a multiple of any block size
STAGES = 4  # in flight, 16 MiB: enough to ride out a slow write
BLOCK = 4096


def _open_archive(path: Path, direct: bool) -> tuple[int, bool]:
    """Create ``path`` for writing, with O_DIRECT when asked and the filesystem takes it;
    returns the descriptor and whether it is direct."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
    if direct and hasattr(os, "O_DIRECT"):
        try:
            return os.open(path, flags | os.O_DIRECT, 0o644), True
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
    return os.open(path, flags, 0o644), False


class ArchiveWriter:
    """The archive file as it is written, and its SHA-256.

    Bytes are gathered into page-aligned buffers of ``STAGE`` bytes; one thread writes each
    full buffer to the file, another hashes it (hashlib releases the GIL), and the buffer
    comes back for more. The file is opened with O_DIRECT where the filesystem allows: a
    multi-GB archive does not go through the page cache, which costs more CPU than the
    archive's own SHA-256 on a virtual machine's fresh memory, and does not push the
    sources out of it. Elsewhere the writes are buffered and written back every
    ``FLUSH_EVERY`` bytes, so the final fsync only waits for the tail.
    """

    def __init__(self, path: Path, direct: bool = True) -> None:
        """``direct`` False: buffered writes (the benchmark compares the two)."""
        self.fd, self.direct = _open_archive(path, direct)
        self.sha = hashlib.sha256()
        self.size = 0  # bytes accepted
        self.written = 0  # bytes in the file
        self.error: BaseException | None = None
        self._free: queue.Queue[mmap.mmap] = queue.Queue()
        for _ in range(STAGES):
            self._free.put(mmap.mmap(-1, STAGE))
        self._to_write: queue.Queue[tuple[mmap.mmap, int] | None] = queue.Queue()
        self._to_hash: queue.Queue[tuple[mmap.mmap, int] | None] = queue.Queue()
        self._stage = self._free.get()
        self._filled = 0
        self._unsynced = 0
        self._threads = [
            threading.Thread(target=self._write_loop, name="archive-write", daemon=True),
            threading.Thread(target=self._hash_loop, name="archive-sha256", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def write(self, data: Chunk) -> int:
        """Append ``data`` (copied: the caller may reuse its buffer at once)."""
        view = memoryview(data)
        n, pos = len(view), 0
        while pos < n:
            take = min(STAGE - self._filled, n - pos)
            self._stage[self._filled : self._filled + take] = view[pos : pos + take]
            self._filled += take
            pos += take
            if self._filled == STAGE:
                self._hand_over()
        self.size += n
        return n

    def _hand_over(self) -> None:
        self._to_write.put((self._stage, self._filled))
        while True:
            if self.error is not None:
                raise self.error
            try:
                self._stage = self._free.get(timeout=0.5)
                break
            except queue.Empty:
                continue
        self._filled = 0

    def _write_loop(self) -> None:
        try:
            while (item := self._to_write.get()) is not None:
                buf, n = item
                self._write_out(memoryview(buf)[:n])
                self._to_hash.put(item)
        except OSError as exc:
            self.error = exc
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                self.error = NotEnoughSpace(
                    "The export root is full: the export was stopped; free some space, or "
                    "ask an administrator to, then export again"
                )
        except BaseException as exc:
            self.error = exc
        finally:
            self._to_hash.put(None)

    def _write_out(self, view: memoryview) -> None:
        if self.direct and len(view) % BLOCK:  # the last piece: its tail is not a block
            aligned = len(view) - len(view) % BLOCK
            self._write_out(view[:aligned])
            self._buffered()
            view = view[aligned:]
        while view:
            try:
                written = os.write(self.fd, view)
            except OSError as exc:
                if not (self.direct and exc.errno == errno.EINVAL):
                    raise
                self._buffered()  # the filesystem took O_DIRECT at open but not for writes
                continue
            if self.direct and written % BLOCK:
                self._buffered()
            view = view[written:]
            self.written += written
            self._unsynced += written
        if not self.direct and self._unsynced >= FLUSH_EVERY:
            os.fdatasync(self.fd)
            self._unsynced = 0

    def _buffered(self) -> None:
        if self.direct:
            fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) & ~os.O_DIRECT)
            self.direct = False

    def _hash_loop(self) -> None:
        try:
            while (item := self._to_hash.get()) is not None:
                buf, n = item
                self.sha.update(memoryview(buf)[:n])
                self._free.put(buf)
        except BaseException as exc:
            self.error = exc

    def _stop(self) -> None:
        if self._threads[0].is_alive() or self._threads[1].is_alive():
            self._to_write.put(None)
            for thread in self._threads:
                thread.join()

    def finish(self) -> str:
        """Write what is left, fsync, close; returns the SHA-256 of everything written."""
        if self._filled:
            self._to_write.put((self._stage, self._filled))
            self._filled = 0
        self._stop()
        if self.error is not None:
            raise self.error
        os.fsync(self.fd)
        os.close(self.fd)
        self.fd = -1
        return self.sha.hexdigest()

    def abort(self) -> None:
        """Stop the threads and close the file (the caller removes it)."""
        self._stop()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
